"""Pieces the one-off experiment scripts share (the UNet is the SDK's, lmae_sdk.boundaries)."""
from __future__ import annotations

import numpy as np

from lmae_sdk.boundaries import UNet4

__all__ = ["UNet4", "random_crop"]


def random_crop(pair: tuple[np.ndarray, np.ndarray], crop: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A random crop x crop window of (image, label), flipped left-right half the time."""
    img, lab = pair
    y, x = rng.integers(0, lab.shape[0] - crop + 1), rng.integers(0, lab.shape[1] - crop + 1)
    img, lab = img[y:y + crop, x:x + crop], lab[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)
