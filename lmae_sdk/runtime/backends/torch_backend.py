"""PyTorch backend: a ``.pt`` checkpoint run in eager mode (CPU or CUDA).

Threads: torch's intra-op thread count is process-wide state that belongs to the program,
so the backend never sets it: the graphs run on whatever the process has
(``torch.set_num_threads``, ``OMP_NUM_THREADS``).  A program that wants a count for its own
process calls :func:`set_torch_threads` (``lmae complete`` does, with ``--threads``).
"""
from __future__ import annotations

import numpy as np

from .base import Backend


def set_torch_threads(threads: int) -> int:
    """Set torch's process-wide intra-op thread count to ``threads`` (>= 1) and return the
    count it had: for a program's own process, never called by the library."""
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


class TorchBackend(Backend):
    """Runs on torch's process-wide thread count, which the caller controls (see the module)."""

    name = "torch"

    def __init__(self, model, mask_ratio: float, num_visible: int, input_names: dict[str, list[str]],
                 device: str = "cpu") -> None:
        import torch

        super().__init__(mask_ratio, num_visible, input_names)
        if device.startswith("cuda") and not torch.cuda.is_available():
            from .base import BackendError

            raise BackendError("torch backend: CUDA was asked for but torch sees no GPU")
        self.device = device
        self.model = model.to(device).eval()  # several engines share one model object
        self._torch = torch

    @property
    def providers(self) -> list[str]:
        return [self.device]

    def _t(self, a: np.ndarray | None):
        return None if a is None else self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def encode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        f = self.select("encoder", feed)
        with self._torch.inference_mode():
            out = self.model.encode(self._t(f["image"]), self._t(f["label_planes"]), self._t(f["ids_keep"]),
                                    self._t(f.get("prior")))
        return out.float().cpu().numpy()

    def decode(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        f = self.select("decoder", feed)
        with self._torch.inference_mode():
            out = self.model.decode(self._t(f["latent"]), self._t(f["image"]), self._t(f["ids_mask"]),
                                    self._t(f["ids_restore"]), self._t(f.get("label_planes")),
                                    self._t(f.get("prior")))
        return out.float().cpu().numpy()
