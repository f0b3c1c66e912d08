"""TensorRT backend: serialized ``*.engine`` files from ``lmae-export --trt``.

Each graph runs on :class:`lmae_sdk.trt_engine.TrtEngine` (``run(feed) -> outputs by
name``).  ``tensorrt`` is imported when a backend is built; without it, or without a CUDA
device, construction fails with a clear :class:`BackendError` and ``auto`` never picks
this backend.  Device buffers come from cuda-python, else from torch's CUDA allocator
when torch is installed (imported only then).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ... import trt_engine
from ...boundary_map import BoundarySpec, boundary_input, boundary_to_image
from .base import Backend, BackendError

# the graph contract's output of each part (export/graphs.py: output_names)
OUTPUTS = {"encoder": "latent", "decoder": "logits"}


def _torch_device_memory() -> trt_engine.DeviceMemory:
    try:
        from ...torch_device_memory import TorchDeviceMemory
    except ImportError as e:
        raise trt_engine.TensorRTUnavailable(f"neither cuda-python nor torch is installed ({e})") from None
    return TorchDeviceMemory()


def device_memory() -> trt_engine.DeviceMemory:
    """Device buffers for the engines: cuda-python, else torch CUDA."""
    return trt_engine.device_memory(fallback=_torch_device_memory)


def trt_available() -> bool:
    """TensorRT 10 imports and a CUDA device is visible (cuda-python, else torch)."""
    try:
        trt_engine.import_tensorrt()
        device_memory()
    except Exception:  # noqa: BLE001 - TensorRTUnavailable, or a broken CUDA install
        return False
    return True


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, encoder: str | os.PathLike, decoder: str | os.PathLike, mask_ratio: float, num_visible: int,
                 input_names: dict[str, list[str]], precision: str = "fp16") -> None:
        super().__init__(mask_ratio, num_visible, input_names)
        self.precision = precision
        try:
            trt = trt_engine.import_tensorrt()
            memory = device_memory()
            self.engines = {part: trt_engine.TrtEngine(Path(path), memory, trt)
                            for part, path in (("encoder", encoder), ("decoder", decoder))}
        except (trt_engine.TensorRTUnavailable, trt_engine.TrtEngineError) as e:
            raise BackendError(str(e)) from None
        for part, eng in self.engines.items():
            if set(eng.input_names) != set(self.input_names[part]):
                raise BackendError(f"{eng.path.name}: engine inputs {sorted(eng.input_names)} differ from the "
                                   f"manifest's {sorted(self.input_names[part])}")
            if OUTPUTS[part] not in eng.output_names:
                raise BackendError(f"{eng.path.name}: the engine has no output {OUTPUTS[part]!r} "
                                   f"(outputs {eng.output_names})")
        self.max_batch = min(eng.max_batch for eng in self.engines.values())
        self.device_memory = memory.name
        # one execution context and one set of device buffers per engine: calls from the
        # completer's lanes take turns
        self._lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        return ["TensorRT"]

    def _run(self, part: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self.engines[part].run(self.select(part, feed))[OUTPUTS[part]]
        return out.astype(np.float32, copy=False)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Encoder then decoder, in calls of at most the engines' max batch (their profile)."""
        n = len(feed["ids_keep"])
        with self._lock:
            if n <= self.max_batch:
                return super().run(feed)
            step = self.max_batch
            return np.concatenate([super(TrtBackend, self).run(
                {k: (v[s: s + step] if v is not None else None) for k, v in feed.items()})
                for s in range(0, n, step)])

    def encode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._run("encoder", feed)

    def decode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._run("decoder", feed)


class _TrtGraph:
    """One auxiliary graph's engine (boundary net, fusion scoring): calls take turns."""

    def __init__(self, path: str | os.PathLike, inputs: list[str]) -> None:
        try:
            self.engine = trt_engine.TrtEngine(Path(path), device_memory(), trt_engine.import_tensorrt())
        except (trt_engine.TensorRTUnavailable, trt_engine.TrtEngineError) as e:
            raise BackendError(str(e)) from None
        if sorted(self.engine.input_names) != sorted(inputs):
            raise BackendError(f"{Path(path).name}: engine inputs {sorted(self.engine.input_names)}; expected "
                               f"{sorted(inputs)}")
        self._lock = threading.Lock()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self.engine.run(feed)


class TrtBoundaries(_TrtGraph):
    """A bundle's boundary engine: RGB uint8 (H, W, 3) -> (2, H, W) map (as ``OrtBoundaries``)."""

    def __init__(self, path: str | os.PathLike, spec: BoundarySpec) -> None:
        super().__init__(path, ["image"])
        self.spec = spec

    def __call__(self, image: np.ndarray) -> np.ndarray:
        prob = self.run({"image": boundary_input(image, self.spec)[None]})["boundary"][0]
        return boundary_to_image(prob, image.shape[:2])


class TrtFusionScorer(_TrtGraph):
    """A bundle's fusion engine: pixel fusion's candidate rows -> scores (a
    :class:`lmae_sdk.fusion_rows.RowScorer`), in calls of at most its profile's rows."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, ["features", "classes"])

    def __call__(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        out = np.empty(len(features), np.float32)
        step = self.engine.max_batch
        for s in range(0, len(features), step):
            out[s: s + step] = self.run({"features": features[s: s + step], "classes": classes[s: s + step]})["scores"]
        return out
