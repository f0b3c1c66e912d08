"""TensorRT backend: serialized ``*.engine`` files from ``lmae-export --backend tensorrt``.

``tensorrt`` is imported lazily; without it (or without a GPU) construction fails with a
clear message and ``auto`` never picks this backend.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from .base import Backend, BackendError


def trt_available() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _engine_class():
    try:
        from lmae_sdk.export.tensorrt_build import TrtEngine
    except ImportError as e:
        raise BackendError(f"TensorRT engines need lmae_sdk.export.tensorrt_build and the tensorrt package "
                           f"(pip install 'lmae-sdk[trt]' on a machine with an NVIDIA GPU): {e}") from e
    return TrtEngine


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, encoder: str | os.PathLike, decoder: str | os.PathLike, mask_ratio: float, num_visible: int,
                 input_names: dict[str, list[str]], precision: str = "fp16") -> None:
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendError("the tensorrt package is not installed (pip install 'lmae-sdk[trt]'; "
                               "needs an NVIDIA GPU)")
        super().__init__(mask_ratio, num_visible, input_names)
        cls = _engine_class()
        self.precision = precision
        self.engines = {"encoder": cls(str(Path(encoder))), "decoder": cls(str(Path(decoder)))}
        # one execution context and one set of device buffers per engine: calls from the
        # completer's lanes take turns
        self._lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        return ["TensorRT"]

    def _run(self, part: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        eng = self.engines[part]
        f = {k: np.ascontiguousarray(v) for k, v in self.select(part, feed).items()}
        fn = getattr(eng, "infer", None) or getattr(eng, "run", None) or eng
        out = fn(f)
        if isinstance(out, dict):
            out = out.get("logits" if part == "decoder" else "latent", next(iter(out.values())))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        if hasattr(out, "detach"):  # a torch tensor
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            return super().run(feed)

    def encode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._run("encoder", feed)

    def decode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._run("decoder", feed)
