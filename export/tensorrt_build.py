"""ONNX -> TensorRT 10 engine, and a tiny engine runner.  Isolated: nothing else in
lmae_sdk imports ``tensorrt``; call :func:`require_tensorrt` first for a clear error.

Build: ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in
TensorRT 10) -> ``OnnxParser`` -> builder config with a workspace limit, optional FP16
(normalization layers pinned to FP32 with ``OBEY_PRECISION_CONSTRAINTS``), one
optimization profile over the batch axis only for every input, a timing cache file
keyed by GPU name + TensorRT version -> ``build_serialized_network``.  A JSON file
with the engine's metadata is written next to it (``<engine>.json``).

Run: :class:`TrtEngine` (``execute_async_v3`` with ``set_input_shape`` /
``set_tensor_address``; buffers are torch CUDA tensors).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = ("TensorRT export needs NVIDIA TensorRT 10 and a CUDA GPU: install a CUDA build of torch and "
                "`pip install lmae-sdk[trt]` (the `tensorrt` wheels come from NVIDIA's index, "
                "https://pypi.nvidia.com), on a machine with an NVIDIA GPU and driver.")


class TensorRTUnavailable(RuntimeError):
    pass


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise with what to install."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except Exception as e:  # ImportError, or a broken install raising OSError
        raise TensorRTUnavailable(f"TensorRT is not available (import tensorrt failed: {e}). {INSTALL_HINT}") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found; lmae-sdk needs TensorRT 10. {INSTALL_HINT}")
    try:
        import torch  # noqa: PLC0415
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        raise TensorRTUnavailable(f"no CUDA GPU visible to torch (torch.cuda.is_available() is False). {INSTALL_HINT}")
    return trt


def gpu_name() -> str | None:
    try:
        import torch  # noqa: PLC0415
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def timing_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    trt = require_tensorrt()
    root = Path(cache_dir or os.environ.get("LMAE_TRT_CACHE", Path.home() / ".cache" / "lmae-sdk" / "trt"))
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{gpu_name() or 'gpu'}_trt{trt.__version__}")
    return root / f"timing_{key}.cache"


_NORM_LAYER_TYPES = ("NORMALIZATION",)  # trt.LayerType.NORMALIZATION: LayerNorm / GroupNorm / InstanceNorm


def _pin_norms_fp32(trt, network) -> int:
    """Keep normalization layers (and their reductions, if decomposed) in FP32."""
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        is_norm = layer.type == getattr(trt.LayerType, "NORMALIZATION", None)
        if not is_norm and "norm" not in (layer.name or "").lower():
            continue
        if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        n += 1
    return n


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = False,
                 max_batch: int = 32, opt_batch: int | None = None, workspace_gb: float = 4.0,
                 cache_dir: str | os.PathLike | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build and write a serialized engine; returns its metadata (also written as JSON)."""
    trt = require_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"{onnx_path.name}: TensorRT cannot parse the ONNX graph: {'; '.join(errs)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    pinned = 0
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_norms_fp32(trt, network)
    opt = max(1, min(opt_batch or max(1, max_batch // 2), max_batch))
    profile = builder.create_optimization_profile()
    inputs = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise RuntimeError(f"{onnx_path.name}: input {t.name} has a dynamic non-batch axis {shape}")
        profile.set_shape(t.name, [1] + shape[1:], [opt] + shape[1:], [max_batch] + shape[1:])
        inputs.append({"name": t.name, "shape": shape, "dtype": str(t.dtype)})
    config.add_optimization_profile(profile)
    cache_file = timing_cache_path(cache_dir)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.time()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"{onnx_path.name}: TensorRT engine build failed (see the TensorRT log above)")
    build_s = time.time() - t0
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(memoryview(blob))
    meta = {
        "onnx": onnx_path.name, "engine": engine_path.name, "tensorrt": trt.__version__, "gpu": gpu_name(),
        "precision": "fp16" if fp16 else "fp32", "fp32_pinned_layers": pinned, "max_batch": max_batch,
        "opt_batch": opt, "workspace_gb": workspace_gb, "inputs": inputs,
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "timing_cache": str(cache_file), "build_seconds": round(build_s, 2), **(metadata or {}),
    }
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


class TrtEngine:
    """Deserialize an engine and run it on numpy feeds (one CUDA stream)."""

    def __init__(self, path: str | os.PathLike) -> None:
        trt = require_tensorrt()
        import torch  # noqa: PLC0415
        self._trt, self._torch = trt, torch
        self.path = Path(path)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{self.path}: cannot deserialize the engine (built for another TensorRT / GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_names[0], 0)[2][0])

    def _torch_dtype(self, name: str):
        trt, torch = self._trt, self._torch
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                trt.int64: torch.int64, trt.bool: torch.bool, trt.int8: torch.int8}[self.engine.get_tensor_dtype(name)]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {missing}")
        b = int(next(iter(feed.values())).shape[0])
        if b > self.max_batch:
            raise ValueError(f"{self.path.name}: batch {b} exceeds the engine's max batch {self.max_batch}")
        keep = []
        with torch.cuda.stream(self.stream):
            for n in self.input_names:
                t = torch.from_numpy(np.ascontiguousarray(feed[n])).to("cuda", self._torch_dtype(n),
                                                                        non_blocking=False).contiguous()
                keep.append(t)
                self.context.set_input_shape(n, tuple(t.shape))
                self.context.set_tensor_address(n, t.data_ptr())
            outs = {}
            for n in self.output_names:
                shape = tuple(self.context.get_tensor_shape(n))
                o = torch.empty(shape, dtype=self._torch_dtype(n), device="cuda")
                outs[n] = o
                self.context.set_tensor_address(n, o.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.path.name}: execute_async_v3 failed")
        self.stream.synchronize()
        return {n: o.float().cpu().numpy() if o.dtype == torch.float16 else o.cpu().numpy() for n, o in outs.items()}
