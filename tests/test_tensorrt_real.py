"""The TensorRT path end to end on the real ``tensorrt`` and a CUDA GPU: ``lmae-export
--trt`` -> bundle -> ``lmae complete --backend tensorrt`` gives the ONNX Runtime backend's
labels exactly.  Skipped, saying why, where TensorRT or a GPU is missing (the same test on
the CPU double of TensorRT runs everywhere: ``tests/test_tensorrt_wiring.py``);
``benchmarks/gpu_check.sh`` runs it on a GPU machine."""
from __future__ import annotations

import pytest

from lmae_sdk import trt_engine
from test_tensorrt_wiring import export_then_complete, tiny_ckpt  # noqa: F401 - tiny_ckpt is a fixture


def _real_trt_reason() -> str | None:
    """None where the real TensorRT can run here, else why not."""
    try:
        trt_engine.import_tensorrt()
        from lmae_sdk.runtime.backends.trt_backend import device_memory

        device_memory()
    except trt_engine.TensorRTUnavailable as e:
        return str(e).split(". ")[0]
    return None


@pytest.mark.gpu
def test_real_tensorrt_export_then_complete_matches_onnxruntime(tiny_ckpt, tmp_path, monkeypatch):  # noqa: F811
    why = _real_trt_reason()
    if why:
        pytest.skip(f"real TensorRT cannot run here: {why}")
    monkeypatch.setenv("LMAE_TRT_CACHE", str(tmp_path / "trt_cache"))
    export_then_complete("real", tiny_ckpt, tmp_path)
