"""Pieces the one-off experiment scripts share."""
from __future__ import annotations

import numpy as np
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
