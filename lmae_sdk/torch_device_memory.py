"""Device memory for the TensorRT engine runner from torch's CUDA allocator: the fallback
where cuda-python is not installed but a CUDA build of torch is (torch layer; the runtime
imports it only inside a function, when TensorRT asks for it)."""
from __future__ import annotations

import numpy as np
import torch

from .trt_engine import DeviceMemory, TensorRTUnavailable


class TorchDeviceMemory(DeviceMemory):
    """Buffers are uint8 CUDA tensors (kept alive here by pointer); streams are
    ``torch.cuda.Stream`` objects (kept by handle)."""

    name = "torch"

    def __init__(self, device: int = 0) -> None:
        if not torch.cuda.is_available():
            raise TensorRTUnavailable(f"torch {torch.__version__} sees no CUDA device")
        self.device = torch.device("cuda", device)
        self._tensors: dict[int, torch.Tensor] = {}
        self._streams: dict[int, torch.cuda.Stream] = {}

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def alloc(self, nbytes: int) -> int:
        t = torch.empty(int(nbytes), dtype=torch.uint8, device=self.device)
        self._tensors[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr: int) -> None:
        self._tensors.pop(int(ptr), None)

    def new_stream(self) -> int:
        s = torch.cuda.Stream(device=self.device)
        self._streams[s.cuda_stream] = s
        return s.cuda_stream

    def _bytes(self, host: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(host.reshape(-1).view(np.uint8))

    def to_device(self, ptr: int, host: np.ndarray, stream: int) -> None:
        with torch.cuda.stream(self._streams[stream]):
            self._tensors[ptr][: host.nbytes].copy_(self._bytes(host))

    def to_host(self, host: np.ndarray, ptr: int, stream: int) -> None:
        with torch.cuda.stream(self._streams[stream]):
            self._bytes(host).copy_(self._tensors[ptr][: host.nbytes])

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()
