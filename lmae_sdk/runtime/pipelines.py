"""Data-pipeline adapters: a torch ``IterableDataset`` and a Ray Data ``map_batches`` callable.

Both load their own :class:`LMAECompleter` lazily (in the DataLoader worker / Ray actor),
so only the model path and options travel between processes.  Neither needs torch to
import: ``folder_pairs`` (from :mod:`lmae_sdk.runtime.pairing`) and ``RayCompleter`` serve
torch-free deployments (an ONNX bundle), and ``CompletionDataset`` is a torch
``IterableDataset`` when torch is installed.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .pairing import folder_pairs  # CompletionDataset's folder source; part of this module's API


def _load_completer(model, backend: str, threads: int, device: str | None):
    from .completer import LMAECompleter

    if isinstance(model, LMAECompleter):
        return model
    return LMAECompleter.load(model, backend=backend, threads=threads, device=device)


class _CompletionItems:
    """What :data:`CompletionDataset` iterates (torch's ``IterableDataset`` is added to its
    bases when torch is installed, on first use, so that importing this module needs no torch).

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
        if self._completer is None:
            self._completer = _load_completer(self.model, self.backend, self.threads, self.device)
        info = _worker_info()
        pairs: Iterable = self._pairs()
        if info is not None and info.num_workers > 1:
            pairs = (p for i, p in enumerate(pairs) if i % info.num_workers == info.id)
        for r in self._completer.complete_batch(pairs, self.batch_size, min_confidence=self.min_confidence,
                                                tile=self.tile, workers=1, on_error=self.on_error):
            yield {"name": r.name, "label": r.label, "confidence": r.confidence, "mask_ratio": r.mask_ratio,
                   "error": None if r.ok else str(r.error)}


@functools.cache
def _completion_dataset() -> type:
    try:
        from torch.utils.data import IterableDataset
    except ImportError:  # no torch: a plain iterable
        IterableDataset = object
    return type("CompletionDataset", (_CompletionItems, IterableDataset),
                {"__doc__": "``torch.utils.data.IterableDataset`` yielding completed labels.\n\n"
                            + (_CompletionItems.__doc__ or "").split("\n\n", 1)[1],
                 "__module__": __name__})


def __getattr__(name: str) -> Any:
    if name == "CompletionDataset":
        return _completion_dataset()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RayCompleter:
    """Callable class for ``ray.data.Dataset.map_batches``: completes a column of partial labels.

    Each Ray actor builds its own :class:`LMAECompleter` from ``model`` (a bundle folder or a
    ``.pt`` checkpoint path) in its constructor; only the path and the options are pickled,
    never a loaded model or engine::

        import ray
        from lmae_sdk.runtime.pipelines import RayCompleter, folder_pairs

        rows = [{"name": stem, "image": str(image), "label": str(label)}
                for image, label, stem in folder_pairs("images/", "labels/")]
        done = ray.data.from_items(rows).map_batches(
            RayCompleter, fn_constructor_kwargs={"model": "bundle/", "on_error": "return"},
            batch_size=16, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=4))  # 4 actors, one CPU each
        for row in done.iter_rows():
            row["name"], row["completed"], row["error"]

    Input columns ``image`` and ``label`` (see ``image_column`` / ``label_column``) hold
    arrays (RGB uint8 (H, W, 3); uint8 (H, W) class ids, 255 unknown), or file paths that
    the actor reads.  A ``name`` column, when present, names a row in error messages.  Every
    input column passes through; added: ``completed`` (uint8 (H, W)), ``confidence``
    (float32 (H, W), unless ``confidence=False``), ``mask_ratio`` and ``error`` ("" for a
    completed row).  ``on_error="return"``: a bad row gets its message in ``error``, empty
    (0, 0) arrays and a NaN mask ratio, and the batch carries on; ``"raise"`` fails the
    batch and so the Ray job.

    Threads: the engine runs on ``threads`` threads (1 by default; ``threads=0``, all cores
    in every actor, is refused; the torch backend runs on the actor process's torch thread
    count, ``OMP_NUM_THREADS`` there), reading and pre/post-processing on one more thread, so
    an actor keeps about one core busy: set ``num_cpus=threads`` per actor and scale out with
    the pool size.  ``batch_size`` is the engine batch inside the actor; ``map_batches``'
    own ``batch_size`` is how many rows one call receives.
    """

    def __init__(self, model: str | os.PathLike, backend: str = "auto", batch_size: int = 16, threads: int = 1,
                 device: str | None = None, min_confidence: float = 0.0, tile: bool = False,
                 confidence: bool = True, on_error: str = "raise", image_column: str = "image",
                 label_column: str = "label", name_column: str = "name") -> None:
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"RayCompleter takes the model's path (a bundle folder or a .pt), got "
                            f"{type(model).__name__}: each Ray actor loads its own completer")
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (engine threads per actor), got {threads}")
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        self._options = dict(model=os.fspath(model), backend=backend, batch_size=batch_size, threads=threads,
                             device=device, min_confidence=min_confidence, tile=tile, confidence=confidence,
                             on_error=on_error, image_column=image_column, label_column=label_column,
                             name_column=name_column)
        self.completer = _load_completer(os.fspath(model), backend, threads, device)
        self.batch_size, self.min_confidence, self.tile = batch_size, min_confidence, tile
        self.confidence, self.on_error = confidence, on_error
        self.image_column, self.label_column, self.name_column = image_column, label_column, name_column

    def __reduce__(self):
        # a copy (e.g. an instance handed to Ray as a function) reloads the model from its path
        return (_ray_completer, (self._options,))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, labels = batch[self.image_column], batch[self.label_column]
        names = batch.get(self.name_column)
        pairs = [(_cell(images[i]), _cell(labels[i])) + (() if names is None else (str(names[i]),))
                 for i in range(len(images))]
        results = list(self.completer.complete_batch(pairs, self.batch_size, min_confidence=self.min_confidence,
                                                     tile=self.tile, workers=1, on_error=self.on_error,
                                                     confidence=self.confidence))
        out = dict(batch)
        out["completed"] = _column([r.label if r.ok else np.zeros((0, 0), np.uint8) for r in results])
        if self.confidence or self.min_confidence > 0:
            out["confidence"] = _column([r.confidence if r.ok else np.zeros((0, 0), np.float32) for r in results])
        out["mask_ratio"] = np.asarray([r.mask_ratio for r in results], np.float32)
        out["error"] = np.asarray(["" if r.ok else str(r.error) for r in results], dtype=object)
        return out


def _ray_completer(options: dict[str, Any]) -> RayCompleter:
    return RayCompleter(**options)


def _cell(value):
    """A column cell as the completer takes it: a path stays a path, anything else an array."""
    return value if isinstance(value, (str, os.PathLike)) else np.asarray(value)


def _worker_info():
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return None
    return get_worker_info()


def _column(arrays: Sequence[np.ndarray]) -> np.ndarray:
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    col = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        col[i] = a
    return col
