"""lmae-sdk: complete partial segmentation labels with L-MAE (Label Masked Autoencoder).

``import lmae_sdk`` needs no torch: the completer runs ONNX Runtime or TensorRT bundles
with numpy and OpenCV alone.  The torch model (``LMAE``) and a ``.pt`` checkpoint's
torch backend come with the ``train`` extra and are imported when first asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LMAECompleter": "lmae_sdk.runtime.completer",
    "CompletionResult": "lmae_sdk.runtime.completer",
    "CompletionSettings": "lmae_sdk.pipeline",
    "LMAEConfig": "lmae_sdk.config",
    "PRESETS": "lmae_sdk.config",
    "make_config": "lmae_sdk.config",
    "LMAE": "lmae_sdk.model",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
