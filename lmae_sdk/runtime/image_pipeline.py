"""One image's path through the runtime, top-down: :class:`ImagePipeline`.

The completer (:mod:`.completer`) reads a pair and hands its arrays here; the three stages
run in this order and call the pure steps of :mod:`lmae_sdk.pipeline` and the backend:

1. :meth:`ImagePipeline.start`: the class-boundary map, the propagation of the whole partial
   label, the windows (tiling), then per window :func:`~lmae_sdk.pipeline.prepare` at model
   size and :func:`~lmae_sdk.routing.route_image` to an engine;
2. :meth:`ImagePipeline.infer`: the jobs of many images grouped by engine,
   :func:`~lmae_sdk.pipeline.graph_inputs` -> ``backend.run_images``; jobs routed to an
   intermediate pass take its predictions as known, are prepared and routed again, and run
   once more;
3. :meth:`ImagePipeline.finish`: the windows' logits blended, :func:`~lmae_sdk.pipeline.finish`
   (known pixels never change), the :class:`CompletionResult`.

Stage 2 batches the jobs of several images; the completer schedules the stages of
neighbouring chunks side by side.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config import LMAEConfig
from ..fusion_rows import RowScorer
from ..pipeline import CompletionSettings, ModelInputs, finish, graph_inputs, prepare, propagate_for
from ..propagation import Propagation
from ..routing import RouteDecision, apply_pass, route_image
from ..upsampling import resize_logits
from .backends import Engine


@dataclass
class CompletionResult:
    label: np.ndarray | None  # (H, W) uint8, unknown pixels filled (or left unknown below min_confidence)
    confidence: np.ndarray | None  # (H, W) float32, 1 on known pixels; None when not asked for
    mask_ratio: float  # the engine used (the largest one over tiles / passes)
    passes: int = 1
    tiles: int = 1
    filled: int = 0  # unknown pixels that received a class
    unreliable: int = 0  # unknown pixels left unknown by min_confidence
    name: str | None = None
    palette: list[list[int]] | None = None  # the input label's palette, if it was a palette PNG
    error: Exception | None = None
    engines: dict[float, int] = field(default_factory=dict)  # engine -> model runs for this image

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Job:
    """One model-size completion: a whole image or one tile window."""

    image: np.ndarray
    working: np.ndarray  # the partial crop + earlier passes' predictions
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in the image
    boundary: np.ndarray | None = None  # (2, h, w) the window's class-boundary map (models with a boundary net)
    inputs: ModelInputs | None = None
    decision: RouteDecision | None = None
    logits: np.ndarray | None = None
    passes: int = 0
    runs: Counter = field(default_factory=Counter)


@dataclass
class ImageWork:
    """One image between the stages: its arrays, what ``start`` computed once for the whole
    image, its jobs; or the error that stopped it (``finish`` reports it)."""

    name: str | None
    image: np.ndarray | None = None
    partial: np.ndarray | None = None
    palette: list | None = None
    propagated: Propagation | None = None  # propagate_for of the whole partial
    boundary: np.ndarray | None = None  # (2, H, W) class-boundary map of the whole image
    jobs: list[Job] = field(default_factory=list)
    error: Exception | None = None


class ImagePipeline:
    """The per-image stages for one model: its config, completion settings, engines (by mask
    ratio), boundary net and fusion scorer (what the completer holds when it is called)."""

    def __init__(self, cfg: LMAEConfig, settings: CompletionSettings, engines: dict[float, Engine],
                 boundaries: Callable[[np.ndarray], np.ndarray] | None = None,
                 fusion_scorer: RowScorer | None = None) -> None:
        self.cfg = cfg
        self.settings = settings
        self.engines = engines
        self.boundaries = boundaries
        self.fusion_scorer = fusion_scorer
        self.mask_ratios = sorted(engines)
        self.fusion = settings.fusion
        self.unknown = settings.unknown_index

    # ------------------------------------------------------------------ 1. start
    def start(self, name: str | None, image: np.ndarray, partial: np.ndarray, palette: list | None,
              tile: bool = False, tile_scale: float = 1.0) -> ImageWork:
        """A read pair -> its jobs, prepared at model size and routed."""
        work = ImageWork(name, image, partial, palette)
        windows = self.windows(partial.shape, tile, tile_scale)
        work.boundary = bmap = self.boundary_map(image)
        if len(windows) == 1 and (self.cfg.prior or self.fusion is not None):  # serves prior and finish
            work.propagated = propagate_for(self.cfg, partial, image, self.unknown, self.fusion is not None, bmap)
        work.jobs = [self._prepare(Job(image[y0:y1, x0:x1], partial[y0:y1, x0:x1], (y0, y1, x0, x1),
                                       None if bmap is None else bmap[:, y0:y1, x0:x1]),
                                   propagated=work.propagated)
                     for y0, y1, x0, x1 in windows]
        return work

    def boundary_map(self, image: np.ndarray) -> np.ndarray | None:
        """The image's class-boundary map (2, H, W) when something here reads it (a geodesic
        step cost: the prior's propagation or pixel fusion's class costs; the fusion's hole
        features), else None."""
        geodesic = self.cfg.prior_mode == "geodesic" or self.fusion is not None
        step_cost = geodesic and self.cfg.geodesic_boundary_weight > 0
        if self.boundaries is None or not (step_cost or (self.fusion is not None and self.fusion.needs_boundary)):
            return None
        return self.boundaries(image)

    def windows(self, shape: tuple[int, int], tile: bool, scale: float) -> list[tuple[int, int, int, int]]:
        """The boxes (y0, y1, x0, x1) the image is completed in: the whole image, or
        overlapping windows of ``scale`` times the model size."""
        H, W = shape
        if not tile:
            return [(0, H, 0, W)]
        wh = min(H, max(1, int(round(self.cfg.img_size[0] * scale))))
        ww = min(W, max(1, int(round(self.cfg.img_size[1] * scale))))
        ys, xs = _starts(H, wh), _starts(W, ww)
        return [(y, y + wh, x, x + ww) for y in ys for x in xs]

    def _prepare(self, job: Job, force_final: bool = False, propagated: Propagation | None = None) -> Job:
        """The job's model inputs and its route (engine, mask plan, final or not)."""
        st = self.settings
        job.inputs = prepare(job.image, job.working, self.cfg, st.label_resize, st.unknown_index, propagated,
                             job.boundary)
        job.decision = route_image(job.inputs, self.cfg, self.mask_ratios, st.unknown_threshold,
                                   st.background_index, force_final)
        return job

    # ------------------------------------------------------------------ 2. infer
    def infer(self, works: list[ImageWork], batch_size: int, pool: ThreadPoolExecutor | None) -> None:
        """Runs the jobs of ``works`` (those without an error) on their engines, ``batch_size``
        images per call, pass after pass until every job is final (``pool``: where the jobs of
        a further pass are prepared again)."""
        active = [j for w in works if w.error is None for j in w.jobs]
        while active:
            groups: dict[float, list[Job]] = defaultdict(list)
            for j in active:
                groups[round(j.decision.mask_ratio, 6)].append(j)
            for m in sorted(groups):
                js = groups[m]
                for s in range(0, len(js), batch_size):
                    part = js[s: s + batch_size]
                    for j, lg in zip(part, self._run(self.engines[m], part)):
                        j.logits, j.passes = lg, j.passes + 1
                        j.runs[m] += 1
            active = [j for j in active if not j.decision.final]
            if active:
                if pool is None:
                    for j in active:
                        self._advance(j)
                else:
                    for f in [pool.submit(self._advance, j) for j in active]:
                        f.result()

    @staticmethod
    def _run(engine: Engine, jobs: list[Job]) -> list[np.ndarray]:
        # the CPU runtime calls its graphs image by image
        feed = graph_inputs([j.inputs for j in jobs], [j.decision.plan for j in jobs], stacked=False)
        return engine.backend.run_images(feed)

    def _advance(self, job: Job) -> Job:
        """After an intermediate pass: its predictions become known, route again."""
        before = job.decision.n_must
        job.working = apply_pass(job.working, job.logits, job.decision, self.cfg, self.unknown)
        self._prepare(job)
        if not job.decision.final and job.decision.n_must >= before:  # no progress: finish with what we have
            self._prepare(job, force_final=True)
        return job

    # ------------------------------------------------------------------ 3. finish
    def finish(self, work: ImageWork, min_confidence: float = 0.0, confidence: bool = True) -> CompletionResult:
        """The completed label (and confidence) of an inferred image; an image stopped by an
        error -> a result carrying it."""
        if work.error is not None:
            return CompletionResult(None, None, float("nan"), 0, 0, name=work.name, error=work.error)
        partial = work.partial
        if len(work.jobs) == 1 and work.jobs[0].box == (0, partial.shape[0], 0, partial.shape[1]):
            logits = work.jobs[0].logits
        else:
            logits = self._blend(work.jobs, partial.shape)
        propagated = work.propagated
        if propagated is None and self.fusion is not None:  # tiled: propagate over the whole image
            propagated = propagate_for(self.cfg, partial, work.image, self.unknown, True, work.boundary)
        label, conf = finish(logits, partial, self.settings, propagated, min_confidence, confidence,
                             self.fusion_scorer)
        hole = partial == self.unknown
        # only min_confidence leaves hole pixels unknown
        unreliable = int(np.count_nonzero(label[hole] == self.unknown)) if min_confidence > 0 else 0
        runs = Counter()
        for j in work.jobs:
            runs.update(j.runs)
        return CompletionResult(label, conf, max(runs) if runs else float("nan"),
                                passes=max(j.passes for j in work.jobs), tiles=len(work.jobs),
                                filled=int(np.count_nonzero(hole)) - unreliable, unreliable=unreliable, name=work.name,
                                palette=work.palette, engines=dict(runs))

    def _blend(self, jobs: list[Job], shape: tuple[int, int]) -> np.ndarray:
        """Tile logits resized to their windows, blended with a linear weight ramp."""
        acc = np.zeros((self.cfg.num_classes, *shape), np.float32)
        wsum = np.zeros(shape, np.float32)
        for j in jobs:
            y0, y1, x0, x1 = j.box
            lg = resize_logits(j.logits, (y1 - y0, x1 - x0))
            w = np.outer(_ramp(y1 - y0), _ramp(x1 - x0)).astype(np.float32)
            acc[:, y0:y1, x0:x1] += lg * w
            wsum[y0:y1, x0:x1] += w
        return acc / np.maximum(wsum, 1e-12)


def _starts(n: int, win: int) -> list[int]:
    if win >= n:
        return [0]
    stride = max(1, int(round(win * 2 / 3)))
    out = list(range(0, n - win + 1, stride))
    if out[-1] != n - win:
        out.append(n - win)
    return out


def _ramp(n: int) -> np.ndarray:
    """1 in the middle, falling linearly over the outer third of a window (never 0)."""
    i = np.arange(n, dtype=np.float32)
    d = np.minimum(i + 0.5, n - i - 0.5) / max(n / 3.0, 1.0)
    return np.clip(d, 1e-3, 1.0)
