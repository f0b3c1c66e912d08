"""``LMAECompleter``: load a bundle (or a ``.pt``), complete partial labels.

    completer = LMAECompleter.load("bundle/", backend="auto")
    r = completer.complete(image, partial)          # RGB uint8 HxWx3, uint8 HxW, 255 = unknown
    r.label, r.confidence, r.mask_ratio
    for r in completer.complete_batch(pairs, batch_size=16): ...

Per image, the steps of :mod:`lmae_sdk.pipeline`: validate -> (tile into windows) ->
prepare at model size -> route to an engine (:mod:`lmae_sdk.routing`) -> batched inference
grouped by engine -> (passes) -> finish (known pixels never change).  This module schedules
them: preparing and finishing run on a thread pool (or in lanes), overlapping the inference
of the neighbouring chunk; results come back in input order.  Loading: :mod:`.loading`.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..config import LMAEConfig
from ..fusion import PixelFusion
from ..inputs import check_channels, check_count, check_fraction, check_positive, read_pair
from ..labels import InputError
from ..propagation import Propagation
from ..upsampling import resize_logits
from ..masking import MaskPlan
from ..pipeline import CompletionSettings, ModelInputs, finish, graph_inputs, prepare, propagate_for
from ..routing import RouteDecision, apply_pass, route_image
from . import loading
from .backends import Engine
from .loading import LoadOptions


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
class _Job:
    """One model-size completion: a whole image or one tile window."""

    image: np.ndarray
    partial: np.ndarray  # the original partial crop
    working: np.ndarray  # partial + earlier passes' predictions
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in the image
    boundary: np.ndarray | None = None  # (2, h, w) the window's class-boundary map (models with a boundary net)
    inputs: ModelInputs | None = None
    decision: RouteDecision | None = None
    logits: np.ndarray | None = None
    passes: int = 0
    runs: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class _Reading:
    """How the pairs of one call are read: the image arrays' channel order and tiling."""

    channels: str = "rgb"
    tile: bool = False
    tile_scale: float = 1.0

    @classmethod
    def checked(cls, channels: str, tile: bool, tile_scale: float) -> "_Reading":
        return cls(check_channels(channels), bool(tile), check_positive("tile_scale", tile_scale))


@dataclass
class _Item:
    index: int
    name: str | None
    image: np.ndarray | None = None
    partial: np.ndarray | None = None
    palette: list | None = None
    propagated: Propagation | None = None  # propagate_for of the whole partial
    boundary: np.ndarray | None = None  # (2, H, W) class-boundary map of the whole image
    jobs: list[_Job] = field(default_factory=list)
    error: Exception | None = None


