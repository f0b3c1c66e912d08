"""Export: L-MAE checkpoints -> ONNX graphs / TensorRT engines in a model bundle.

Names are imported lazily: importing the package (e.g. for ``lmae-export``'s entry point)
needs neither torch nor onnx, and nothing here imports ``tensorrt`` until asked.  Engines
run on :class:`lmae_sdk.trt_engine.TrtEngine`.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_bundle": "api", "ExportOptions": "api", "engine_name": "api", "file_name": "api",
    "EncoderGraph": "graphs", "DecoderGraph": "graphs", "encoder_input_names": "graphs",
    "decoder_input_names": "graphs",
    "export_onnx": "onnx_export", "ExportError": "onnx_export",
    "check_trt_readiness": "readiness", "ReadinessReport": "readiness",
    "require_tensorrt": "tensorrt_build", "TensorRTUnavailable": "tensorrt_build",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
