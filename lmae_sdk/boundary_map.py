"""Class-boundary maps on the host, without torch: the boundary net's input, its
spec, and its map brought back to the image (the net itself is in :mod:`lmae_sdk.boundaries`).

A map is (2, H, W) float32: the probability that a pixel's right / lower neighbour has
another class.  The geodesic step cost reads it (:mod:`lmae_sdk.labels`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .labels import UNKNOWN
from .planes import normalize_image

BOUNDARY_FORMAT_VERSIONS = (1, 2)  # 2: flip_average


class BoundaryError(ValueError):
    pass


def boundary_targets(label: np.ndarray, unknown: int = UNKNOWN) -> np.ndarray:
    """(2, H, W) float32: 1 where the right / lower neighbour has another class, 0 where it
    has the same, -1 (ignore) where either is unknown or off the image."""
    t = np.full((2,) + label.shape, -1, np.float32)
    ok = (label[:, 1:] != unknown) & (label[:, :-1] != unknown)
    t[0, :, :-1] = np.where(ok, label[:, 1:] != label[:, :-1], -1)
    ok = (label[1:] != unknown) & (label[:-1] != unknown)
    t[1, :-1] = np.where(ok, label[1:] != label[:-1], -1)
    return t


def flip_boundaries(boundary: np.ndarray) -> np.ndarray:
    """The map of the left-right flipped image: the right-neighbour plane moves by one
    pixel (pixel x's right neighbour becomes its left one); the lower plane just flips."""
    out = boundary[:, :, ::-1].copy()
    out[0, :, :-1] = out[0, :, 1:]
    out[0, :, -1] = 0
    return out


@dataclass
class BoundarySpec:
    """What the runtime needs besides the weights: the net's static input size and whether
    the map averages the image with its mirror image (:func:`boundary_probabilities`)."""

    width: int
    size: tuple[int, int]  # (h, w) the net runs at; images are resized to it and the map back
    flip_average: bool = False

    def to_dict(self) -> dict[str, Any]:
        # version 2 only where it matters: an SDK that reads version 1 still reads plain nets
        d = {"version": 2 if self.flip_average else 1, "width": self.width, "size": list(self.size)}
        return {**d, "flip_average": True} if self.flip_average else d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> "BoundarySpec":
        if d.get("version") not in BOUNDARY_FORMAT_VERSIONS:
            raise BoundaryError(f"{source}: boundary net version {d.get('version')!r} is not supported "
                                f"(this lmae-sdk reads versions {list(BOUNDARY_FORMAT_VERSIONS)})")
        size = tuple(int(v) for v in d["size"])
        if len(size) != 2 or size[0] % 2 or size[1] % 2:
            raise BoundaryError(f"{source}: boundary net size {list(size)} must be two even numbers")
        return cls(int(d["width"]), size, bool(d.get("flip_average", False)))  # type: ignore[arg-type]


def boundary_input(image: np.ndarray, spec: BoundarySpec) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> the net's input (3, h, w) float32."""
    return normalize_image(image, spec.size)


def boundary_to_image(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(2, h, w) probabilities at the net's size -> (2, H, W) float32 at the image's."""
    if prob.shape[1:] == tuple(shape):
        return np.ascontiguousarray(prob, np.float32)
    h, w = shape
    return np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in prob.astype(np.float32)])
