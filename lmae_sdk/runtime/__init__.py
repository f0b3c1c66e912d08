"""Inference runtime: ``LMAECompleter`` over torch / ONNX Runtime / TensorRT backends.

``keep_freed_memory()``: an opt-in, process-wide glibc malloc setting that makes batch
completion faster (``lmae complete`` applies it to its own process; the library never does).
"""
from .allocator import keep_freed_memory
from .completer import CompletionResult, LMAECompleter

__all__ = ["CompletionResult", "LMAECompleter", "keep_freed_memory"]
