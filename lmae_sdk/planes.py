"""The model-size inputs: the normalized image, the class planes of a partial label (soft
labels when down-sampling) and the propagation prior's planes."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from .jit import numba_compiled
from .labels import IMAGENET_MEAN, IMAGENET_STD, LABEL_RESIZE_MODES, UNKNOWN
from .propagation import Propagation, propagate


def _normalize_loops(small: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """out[c, y, x] = table[c, small[y, x, c]]: a lookup, channel-first in one pass."""
    h, w = out.shape[1:]
    for c in range(3):
        for y in range(h):
            for x in range(w):
                out[c, y, x] = table[c, small[y, x, c]]


@functools.cache
def _compiled_normalize():
    return numba_compiled(_normalize_loops)


@functools.cache
def _normalize_table() -> np.ndarray:
    """(3, 256): every uint8 value of each channel through numpy's float32 normalization,
    so the lookup gives its bits exactly."""
    v = np.arange(256, dtype=np.uint8)[:, None].repeat(3, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(((v - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)).T)


def normalize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, h, w), bilinear resize, ImageNet normalization."""
    h, w = size
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    compiled = _compiled_normalize()
    if compiled is not None:  # a table lookup: ~6x faster than the five numpy passes below
        out = np.empty((3, h, w), np.float32)
        compiled(np.ascontiguousarray(small), _normalize_table(), out)
        return out
    x = (small.astype(np.float32) / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def one_hot(label: np.ndarray, num_classes: int, unknown: int = UNKNOWN) -> np.ndarray:
    """(H, W) ids -> (N, H, W) float32; unknown (and any id >= N) -> all zero."""
    if unknown < num_classes:
        raise ValueError("unknown index collides with a class id")
    return (label[None] == np.arange(num_classes, dtype=label.dtype)[:, None, None]).astype(np.float32)


def resize_planes(planes: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """(C, H, W) float32 -> (C, h, w), one 2-D resize per plane (no HWC transposes:
    about 6x faster than resizing 4-channel HWC chunks)."""
    h, w = size
    out = np.empty((planes.shape[0], h, w), np.float32)
    for c in range(planes.shape[0]):
        out[c] = cv2.resize(planes[c], (w, h), interpolation=interpolation)
    return out


def _area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA weights for a downscale src -> dst along one axis (its
    computeResizeAreaTab): (source index, destination index, weight) per entry; each
    destination's weights sum to 1."""
    scale = src / dst
    s_idx, d_idx, wts = [], [], []
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s1, s2 = int(np.ceil(f1)), int(np.floor(f2))
        s2 = min(s2, src - 1)
        s1 = min(s1, s2)
        if s1 - f1 > 1e-3:
            s_idx.append(s1 - 1), d_idx.append(d), wts.append((s1 - f1) / cell)
        for s in range(s1, s2):
            s_idx.append(s), d_idx.append(d), wts.append(1.0 / cell)
        if f2 - s2 > 1e-3:
            s_idx.append(s2), d_idx.append(d), wts.append(min(min(f2 - s2, 1.0), cell) / cell)
    return np.asarray(s_idx, np.int32), np.asarray(d_idx, np.int32), np.asarray(wts, np.float32)


def _area_one_hot_loops(ids: np.ndarray, n: int, ys: np.ndarray, yd: np.ndarray, yw: np.ndarray, xs: np.ndarray,
                        xd: np.ndarray, xw: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """out[c, dy, dx] += wy * wx for every (source pixel of class c, overlapping output
    cell): the area resize of the one-hot planes without building them."""
    for i in range(ys.shape[0]):
        row, dy, wy = ys[i], yd[i], yw[i]
        for j in range(xs.shape[0]):
            c = ids[row, xs[j]]
            if c < n:
                out[c, dy, xd[j]] += wy * xw[j]


@functools.cache
def _compiled_area_one_hot():
    return numba_compiled(_area_one_hot_loops)


@functools.cache
def _area_tables(src: tuple[int, int], dst: tuple[int, int]):
    return _area_table(src[0], dst[0]), _area_table(src[1], dst[1])


def area_one_hot(label: np.ndarray, num_classes: int, size: tuple[int, int], unknown: int = UNKNOWN,
                 out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) ids -> (N, h, w) float32 per-class area fractions: the same numbers as
    ``resize_planes(one_hot(label, N), size, cv2.INTER_AREA)`` (to float rounding).

    Compiled by numba, a downscale never builds the N full-size planes: ~10x faster than
    N OpenCV resizes (OpenCV's INTER_AREA takes at most 4 channels).  Without numba, or
    when a side grows, it is that per-plane OpenCV resize.  ``out``: a (N, h, w) float32
    array to write into (e.g. the first planes of a larger one), returned.
    """
    (h, w), (H, W) = size, label.shape
    compiled = _compiled_area_one_hot()
    if compiled is None or h > H or w > W:
        planes = resize_planes(one_hot(label, num_classes, unknown), size, cv2.INTER_AREA)
        if out is None:
            return planes
        out[:] = planes
        return out
    if unknown < num_classes:
        raise ValueError("unknown index collides with a class id")
    (ys, yd, yw), (xs, xd, xw) = _area_tables((H, W), (h, w))
    if out is None:
        out = np.zeros((num_classes, h, w), np.float32)
    else:
        out.fill(0)
    compiled(np.ascontiguousarray(label), num_classes, ys, yd, yw, xs, xd, xw, out)
    return out


def label_planes(label: np.ndarray, num_classes: int, size: tuple[int, int], mode: str = "soft",
                 unknown: int = UNKNOWN) -> np.ndarray:
    """(H, W) ids -> (N, h, w) float32 planes at model size; unknown pixels are all zero.

    soft: per-class area fractions (soft labelling for label down-sampling), so thin
    objects survive as partial mass; nearest: nearest-neighbour ids then one-hot.
    """
    if mode == "nearest":
        small = cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return one_hot(small, num_classes, unknown)
    if mode != "soft":
        raise ValueError(f"label resize mode must be one of {LABEL_RESIZE_MODES}")
    return area_one_hot(label, num_classes, size, unknown)


PATH_COST_MAX = 1e5  # geodesic costs above this read as "no path" in the path-cost plane


def prior_planes(label: np.ndarray, num_classes: int, size: tuple[int, int], unknown: int = UNKNOWN,
                 distance_scale: float = 8.0, image: np.ndarray | None = None, mode: str = "euclidean",
                 propagated: Propagation | None = None, path_cost_plane: bool = False) -> np.ndarray:
    """(N + 1 [+ 1], h, w): propagated-label planes (area-resized), a distance plane and,
    with ``path_cost_plane``, a geodesic path-cost plane.

    Propagation as :func:`propagate` (``mode``, ``image``, its default step costs), or
    ``propagated`` when the caller already has it (``pipeline.propagate_for`` uses the
    model's step costs).  The distance plane is 1 - exp(-d / distance_scale), d the
    Euclidean distance to the nearest known pixel in model pixels: 0 on known pixels,
    towards 1 far inside a hole, so the model knows how far to trust the copy.  The
    path-cost plane is log1p(cost) / log1p(PATH_COST_MAX), clipped to [0, 1]: near 1 where
    the copied label had to cross strong image edges (a hidden object, not more of the same
    surface), so the model knows where to trust the image over the copy.
    """
    if propagated is None:
        propagated = propagate(label, image, mode, unknown)
    nearest, dist = propagated.ids, propagated.distance
    h, w = size
    out = np.empty((num_classes + 1 + int(path_cost_plane), h, w), np.float32)
    area_one_hot(nearest, num_classes, size, unknown, out=out[:num_classes])
    dfeat = 1.0 - np.exp(-np.minimum(dist * (h / label.shape[0]), 1e4) / distance_scale)
    out[num_classes] = cv2.resize(dfeat.astype(np.float32, copy=False), (w, h), interpolation=cv2.INTER_AREA)
    if path_cost_plane:
        if propagated.path_cost is None:
            raise ValueError("the path-cost plane needs geodesic propagation")
        cost = np.log1p(np.minimum(propagated.path_cost, PATH_COST_MAX)) * np.float32(1 / np.log1p(PATH_COST_MAX))
        out[num_classes + 1] = cv2.resize(cost.astype(np.float32, copy=False), (w, h), interpolation=cv2.INTER_AREA)
    return out
