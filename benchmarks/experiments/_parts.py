"""Pieces the one-off experiment scripts share."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def cbr(i: int, o: int) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


def random_crop(pair: tuple[np.ndarray, np.ndarray], crop: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A random crop x crop window of (image, label), flipped left-right half the time."""
    img, lab = pair
    y, x = rng.integers(0, lab.shape[0] - crop + 1), rng.integers(0, lab.shape[1] - crop + 1)
    img, lab = img[y:y + crop, x:x + crop], lab[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


class UNet4(nn.Module):
    """A 4-level UNet at input resolution (widths w, 2w, 3w, 4w), logits (B, out, H, W)."""

    def __init__(self, inputs: int, outputs: int, w: int) -> None:
        super().__init__()
        self.e1 = nn.Sequential(cbr(inputs, w), cbr(w, w))
        self.e2 = nn.Sequential(cbr(w, 2 * w), cbr(2 * w, 2 * w))
        self.e3 = nn.Sequential(cbr(2 * w, 3 * w), cbr(3 * w, 3 * w))
        self.e4 = nn.Sequential(cbr(3 * w, 4 * w), cbr(4 * w, 4 * w))
        self.d3, self.d2 = cbr(7 * w, 3 * w), cbr(5 * w, 2 * w)
        self.d1 = nn.Sequential(cbr(3 * w, w), nn.Conv2d(w, outputs, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def up(a, b):
            return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)

        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        e4 = self.e4(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([up(e4, e3), e3], 1))
        d2 = self.d2(torch.cat([up(d3, e2), e2], 1))
        return self.d1(torch.cat([up(d2, e1), e1], 1))
