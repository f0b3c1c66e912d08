"""lmae-sdk: complete partial segmentation labels with L-MAE (Label Masked Autoencoder)."""
from __future__ import annotations

__version__ = "0.1.0"

from .model import LMAE, LMAEConfig, PRESETS, make_config  # noqa: E402

__all__ = ["LMAE", "LMAEConfig", "PRESETS", "make_config", "__version__"]


def __getattr__(name: str):  # the runtime pulls in optional backends: import lazily
    if name == "LMAECompleter":
        from .runtime.completer import LMAECompleter

        return LMAECompleter
    raise AttributeError(name)
