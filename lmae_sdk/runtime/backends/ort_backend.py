"""ONNX Runtime backend: CPU execution provider, CUDA when onnxruntime-gpu sees a GPU."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...boundary_map import BoundarySpec, boundary_input, boundary_to_image
from ...cores import usable_cores
from ...fusion_rows import CPU_ROWS_PER_CALL
from .base import Backend, BackendError

log = logging.getLogger("lmae_sdk.runtime")

# Images per session call on CPU: a batch runs one image at a time, so that the decoder's
# full-resolution maps (~4 MB per map and image at 224x288) stay in cache; 16 images per call
# stream them through memory, and two lanes side by side then contend for it (engine 1.47x
# faster in two lanes: benchmarks/HISTORY.md).  It also spares the
# completer stacking its per-image inputs (``run_images``).  On a GPU a batch is one call.
CPU_IMAGES_PER_CALL = 1


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def ort_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except Exception:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def ort_session(path: str | os.PathLike, device: str = "cpu", threads: int = 0):
    """An InferenceSession on CPU, or CUDA (checked: the GPU wheel falls back to CPU silently)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("onnxruntime is not installed: pip install 'lmae-sdk[cpu]' "
                           "(or [gpu] for onnxruntime-gpu)") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else usable_cores()
    opts.inter_op_num_threads = 1
    # idle intra-op threads sleep instead of spinning: in complete_batch the pre/post
    # workers share the cores with the engine, and spinning threads starve them
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    want = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("onnxruntime: CUDA asked for but this onnxruntime has no CUDAExecutionProvider "
                               "(install onnxruntime-gpu)")
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        want = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(Path(path)), sess_options=opts, providers=want)
    got = sess.get_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in got:
        raise BackendError(f"onnxruntime: CUDAExecutionProvider failed to load for {Path(path).name} "
                           f"(session runs on {got}); check the CUDA/cuDNN libraries")
    return sess


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, encoder: str | os.PathLike, decoder: str | os.PathLike, mask_ratio: float, num_visible: int,
                 input_names: dict[str, list[str]], device: str = "cpu", threads: int = 0,
                 precision: str = "fp32", images_per_call: int | None = None) -> None:
        """``images_per_call``: a batch runs in calls of this many images (default
        ``CPU_IMAGES_PER_CALL`` on CPU; 0 = the whole batch in one call, the default on CUDA)."""
        super().__init__(mask_ratio, num_visible, input_names)
        self.precision = precision
        if images_per_call is None:
            images_per_call = 0 if device.startswith("cuda") else CPU_IMAGES_PER_CALL
        self.images_per_call = int(images_per_call)
        self.sessions = {}
        for part, path in (("encoder", encoder), ("decoder", decoder)):
            sess = ort_session(path, device, threads)
            names = {i.name for i in sess.get_inputs()}
            if set(self.input_names[part]) != names:
                raise BackendError(f"{Path(path).name}: graph inputs {sorted(names)} differ from the manifest's "
                                   f"{sorted(self.input_names[part])}")
            self.sessions[part] = sess
        self.device = device
        self._dtypes = {part: {i.name: i.type for i in s.get_inputs()} for part, s in self.sessions.items()}

    @property
    def providers(self) -> list[str]:
        return list(self.sessions["encoder"].get_providers())

    def _feed(self, part: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.select(part, feed).items():
            t = self._dtypes[part][k]
            if t == "tensor(float16)":
                v = v.astype(np.float16)
            elif t == "tensor(float)":
                v = v.astype(np.float32, copy=False)
            elif t == "tensor(int64)":
                v = v.astype(np.int64, copy=False)
            out[k] = np.ascontiguousarray(v)
        return out

    def encode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions["encoder"].run(None, self._feed("encoder", feed))[0]

    def decode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions["decoder"].run(None, self._feed("decoder", feed))[0].astype(np.float32, copy=False)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if not self.images_per_call or len(feed["ids_keep"]) <= self.images_per_call:
            return super().run(feed)
        return np.stack(self.run_images(feed))

    def run_images(self, feed: dict[str, Any]) -> list[np.ndarray]:
        step = self.images_per_call
        if not step:
            return super().run_images(feed)
        out: list[np.ndarray] = []
        for s in range(0, len(feed["ids_keep"]), step):
            part = {k: _batch_of(v[s: s + step]) for k, v in feed.items() if v is not None}
            out.extend(super().run(part))
        return out


def _batch_of(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """A (b, ...) batch from a batch slice or a list of per-image arrays (one image: a view)."""
    if not isinstance(images, list):
        return images
    return images[0][None] if len(images) == 1 else np.stack(images)


class OrtBoundaries:
    """A bundle's boundary graph on ONNX Runtime: RGB uint8 (H, W, 3) -> (2, H, W) map.

    One intra-op thread by default: the pre-processing workers call it side by side."""

    def __init__(self, path: str | os.PathLike, spec: BoundarySpec, device: str = "cpu", threads: int = 1) -> None:
        self.spec = spec
        self.session = ort_session(path, device, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["image"]:
            raise BackendError(f"{Path(path).name}: boundary graph inputs {names}; expected ['image']")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        prob = self.session.run(None, {"image": boundary_input(image, self.spec)[None]})[0][0]
        return boundary_to_image(prob, image.shape[:2])


class OrtFusionScorer:
    """A bundle's fusion graph on ONNX Runtime: pixel fusion's candidate rows -> scores (a
    :class:`lmae_sdk.fusion_rows.RowScorer`).  On a CPU the rows go in cache-sized calls
    (``CPU_ROWS_PER_CALL``), on CUDA in one call.  One intra-op thread by default: the
    completer's lanes call it side by side."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 1) -> None:
        self.session = ort_session(path, device, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["features", "classes"]:
            raise BackendError(f"{Path(path).name}: fusion graph inputs {names}; expected ['features', 'classes']")
        self.rows_per_call = 0 if device.startswith("cuda") else CPU_ROWS_PER_CALL

    def __call__(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        out = np.empty(len(features), np.float32)
        step = self.rows_per_call or max(len(features), 1)
        for s in range(0, len(features), step):
            out[s: s + step] = self.session.run(None, {"features": features[s: s + step],
                                                       "classes": classes[s: s + step]})[0]
        return out
