"""ONNX -> TensorRT 10 engine (building only; :class:`lmae_sdk.trt_engine.TrtEngine` runs
engines).  Nothing else in the export imports ``tensorrt``; call :func:`require_tensorrt`
first for a clear error.

Build: ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in
TensorRT 10) -> ``OnnxParser`` -> builder config with a workspace limit, optional FP16
(normalization layers pinned to FP32 with ``OBEY_PRECISION_CONSTRAINTS``), one
optimization profile over the batch axis only for every input, a timing cache file
keyed by GPU name + TensorRT version -> ``build_serialized_network``.  A JSON file
with the engine's metadata is written next to it (``<engine>.json``).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from lmae_sdk import trt_engine
from lmae_sdk.trt_engine import INSTALL_HINT, DeviceMemory, TensorRTUnavailable, import_tensorrt

from .onnx_export import ExportError

__all__ = ["INSTALL_HINT", "TensorRTUnavailable", "build_engine", "engine_device_memory", "gpu_name",
           "require_tensorrt", "timing_cache_path"]


def engine_device_memory() -> DeviceMemory:
    """Device buffers for running engines here: cuda-python, else torch's CUDA allocator."""
    from lmae_sdk.torch_device_memory import TorchDeviceMemory  # noqa: PLC0415

    return trt_engine.device_memory(fallback=TorchDeviceMemory)  # looked up now: a test may inject another


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise :class:`TensorRTUnavailable`
    saying what to install (TensorRT 10, a visible CUDA GPU)."""
    trt = import_tensorrt()
    try:
        engine_device_memory()
    except TensorRTUnavailable as e:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} imports, but no CUDA GPU is usable: {e}") from None
    return trt


def gpu_name() -> str | None:
    try:
        return engine_device_memory().device_name()
    except Exception:  # noqa: BLE001 - no GPU: the manifest records None
        return None


def timing_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    trt = require_tensorrt()
    root = Path(cache_dir or os.environ.get("LMAE_TRT_CACHE", Path.home() / ".cache" / "lmae-sdk" / "trt"))
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{gpu_name() or 'gpu'}_trt{trt.__version__}")
    return root / f"timing_{key}.cache"


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
        raise ExportError(f"{onnx_path.name}: TensorRT cannot parse the ONNX graph: {'; '.join(errs)}")
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
            raise ExportError(f"{onnx_path.name}: input {t.name} has a dynamic non-batch axis {shape}")
        profile.set_shape(t.name, [1] + shape[1:], [opt] + shape[1:], [max_batch] + shape[1:])
        inputs.append({"name": t.name, "shape": shape, "dtype": str(t.dtype)})
    config.add_optimization_profile(profile)
    cache_file = timing_cache_path(cache_dir)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.time()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError(f"{onnx_path.name}: TensorRT engine build failed (see the TensorRT log above)")
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

