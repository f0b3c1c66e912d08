"""Runtimes behind one interface: torch (.pt), ONNX Runtime (CPU/CUDA), TensorRT."""
from .base import Backend, BackendError, Engine
from .ort_backend import OrtBackend, OrtBoundaries, OrtFusionScorer, ort_available, ort_cuda_available
from .torch_backend import TorchBackend, set_torch_threads
from .trt_backend import TrtBackend, TrtBoundaries, TrtFusionScorer, trt_available

# what LMAECompleter.load and lmae complete --backend accept
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")

__all__ = ["Backend", "BackendError", "BACKENDS", "Engine", "OrtBackend", "OrtBoundaries", "OrtFusionScorer",
           "TorchBackend", "TrtBackend", "TrtBoundaries", "TrtFusionScorer", "ort_available", "ort_cuda_available",
           "set_torch_threads", "trt_available"]
