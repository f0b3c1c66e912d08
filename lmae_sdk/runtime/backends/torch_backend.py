"""PyTorch backend: a ``.pt`` checkpoint run in eager mode (CPU or CUDA)."""
from __future__ import annotations

import numpy as np

from .base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, mask_ratio: float, num_visible: int, input_names: dict[str, list[str]],
                 device: str = "cpu", threads: int = 0) -> None:
        import torch

        super().__init__(mask_ratio, num_visible, input_names)
        if threads:
            torch.set_num_threads(int(threads))
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
