"""Data-pipeline adapters: a torch ``IterableDataset`` and a Ray Data ``map_batches`` callable.

Both load their own :class:`LMAECompleter` lazily (in the DataLoader worker / Ray actor),
so only the model path and options travel between processes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def folder_pairs(images: str | os.PathLike, labels: str | os.PathLike) -> list[tuple[Path | None, Path, str]]:
    """(image path or None when missing, label path, stem) for every label PNG, sorted."""
    images, labels = Path(images), Path(labels)
    by_stem: dict[str, Path] = {}
    for p in sorted(images.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            by_stem.setdefault(p.stem, p)
    out = []
    for lab in sorted(labels.iterdir()):
        if lab.is_file() and lab.suffix.lower() == ".png" and not lab.name.startswith("."):
            out.append((by_stem.get(lab.stem), lab, lab.stem))
    return out


def _load_completer(model, backend: str, threads: int, device: str | None):
    from .completer import LMAECompleter

    if isinstance(model, LMAECompleter):
        return model
    return LMAECompleter.load(model, backend=backend, threads=threads, device=device)


class CompletionDataset(IterableDataset):
    """``torch.utils.data.IterableDataset`` yielding completed labels.

    ``source``: an iterable of ``(image, partial)`` pairs (arrays or paths), or a tuple of
    folders ``(images_dir, labels_dir)``.  Each item is a dict ``name, label, confidence,
    mask_ratio`` (``error`` set and label None for a bad input when ``on_error="return"``).
    With several DataLoader workers, item i goes to worker ``i % num_workers``.
    """

    def __init__(self, model, source, *, backend: str = "auto", batch_size: int = 8, threads: int = 1,
                 device: str | None = None, min_confidence: float = 0.0, tile: bool = False,
                 on_error: str = "raise") -> None:
        self.model, self.source, self.backend = model, source, backend
        self.batch_size, self.threads, self.device = batch_size, threads, device
        self.min_confidence, self.tile, self.on_error = min_confidence, tile, on_error
        self._completer = None

    def _pairs(self) -> Iterable:
        src = self.source
        if isinstance(src, tuple) and len(src) == 2 and all(isinstance(s, (str, os.PathLike)) for s in src) \
                and Path(src[0]).is_dir():
            return [(img if img is not None else Path(src[0]) / f"{stem} (missing image)", lab, stem)
                    for img, lab, stem in folder_pairs(*src)]
        return src

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        if self._completer is None:
            self._completer = _load_completer(self.model, self.backend, self.threads, self.device)
        info = get_worker_info()
        pairs: Iterable = self._pairs()
        if info is not None and info.num_workers > 1:
            pairs = (p for i, p in enumerate(pairs) if i % info.num_workers == info.id)
        for r in self._completer.complete_batch(pairs, self.batch_size, min_confidence=self.min_confidence,
                                                tile=self.tile, workers=1, on_error=self.on_error):
            yield {"name": r.name, "label": r.label, "confidence": r.confidence, "mask_ratio": r.mask_ratio,
                   "error": None if r.ok else str(r.error)}


class RayCompleter:
    """Callable class for ``ray.data.Dataset.map_batches``::

        ds.map_batches(RayCompleter, fn_constructor_kwargs={"model": "bundle/"},
                       batch_format="numpy", concurrency=2, batch_size=16)

    Takes the ``image`` and ``label`` columns (arrays, or object arrays of differently
    sized images) and adds ``completed`` and ``confidence`` (and ``mask_ratio``).
    """

    def __init__(self, model, backend: str = "auto", batch_size: int = 16, threads: int = 1,
                 device: str | None = None, min_confidence: float = 0.0, tile: bool = False,
                 image_column: str = "image", label_column: str = "label") -> None:
        self.completer = _load_completer(model, backend, threads, device)
        self.batch_size, self.min_confidence, self.tile = batch_size, min_confidence, tile
        self.image_column, self.label_column = image_column, label_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, labels = batch[self.image_column], batch[self.label_column]
        pairs = [(np.asarray(images[i]), np.asarray(labels[i])) for i in range(len(images))]
        results = list(self.completer.complete_batch(pairs, self.batch_size, min_confidence=self.min_confidence,
                                                     tile=self.tile, workers=1))
        out = dict(batch)
        out["completed"] = _column([r.label for r in results])
        out["confidence"] = _column([r.confidence for r in results])
        out["mask_ratio"] = np.asarray([r.mask_ratio for r in results], np.float32)
        return out


def _column(arrays: Sequence[np.ndarray]) -> np.ndarray:
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    col = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        col[i] = a
    return col
