"""Host memory standing in for GPU memory in the TensorRT test double (``tests/trt_double.py``).

Buffers are numpy arrays addressed by their raw pointers, so the engine runner's copies,
buffer sizes and addresses are exercised as on a GPU; an address outside a live allocation,
or a buffer smaller than the tensor, fails.
"""
from __future__ import annotations

import ctypes

import numpy as np

_LIVE: dict[int, np.ndarray] = {}  # address -> the buffer that owns it


def _check_range(address: int, nbytes: int) -> None:
    for start, buf in _LIVE.items():
        if start <= address and address + nbytes <= start + buf.nbytes:
            return
    raise RuntimeError(f"address {address:#x} (+{nbytes} bytes) is not inside a live device allocation")


def read_device(address: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    _check_range(address, nbytes)
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def write_device(address: int, value: np.ndarray) -> None:
    _check_range(address, value.nbytes)
    ctypes.memmove(address, value.ctypes.data, value.nbytes)


class HostMemory:
    """:class:`lmae_sdk.trt_engine.DeviceMemory` on host buffers (one fake stream)."""

    name = "host (trt-double)"
    device_name_text = "trt-double (host memory)"

    def device_name(self) -> str:
        return self.device_name_text

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(max(1, int(nbytes)), np.uint8)
        _LIVE[buf.ctypes.data] = buf
        return buf.ctypes.data

    def free(self, ptr: int) -> None:
        if _LIVE.pop(int(ptr), None) is None:
            raise RuntimeError(f"free of {ptr:#x}: not allocated")

    def new_stream(self) -> int:
        return 1

    def to_device(self, ptr: int, host: np.ndarray, stream: int) -> None:
        write_device(ptr, np.ascontiguousarray(host))

    def to_host(self, host: np.ndarray, ptr: int, stream: int) -> None:
        if not host.flags.c_contiguous:
            raise RuntimeError("to_host: the host array is not contiguous")
        _check_range(ptr, host.nbytes)
        ctypes.memmove(host.ctypes.data, ptr, host.nbytes)

    def synchronize(self, stream: int) -> None:
        pass


def live_allocations() -> int:
    return len(_LIVE)
