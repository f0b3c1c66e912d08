"""Which install extra a feature needs, and the error that says so when it is missing.

The runtime install (ONNX Runtime or TensorRT) has no torch; training, export and the torch
backend need the ``train`` extra."""
from __future__ import annotations

import importlib

TRAIN_EXTRA_HINT = "pip install 'lmae-sdk[train]' (with pip install torch first to choose its build)"


class MissingExtra(ImportError):
    """A feature whose install extra is missing; the message names the extra."""


def require_torch(what: str) -> None:
    """:class:`MissingExtra` naming ``what`` and the ``train`` extra when torch does not import
    (a probe: the caller goes on to import what it needs from torch)."""
    try:
        importlib.import_module("torch")
    except ImportError as e:
        raise MissingExtra(f"{what} needs torch, which is not installed here ({e}): {TRAIN_EXTRA_HINT}") from None
