"""Run a serialized TensorRT 10 engine on numpy arrays: the one engine runner.

Both the runtime's TensorRT backend and the export's parity check use :class:`TrtEngine`.
Nothing here imports ``tensorrt`` or a CUDA library at import time, and nothing needs
torch: device buffers come from a :class:`DeviceMemory`, which :func:`device_memory`
picks: ``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` in older
releases) when it sees a CUDA device, else the caller's fallback (the runtime and the
export pass torch's CUDA allocator, :mod:`lmae_sdk.torch_device_memory`), else a clear
:class:`TensorRTUnavailable`.

Run: inputs are copied into device buffers (grown on demand, reused across calls),
``set_input_shape`` / ``set_tensor_address`` for every I/O tensor, ``execute_async_v3``
on the runner's stream, outputs copied back, one stream synchronization.  One runner
holds one execution context: calls from several threads must take turns.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

INSTALL_HINT = ("TensorRT needs NVIDIA TensorRT 10 and a CUDA GPU: `pip install lmae-sdk[trt]` (the `tensorrt` "
                "wheels come from NVIDIA's index, https://pypi.nvidia.com, and cuda-python allocates the GPU "
                "buffers), on a machine with an NVIDIA GPU and driver.")


class TensorRTUnavailable(RuntimeError):
    """TensorRT, or a CUDA device to run it on, is missing here."""


class TrtEngineError(RuntimeError):
    """An engine file that cannot be loaded or run (names the file)."""


def import_tensorrt():
    """The ``tensorrt`` module (version 10 or later), or :class:`TensorRTUnavailable`."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except Exception as e:  # ImportError, or a broken install raising OSError
        raise TensorRTUnavailable(f"TensorRT is not available (import tensorrt failed: {e}). {INSTALL_HINT}") from None
    version = str(getattr(trt, "__version__", "0"))
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"TensorRT {version} found; lmae-sdk needs TensorRT 10. {INSTALL_HINT}")
    return trt


# ------------------------------------------------------------------ device memory
class DeviceMemory:
    """Device buffers and one stream kind, addressed by integer pointers (what
    ``set_tensor_address`` and ``execute_async_v3`` take)."""

    name = "device memory"

    def device_name(self) -> str:
        raise NotImplementedError

    def alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, ptr: int) -> None:
        raise NotImplementedError

    def new_stream(self) -> int:
        raise NotImplementedError

    def to_device(self, ptr: int, host: np.ndarray, stream: int) -> None:
        """Copy the contiguous ``host`` array to ``ptr`` (enqueued on ``stream``)."""
        raise NotImplementedError

    def to_host(self, host: np.ndarray, ptr: int, stream: int) -> None:
        """Copy ``host.nbytes`` bytes from ``ptr`` into the contiguous ``host`` array."""
        raise NotImplementedError

    def synchronize(self, stream: int) -> None:
        raise NotImplementedError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415  (cuda-python >= 12.6)
    except ImportError:
        from cuda import cudart  # noqa: PLC0415  (older cuda-python)
    return cudart


class CudaRuntimeMemory(DeviceMemory):
    """The CUDA runtime through ``cuda-python``: ``cudaMalloc``, ``cudaMemcpyAsync``, streams."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            self._rt = _cudart()
        except ImportError as e:
            raise TensorRTUnavailable(f"cuda-python is not installed ({e})") from None
        count = self._call(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount", TensorRTUnavailable)
        if count < 1:
            raise TensorRTUnavailable("cuda-python sees no CUDA device")
        self.device = device
        self._call(self._rt.cudaSetDevice(device), f"cudaSetDevice({device})", TensorRTUnavailable)

    def _call(self, result, what: str, error: type[Exception] = TrtEngineError):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise error(f"{what} failed: {err}")
        return rest[0] if len(rest) == 1 else None

    def device_name(self) -> str:
        props = self._call(self._rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = props.name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\0").strip()

    def alloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(int(nbytes)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self._call(self._rt.cudaFree(ptr), "cudaFree")

    def new_stream(self) -> int:
        return int(self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate"))

    def to_device(self, ptr: int, host: np.ndarray, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def to_host(self, host: np.ndarray, ptr: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: int) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def device_memory(fallback: Callable[[], DeviceMemory] | None = None) -> DeviceMemory:
    """cuda-python's device memory, else ``fallback()``, else :class:`TensorRTUnavailable`
    saying what was tried."""
    tried = []
    try:
        return CudaRuntimeMemory()
    except TensorRTUnavailable as e:
        tried.append(str(e))
    if fallback is not None:
        try:
            return fallback()
        except TensorRTUnavailable as e:
            tried.append(str(e))
    raise TensorRTUnavailable(f"no CUDA device memory ({'; '.join(tried)}). {INSTALL_HINT}")


# ------------------------------------------------------------------ the runner
class TrtEngine:
    """A deserialized engine with one execution context, one stream and its device buffers.

    ``run(feed)`` takes every input by name (numpy, cast to the engine's dtype) and returns
    every output by name (float16 outputs as float32)."""

    def __init__(self, path: str | os.PathLike, memory: DeviceMemory, trt=None) -> None:
        trt = trt or import_tensorrt()
        self.path = Path(path)
        self.memory = memory
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        try:
            blob = self.path.read_bytes()
        except OSError as e:
            raise TrtEngineError(f"{self.path}: cannot read the engine: {e.strerror or e}") from None
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise TrtEngineError(f"{self.path}: cannot deserialize the engine (built by another TensorRT "
                                 f"version or for another GPU? rebuild it with lmae-export --trt)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_names[0], 0)[2][0])
        self.stream = memory.new_stream()

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self.memory.free(ptr)
                del self._buffers[name]
            ptr = self.memory.alloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {missing}")
        hosts = {n: np.ascontiguousarray(feed[n], dtype=self.dtypes[n]) for n in self.input_names}
        batches = {a.shape[0] if a.ndim else None for a in hosts.values()}
        if len(batches) != 1 or None in batches:
            raise ValueError(f"{self.path.name}: inputs disagree on the batch size: "
                             f"{ {n: a.shape for n, a in hosts.items()} }")
        b = batches.pop()
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"{self.path.name}: batch {b} is outside the engine's profile (1..{self.max_batch})")
        for n, a in hosts.items():
            if not self.context.set_input_shape(n, a.shape):
                raise ValueError(f"{self.path.name}: input {n} shape {a.shape} does not fit the engine "
                                 f"(profile {self.engine.get_tensor_profile_shape(n, 0)})")
            ptr = self._buffer(n, a.nbytes)
            self.memory.to_device(ptr, a, self.stream)
            self.context.set_tensor_address(n, ptr)
        outs = {}
        for n in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise TrtEngineError(f"{self.path.name}: output {n} has no static shape {shape} after the input shapes")
            outs[n] = np.empty(shape, self.dtypes[n])
            self.context.set_tensor_address(n, self._buffer(n, max(1, outs[n].nbytes)))
        if not self.context.execute_async_v3(self.stream):
            raise TrtEngineError(f"{self.path.name}: execute_async_v3 failed (see the TensorRT log)")
        for n, host in outs.items():
            self.memory.to_host(host, self._buffers[n][0], self.stream)
        self.memory.synchronize(self.stream)  # the inputs (hosts) stay referenced until here
        return {n: o.astype(np.float32) if o.dtype == np.float16 else o for n, o in outs.items()}

    def close(self) -> None:
        """Free the device buffers (the runner allocates them again on the next run)."""
        for ptr, _ in self._buffers.values():
            self.memory.free(ptr)
        self._buffers.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, CUDA context already gone
            pass