class LMAECompleter:
    """Completes partial labels with one model's engines (one per mask ratio) and its
    :class:`~lmae_sdk.pipeline.CompletionSettings`; build it with :meth:`load`."""

    def __init__(self, cfg: LMAEConfig, engines: Sequence[Engine], settings: CompletionSettings, *,
                 boundaries: Callable[[np.ndarray], np.ndarray] | None = None, source: str = "",
                 backend_name: str = "") -> None:
        if not engines:
            raise ValueError("a completer needs at least one engine")
        if settings.num_classes != cfg.num_classes:
            raise ValueError(f"{settings.num_classes} class names for a model of {cfg.num_classes} classes")
        fusion = settings.fusion
        if cfg.geodesic_boundary_weight > 0 and boundaries is None:
            raise ValueError("the model's geodesic step cost has a boundary term but no boundary net was given")
        if fusion is not None and fusion.needs_boundary and boundaries is None:
            raise ValueError("the pixel fusion's hole features read the learned boundary map but no boundary net "
                             "was given")
        self.cfg = cfg
        self.engines = {round(e.mask_ratio, 6): e for e in engines}
        self.settings = settings
        self.boundaries = boundaries  # image -> (2, H, W) class-boundary map, for the step cost
        self.source = source
        self.backend_name = backend_name or engines[0].backend.name

    @property
    def unknown_index(self) -> int:
        return self.settings.unknown_index

    @property
    def class_names(self) -> list[str]:
        return self.settings.class_names

    @property
    def fusion(self) -> PixelFusion | None:
        """The finishing rule's pixel fusion (None: the argmax)."""
        return self.settings.fusion

    @property
    def _needs_propagation(self) -> bool:
        """Whether ``finish`` reads the propagation (pixel fusion)."""
        return self.fusion is not None

    def boundary_map(self, image: np.ndarray) -> np.ndarray | None:
        """The image's class-boundary map (2, H, W) when something here reads it (a geodesic
        step cost: the prior's propagation or pixel fusion's class costs; the fusion's hole
        features), else None."""
        geodesic = self.cfg.prior_mode == "geodesic" or self.fusion is not None
        step_cost = geodesic and self.cfg.geodesic_boundary_weight > 0
        if self.boundaries is None or not (step_cost or (self.fusion is not None and self.fusion.needs_boundary)):
            return None
        return self.boundaries(image)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", *, device: str | None = None, threads: int = 0,
             precision: str | None = None, mask_ratios: Sequence[float] | None = None,
             unknown_index: int | None = None, pixel_fusion: bool = True) -> "LMAECompleter":
        """A bundle folder (manifest.json) or a ``.pt`` checkpoint.

        backend: auto | torch | onnxruntime | tensorrt.  ``auto`` picks TensorRT > ONNX Runtime
        CUDA > ONNX Runtime CPU > torch from what is installed and what the bundle holds.
        ``mask_ratios`` restricts (bundle) or sets (checkpoint: a range model serves any) the
        engines.  ``pixel_fusion=False`` ignores the model's pixel fusion (the argmax decides):
        faster host work, lower quality (benchmarks/RESULTS.md).

        A bundle's ``manifest.json`` is the contract: the completion settings (classes,
        unknown index, label down-sampling, routing, pixel fusion, boundary net) are read
        from its top level, and an engine (its entry's ``model_config``, its ONNX graph's
        metadata, the bundle's checkpoint for the torch backend) that contradicts them is
        refused with a :class:`~lmae_sdk.bundle.BundleError` naming the key, both values
        and the file.
        """
        opts = LoadOptions(backend, device, threads, precision, mask_ratios, unknown_index, pixel_fusion)
        return loading.load(cls, Path(path), opts)

    # ------------------------------------------------------------------ info
    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def mask_ratios(self) -> list[float]:
        return sorted(self.engines)

    @property
    def providers(self) -> list[str]:
        return next(iter(self.engines.values())).backend.providers

    def describe(self) -> str:
        finish = self.settings.finishing_rule
        if self.boundaries is not None and self.cfg.geodesic_boundary_weight > 0:
            finish += ", learned boundaries"
        return (f"{self.backend_name} {self.providers} engines m={self.mask_ratios} model "
                f"{self.cfg.img_size[0]}x{self.cfg.img_size[1]} ({self.num_classes} classes), {finish}")

    # ------------------------------------------------------------------ public API
    def complete(self, image, partial, *, min_confidence: float = 0.0, tile: bool = False,
                 tile_scale: float = 1.0, confidence: bool = True, channels: str = "rgb") -> CompletionResult:
        """One image; raises :class:`InputError` on a bad input, before any work.

        ``image``: a uint8 array (H, W, 3) (or (H, W, 4) with alpha, or (H, W) grey) or an
        image file; ``partial``: a uint8 (H, W) array of class ids (``unknown_index`` = unknown)
        or a label PNG.  ``channels``: the colour order of an image *array*, ``"rgb"`` (the
        default) or ``"bgr"`` (what ``cv2.imread`` returns); files are always decoded to RGB.
        ``min_confidence`` in [0, 1]: hole pixels below it stay unknown.  ``confidence=False``:
        no confidence map (``result.confidence`` None) unless ``min_confidence`` needs one.
        """
        reading = _Reading.checked(channels, tile, tile_scale)
        min_confidence = check_fraction("min_confidence", min_confidence)
        item = self._load(0, (image, partial), reading, on_error="raise")
        self._infer([j for j in item.jobs], batch_size=max(len(item.jobs), 1), pool=None)
        return self._finish(item, min_confidence, confidence)

    def complete_batch(self, pairs: Iterable, batch_size: int = 16, *, min_confidence: float = 0.0,
                       tile: bool = False, tile_scale: float = 1.0, workers: int = 2,
                       on_error: str = "raise", chunk_size: int | None = None,
                       on_result: Callable[[CompletionResult], None] | None = None,
                       lanes: int = 1, confidence: bool = True, channels: str = "rgb") -> Iterator[CompletionResult]:
        """Complete any iterable of pairs, any sizes; results in input order.

        The options are checked when this is called (a ``ValueError`` naming the option);
        each pair when it is read.  ``channels`` and ``min_confidence``: as in :meth:`complete`.

        A pair is ``(image, partial)`` or ``(image, partial, name)`` where image / partial are
        arrays or file paths (read on the worker threads).  ``on_error="return"`` yields a
        result with ``.error`` for a bad input and carries on; ``"raise"`` raises it.
        ``on_result``: called with each good result on the worker threads, before it is
        yielded (e.g. write it to disk): the work overlaps the model instead of waiting for
        the caller's loop; an exception it raises is that image's error.  ``confidence=False``:
        results carry no confidence map unless ``min_confidence`` needs one (the softmax is ~15%
        of the host work per image; ``lmae complete`` asks for it with ``--confidence-dir``).

        ``lanes``: batches completed side by side, each on its own thread from reading to
        ``on_result`` (``workers`` is then unused).  On a CPU, load with ``threads=1`` and
        set ``lanes`` to the core count: every core runs engine and host work in turn, where
        one engine over all cores waits while the host works (1.13-1.18x for ``small`` on 2 cores,
        benchmarks/RESULTS.md).  TensorRT's engine calls take turns (one execution
        context per engine); the lanes' host work still overlaps them.
        """
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        reading = _Reading.checked(channels, tile, tile_scale)
        finish_args = (check_fraction("min_confidence", min_confidence), confidence)
        batch_size, lanes = check_count("batch_size", batch_size), check_count("lanes", lanes)
        if chunk_size is not None:
            check_count("chunk_size", chunk_size)
        if lanes > 1:
            return self._complete_in_lanes(pairs, batch_size, finish_args, reading, on_error,
                                           chunk_size or batch_size, on_result, lanes)
        return self._complete_chunks(pairs, batch_size, finish_args, reading, workers, on_error,
                                     chunk_size or max(2 * batch_size, 8), on_result)

    def _complete_chunks(self, pairs: Iterable, batch_size: int, finish_args: tuple[float, bool], reading: _Reading,
                         workers: int, on_error: str, chunk: int,
                         on_result: Callable[[CompletionResult], None] | None) -> Iterator[CompletionResult]:
        it = enumerate(pairs)
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="lmae-prep") as pool:
            def submit_chunk():
                return [pool.submit(self._load, i, p, reading, on_error) for i, p in islice(it, chunk)]

            cur = submit_chunk()
            prev: list = []
            while cur:
                nxt = submit_chunk()  # the next chunk prepares while this one runs the model
                items = [f.result() for f in cur]
                self._infer([j for item in items if item.error is None for j in item.jobs], batch_size, pool)
                fin = [pool.submit(self._finish_and_hand_on, item, finish_args, on_result, on_error)
                       for item in items]
                for f in prev:  # finished on the pool while this chunk was inferred
                    yield f.result()
                prev, cur = fin, nxt
            for f in prev:
                yield f.result()

    def _complete_in_lanes(self, pairs: Iterable, batch_size: int, finish_args: tuple[float, bool],
                           reading: _Reading, on_error: str, chunk: int,
                           on_result: Callable[[CompletionResult], None] | None,
                           lanes: int) -> Iterator[CompletionResult]:
        # engines that run a batch a few images per call anyway (ONNX Runtime on CPU): the lane
        # takes its chunk that many images at a time from reading to on_result, so each image's
        # arrays are still in cache when the engine and the finish read them
        step = min([batch_size] + [e.backend.images_per_call or batch_size for e in self.engines.values()])

        def run_chunk(chunk_pairs: list) -> list[CompletionResult]:
            results = []
            for s in range(0, len(chunk_pairs), step):
                items = [self._load(i, p, reading, on_error) for i, p in chunk_pairs[s: s + step]]
                self._infer([j for item in items if item.error is None for j in item.jobs], batch_size, None)
                results += [self._finish_and_hand_on(item, finish_args, on_result, on_error) for item in items]
            return results

        it = enumerate(pairs)
        pending: deque = deque()
        with ThreadPoolExecutor(lanes, thread_name_prefix="lmae-lane") as pool:
            while True:
                chunk_pairs = list(islice(it, chunk))
                if chunk_pairs:
                    pending.append(pool.submit(run_chunk, chunk_pairs))
                if pending and (len(pending) > lanes or not chunk_pairs):  # keep every lane busy, one queued
                    yield from pending.popleft().result()
                elif not chunk_pairs:
                    return

    # ------------------------------------------------------------------ stages
    def _load(self, index: int, pair, reading: _Reading, on_error: str) -> _Item:
        if isinstance(pair, dict):
            image, partial, name = pair["image"], pair["label"], pair.get("name")
        else:
            image, partial, *rest = pair
            name = rest[0] if rest else None
        if name is None:
            name = str(partial) if isinstance(partial, (str, os.PathLike)) else None
        item = _Item(index, name)
        try:
            img, lab, palette = read_pair(image, partial, self.num_classes, self.unknown_index, reading.channels)
            item.image, item.partial, item.palette = img, lab, palette
            windows = self._windows(lab.shape, reading.tile, reading.tile_scale)
            item.boundary = bmap = self.boundary_map(img)
            if len(windows) == 1 and (self.cfg.prior or self._needs_propagation):  # serves prior and finish
                item.propagated = propagate_for(self.cfg, lab, img, self.unknown_index, self.fusion is not None, bmap)
            item.jobs = [self._prepare(_Job(img[y0:y1, x0:x1], lab[y0:y1, x0:x1], lab[y0:y1, x0:x1],
                                            (y0, y1, x0, x1), None if bmap is None else bmap[:, y0:y1, x0:x1]),
                                       propagated=item.propagated)
                         for y0, y1, x0, x1 in windows]
        except Exception as e:
            if on_error == "raise":
                raise
            item.error = e if isinstance(e, InputError) else InputError(name, f"{type(e).__name__}: {e}")
        return item

    def _windows(self, shape: tuple[int, int], tile: bool, scale: float) -> list[tuple[int, int, int, int]]:
        H, W = shape
        if not tile:
            return [(0, H, 0, W)]
        wh = min(H, max(1, int(round(self.cfg.img_size[0] * scale))))
        ww = min(W, max(1, int(round(self.cfg.img_size[1] * scale))))
        ys, xs = _starts(H, wh), _starts(W, ww)
        return [(y, y + wh, x, x + ww) for y in ys for x in xs]

    def _prepare(self, job: _Job, force_final: bool = False,
                 propagated: Propagation | None = None) -> _Job:
        st = self.settings
        job.inputs = prepare(job.image, job.working, self.cfg, st.label_resize, st.unknown_index, propagated,
                             job.boundary)
        job.decision = route_image(job.inputs, self.cfg, self.mask_ratios, st.unknown_threshold,
                                   st.background_index, force_final)
        return job

    def _advance(self, job: _Job) -> _Job:
        """After an intermediate pass: its predictions become known, route again."""
        before = job.decision.n_must
        job.working = apply_pass(job.working, job.logits, job.decision, self.cfg, self.unknown_index)
        self._prepare(job)
        if not job.decision.final and job.decision.n_must >= before:  # no progress: finish with what we have
            self._prepare(job, force_final=True)
        return job

    def _infer(self, jobs: list[_Job], batch_size: int, pool: ThreadPoolExecutor | None) -> None:
        active = jobs
        while active:
            groups: dict[float, list[_Job]] = defaultdict(list)
            for j in active:
                groups[round(j.decision.mask_ratio, 6)].append(j)
            for m in sorted(groups):
                eng = self.engines[m]
                js = groups[m]
                for s in range(0, len(js), batch_size):
                    part = js[s: s + batch_size]
                    logits = self._run(eng, [j.inputs for j in part], [j.decision.plan for j in part])
                    for j, lg in zip(part, logits):
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

    def _run(self, eng: Engine, inputs: list[ModelInputs], plans: list[MaskPlan]) -> list[np.ndarray]:
        feed = graph_inputs(inputs, plans, stacked=False)  # the CPU runtime calls its graphs image by image
        return eng.backend.run_images(feed)

    def _finish_and_hand_on(self, item: _Item, finish_args: tuple[float, bool],
                            on_result: Callable[[CompletionResult], None] | None, on_error: str) -> CompletionResult:
        result = self._finish(item, *finish_args)  # (min_confidence, confidence)
        if on_result is not None and result.ok:
            try:
                on_result(result)
            except Exception as e:
                if on_error == "raise":
                    raise
                return replace(result, error=e)
        return result

    def _finish(self, item: _Item, min_confidence: float, confidence: bool = True) -> CompletionResult:
        if item.error is not None:
            return CompletionResult(None, None, float("nan"), 0, 0, name=item.name, error=item.error)
        partial = item.partial
        if len(item.jobs) == 1 and item.jobs[0].box == (0, partial.shape[0], 0, partial.shape[1]):
            logits = item.jobs[0].logits
        else:
            logits = self._blend(item.jobs, partial.shape)
        propagated = item.propagated
        if propagated is None and self._needs_propagation:  # tiled: propagate over the whole image
            propagated = propagate_for(self.cfg, partial, item.image, self.unknown_index, self.fusion is not None,
                                       item.boundary)
        label, conf = finish(logits, partial, self.settings, propagated, min_confidence, confidence)
        hole = partial == self.unknown_index
        # only min_confidence leaves hole pixels unknown
        unreliable = int(np.count_nonzero(label[hole] == self.unknown_index)) if min_confidence > 0 else 0
        runs = Counter()
        for j in item.jobs:
            runs.update(j.runs)
        return CompletionResult(label, conf, max(runs) if runs else float("nan"),
                                passes=max(j.passes for j in item.jobs), tiles=len(item.jobs),
                                filled=int(np.count_nonzero(hole)) - unreliable, unreliable=unreliable, name=item.name,
                                palette=item.palette, engines=dict(runs))

    def _blend(self, jobs: list[_Job], shape: tuple[int, int]) -> np.ndarray:
        """Tile logits resized to their windows, blended with a linear weight ramp."""
        acc = np.zeros((self.num_classes, *shape), np.float32)
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
