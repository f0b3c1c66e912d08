"""Inference runtime: ``LMAECompleter`` over torch / ONNX Runtime / TensorRT backends."""
from .completer import CompletionResult, LMAECompleter

__all__ = ["CompletionResult", "LMAECompleter"]
