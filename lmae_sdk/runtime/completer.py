"""``LMAECompleter``: load a bundle (or a ``.pt``), complete partial labels.

    completer = LMAECompleter.load("bundle/", backend="auto")
    r = completer.complete(image, partial)          # RGB uint8 HxWx3, uint8 HxW, 255 = unknown
    r.label, r.confidence, r.mask_ratio
    for r in completer.complete_batch(pairs, batch_size=16): ...

This module is the public API and the scheduling: it reads each pair (checked, before any
work) and hands the arrays to an :class:`~.image_pipeline.ImagePipeline`, whose stages run
one image's path (start: prepare and route; infer: batched by engine, further passes;
finish: known pixels never change).  Starting and finishing run on a thread pool (or in
lanes), overlapping the inference of the neighbouring chunk; results come back in input
order.  Loading: :mod:`.loading`.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..config import LMAEConfig
from ..fusion import PixelFusion
from ..fusion_rows import RowScorer
from ..inputs import check_channels, check_count, check_fraction, check_positive, read_pair
from ..labels import InputError
from ..pipeline import CompletionSettings
from . import loading
from .backends import Engine
from .image_pipeline import CompletionResult, ImagePipeline, ImageWork
from .loading import LoadOptions

__all__ = ["CompletionResult", "LMAECompleter"]


@dataclass(frozen=True)
class _Call:
    """One ``complete`` / ``complete_batch`` call, its options checked: the pipeline that
    completes its images, how pairs are read (channel order, tiling), what each result gets."""

    pipeline: ImagePipeline
    channels: str = "rgb"
    tile: bool = False
    tile_scale: float = 1.0
    min_confidence: float = 0.0
    confidence: bool = True
    on_error: str = "raise"
    on_result: Callable[[CompletionResult], None] | None = None


class LMAECompleter:
    """Completes partial labels with one model's engines (one per mask ratio) and its
    :class:`~lmae_sdk.pipeline.CompletionSettings`; build it with :meth:`load`."""

    def __init__(self, cfg: LMAEConfig, engines: Sequence[Engine], settings: CompletionSettings, *,
                 boundaries: Callable[[np.ndarray], np.ndarray] | None = None,
                 fusion_scorer: RowScorer | None = None, source: str = "", backend_name: str = "") -> None:
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
        # scores pixel fusion's candidate rows: the bundle's fusion graph (None: on the host)
        self.fusion_scorer = fusion_scorer
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

    def boundary_map(self, image: np.ndarray) -> np.ndarray | None:
        """The image's class-boundary map (2, H, W) when the completion reads it, else None
        (:meth:`~.image_pipeline.ImagePipeline.boundary_map`)."""
        return self._pipeline().boundary_map(image)

    def _pipeline(self) -> ImagePipeline:
        """The per-image stages with the parts this completer holds now (built per call: a
        changed ``settings`` or ``fusion_scorer`` applies from the next call)."""
        return ImagePipeline(self.cfg, self.settings, self.engines, self.boundaries, self.fusion_scorer)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", *, device: str | None = None, threads: int = 0,
             precision: str | None = None, mask_ratios: Sequence[float] | None = None,
             unknown_index: int | None = None, pixel_fusion: bool = True, warm_up: bool = True) -> "LMAECompleter":
        """A bundle folder (manifest.json) or a ``.pt`` checkpoint.

        backend: auto | torch | onnxruntime | tensorrt.  ``auto`` picks TensorRT > ONNX Runtime
        CUDA > ONNX Runtime CPU > torch from what is installed and what the bundle holds.
        ``mask_ratios`` restricts (bundle) or sets (checkpoint: a range model serves any) the
        engines.  ``pixel_fusion=False`` ignores the model's pixel fusion (the argmax decides):
        faster host work, lower quality (benchmarks/HISTORY.md).  ``precision``: the engines'
        (fp32 | fp16; default fp32 on a CPU, fp16 on a GPU where the bundle holds it); a bundle's
        int8 boundary graph runs on ONNX Runtime's CPU provider unless ``precision="fp32"``.

        A bundle's ``manifest.json`` is the contract: the completion settings (classes,
        unknown index, label down-sampling, routing, pixel fusion, boundary net) are read
        from its top level, and an engine (its entry's ``model_config``, its ONNX graph's
        metadata, the bundle's checkpoint for the torch backend) that contradicts them is
        refused with a :class:`~lmae_sdk.bundle.BundleError` naming the key, both values
        and the file.

        ``threads``: ONNX Runtime's intra-op threads per engine (0: every core the process may
        use, :func:`lmae_sdk.cores.usable_cores`).  The torch backend runs on torch's
        process-wide thread count, which the library never changes: the caller sets it
        (``torch.set_num_threads`` or :func:`lmae_sdk.runtime.backends.set_torch_threads`).

        ``warm_up``: run the host's steps once on a synthetic image before returning
        (:meth:`warm_up`), so that the first real image does not wait for the compiled kernels.
        """
        opts = LoadOptions(backend, device, threads, precision, mask_ratios, unknown_index, pixel_fusion)
        m = loading.load(Path(path), opts)
        completer = cls(m.cfg, m.engines, m.settings, boundaries=m.boundaries, fusion_scorer=m.fusion_scorer,
                        source=m.source, backend_name=m.backend_name)
        if warm_up:
            completer.warm_up()
        return completer

    def warm_up(self) -> None:
        """Run the host's part of a completion once on a synthetic image, with a synthetic
        boundary map and zero logits in place of the graphs: the first call of each compiled
        kernel loads it from numba's cache (with numba's import, about 0.4 s on a CPU core),
        which the first real image would otherwise wait for.  ``load`` calls it.  The boundary
        graph and the engines do not run (their first run costs little more than any other);
        the fusion graph scores the synthetic image's rows."""
        h, w = self.cfg.img_size  # larger than the model's size: the logits are upsampled as usual
        image, partial = warm_up_pair((h + h // 4, w + w // 4), self.num_classes, self.unknown_index)
        bmap = np.full((2, *partial.shape), 0.5, np.float32)
        pipeline = ImagePipeline(self.cfg, self.settings, self.engines,
                                 None if self.boundaries is None else (lambda _: bmap), self.fusion_scorer)
        work = pipeline.start(None, image, partial, None)
        for job in work.jobs:
            job.logits = np.zeros((self.num_classes, *job.inputs.image.shape[1:]), np.float32)
        pipeline.finish(work, confidence=False)

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
        if self.fusion is not None:
            finish += "; fusion rows scored by the fusion graph" if self.fusion_scorer is not None else \
                "; fusion rows scored on the host"
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
        call = _Call(self._pipeline(), check_channels(channels), bool(tile), check_positive("tile_scale", tile_scale),
                     check_fraction("min_confidence", min_confidence), confidence)
        work = self._start(call, (image, partial))
        call.pipeline.infer([work], batch_size=max(len(work.jobs), 1), pool=None)
        return self._finish(call, work)

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

        ``lanes``: images completed side by side, each lane on its own thread from reading to
        ``on_result``, ``chunk_size`` images at a time (default: as many as its engine runs per
        call, one on ONNX Runtime's CPU provider; ``workers`` is then unused).  On a CPU, load
        with ``threads=1`` (torch backend: ``set_torch_threads(1)`` in your process) and set ``lanes`` to
        ``usable_cores()``: every core runs engine and host work in turn, where
        one engine over all cores waits while the host works (1.13-1.18x for ``small`` on 2 cores,
        benchmarks/HISTORY.md).  TensorRT's engine calls take turns (one execution
        context per engine); the lanes' host work still overlaps them.
        """
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        channels, tile_scale = check_channels(channels), check_positive("tile_scale", tile_scale)
        call = _Call(self._pipeline(), channels, bool(tile), tile_scale,
                     check_fraction("min_confidence", min_confidence), confidence, on_error, on_result)
        batch_size, lanes = check_count("batch_size", batch_size), check_count("lanes", lanes)
        if chunk_size is not None:
            check_count("chunk_size", chunk_size)
        if lanes > 1:
            return self._complete_in_lanes(call, pairs, batch_size, chunk_size, lanes)
        return self._complete_chunks(call, pairs, batch_size, workers, chunk_size or max(2 * batch_size, 8))

    # ------------------------------------------------------------------ scheduling
    def _complete_chunks(self, call: _Call, pairs: Iterable, batch_size: int, workers: int,
                         chunk: int) -> Iterator[CompletionResult]:
        it = iter(pairs)
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="lmae-prep") as pool:
            def submit_chunk():
                return [pool.submit(self._start, call, p) for p in islice(it, chunk)]

            cur = submit_chunk()
            prev: list = []
            while cur:
                nxt = submit_chunk()  # the next chunk starts while this one runs the model
                works = [f.result() for f in cur]
                call.pipeline.infer(works, batch_size, pool)
                fin = [pool.submit(self._finish, call, work) for work in works]
                for f in prev:  # finished on the pool while this chunk was inferred
                    yield f.result()
                prev, cur = fin, nxt
            for f in prev:
                yield f.result()

    def _complete_in_lanes(self, call: _Call, pairs: Iterable, batch_size: int, chunk: int | None,
                           lanes: int) -> Iterator[CompletionResult]:
        # engines that run a batch a few images per call anyway (ONNX Runtime on CPU): the lane
        # takes its chunk that many images at a time from reading to on_result, so each image's
        # arrays are still in cache when the engine and the finish read them
        step = min([batch_size] + [e.backend.images_per_call or batch_size for e in self.engines.values()])
        # by default a lane takes that many images at a time: the lanes then end within one call
        # of each other (with chunks of 16, 101 images left one core idle for 5 of them)
        chunk = chunk or step

        def run_chunk(chunk_pairs: list) -> list[CompletionResult]:
            results = []
            for s in range(0, len(chunk_pairs), step):
                works = [self._start(call, p) for p in chunk_pairs[s: s + step]]
                call.pipeline.infer(works, batch_size, None)
                results += [self._finish(call, work) for work in works]
            return results

        it = iter(pairs)
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

    # ------------------------------------------------------------------ one image in, one result out
    def _start(self, call: _Call, pair) -> ImageWork:
        """A pair read and checked, then the pipeline's start; a bad pair raises, or with
        ``on_error="return"`` becomes an :class:`InputError` naming it, reported by finish."""
        if isinstance(pair, dict):
            image, partial, name = pair["image"], pair["label"], pair.get("name")
        else:
            image, partial, *rest = pair
            name = rest[0] if rest else None
        if name is None:
            name = str(partial) if isinstance(partial, (str, os.PathLike)) else None
        pipeline = call.pipeline
        try:
            img, lab, palette = read_pair(image, partial, pipeline.cfg.num_classes, pipeline.unknown, call.channels)
            return pipeline.start(name, img, lab, palette, call.tile, call.tile_scale)
        except Exception as e:
            if call.on_error == "raise":
                raise
            error = e if isinstance(e, InputError) else InputError(name, f"{type(e).__name__}: {e}")
            return ImageWork(name, error=error)

    def _finish(self, call: _Call, work: ImageWork) -> CompletionResult:
        """The pipeline's finish, then ``on_result`` (its exception: the image's error)."""
        result = call.pipeline.finish(work, call.min_confidence, call.confidence)
        if call.on_result is not None and result.ok:
            try:
                call.on_result(result)
            except Exception as e:
                if call.on_error == "raise":
                    raise
                return replace(result, error=e)
        return result


def warm_up_pair(size: tuple[int, int], num_classes: int, unknown: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic (image, partial label) of ``size`` for :meth:`LMAECompleter.warm_up`:
    bands of up to four classes in colours of their own, with noise, and a third of the label
    unknown in a central block and scattered squares, so that every host step runs."""
    h, w = size
    rng = np.random.default_rng(0)
    classes = min(num_classes, 4)
    band = (np.arange(w) * classes // w).astype(np.uint8)
    partial = np.broadcast_to(band, (h, w)).copy()
    colours = rng.integers(0, 256, (classes, 3))
    image = np.clip(colours[partial] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    partial[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = unknown
    for y, x in rng.integers(0, (max(h - 8, 1), max(w - 8, 1)), (12, 2)):
        partial[y: y + 8, x: x + 8] = unknown
    return image, partial
