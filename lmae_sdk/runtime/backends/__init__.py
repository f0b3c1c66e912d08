"""Runtimes behind one interface: torch (.pt), ONNX Runtime (CPU/CUDA), TensorRT."""
from .base import Backend, BackendError, Engine
from .ort_backend import OrtBackend, OrtBoundaries, ort_available, ort_cuda_available
from .torch_backend import TorchBackend
from .trt_backend import TrtBackend, trt_available

# what LMAECompleter.load and lmae complete --backend accept
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")

__all__ = ["Backend", "BackendError", "BACKENDS", "Engine", "OrtBackend", "OrtBoundaries", "TorchBackend",
           "TrtBackend", "ort_available", "ort_cuda_available", "trt_available"]
