"""What the unknown gaps of a partial label still say.

A row that runs from a known pixel of class A, through unknown pixels, to a known pixel of
class B crosses a class boundary in that gap, and its gap pixels are, but for a thin object
hidden there, of class A or B.  Read along rows and along columns, this is what a label
with holes along its class boundaries (coarse polygons, ``bands`` holes) tells about the
pixels it leaves out: :func:`gap_bags` for the boundary net, :func:`gap_ends` for the model.
"""
from __future__ import annotations

import numpy as np

from lmae_sdk.labels import UNKNOWN


def _row_gap_ends(label: np.ndarray, unknown: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int64 each: the column of the last known pixel at or before x and of the first
    one at or after x, in x's row (-1 / W where there is none)."""
    w = label.shape[1]
    known = label != unknown
    cols = np.arange(w)
    left = np.maximum.accumulate(np.where(known, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(known, cols, w)[:, ::-1], axis=1)[:, ::-1]
    return left, right


def _row_gap_bags(label: np.ndarray, unknown: int) -> np.ndarray:
    """(H, W) int64: for the pair (x, x+1) of each row, the bag (a number unique in the
    label) of the gap it lies in, where the known pixels at the gap's two ends differ;
    -1 elsewhere (no gap, a same-class gap, a gap open at the image's edge)."""
    h, w = label.shape
    left, right = _row_gap_ends(label, unknown)
    lo, hi = left[:, :-1], right[:, 1:]  # the pair (x, x+1): known ends lo <= x < x+1 <= hi
    rows = np.arange(h)[:, None]
    ok = (lo >= 0) & (hi < w) & (hi - lo > 1)
    ok &= label[rows, np.clip(lo, 0, w - 1)] != label[rows, np.clip(hi, 0, w - 1)]
    bags = np.full((h, w), -1, np.int64)
    bags[:, :-1] = np.where(ok, rows * w + lo, -1)
    return bags


def gap_bags(label: np.ndarray, unknown: int = UNKNOWN) -> np.ndarray:
    """(2, H, W) int64, laid out like :func:`~lmae_sdk.boundary_map.boundary_targets`: each
    pair's bag in the right-neighbour (0) and lower (1) plane, numbered 0.. across both
    planes; -1 where the pair is in no bag (each bag holds at least one class boundary)."""
    planes = np.stack([_row_gap_bags(label, unknown), _row_gap_bags(label.T, unknown).T])
    planes[1] = np.where(planes[1] >= 0, planes[1] + label.size, -1)
    inside = planes >= 0
    out = np.full(planes.shape, -1, np.int64)
    out[inside] = np.unique(planes[inside], return_inverse=True)[1]
    return out


def _row_end_classes(label: np.ndarray, unknown: int) -> np.ndarray:
    """(2, H, W) uint8: at each unknown pixel, the classes of the known pixels that close
    its row's gap on the left and on the right; ``unknown`` where the gap is open (at the
    image's edge) and at known pixels."""
    h, w = label.shape
    left, right = _row_gap_ends(label, unknown)
    rows = np.arange(h)[:, None]
    closed = (label == unknown) & (left >= 0) & (right < w)
    ends = np.stack([label[rows, np.clip(left, 0, w - 1)], label[rows, np.clip(right, 0, w - 1)]])
    return np.where(closed, ends, unknown).astype(np.uint8)


def gap_ends(label: np.ndarray, unknown: int = UNKNOWN) -> np.ndarray:
    """(4, H, W) uint8: each unknown pixel's gap ends, left and right along its row, then
    above and below along its column (:func:`_row_end_classes`); the pixel's class is one of
    its row's two and one of its column's two, but for a thin object hidden in the gap."""
    return np.concatenate([_row_end_classes(label, unknown), _row_end_classes(label.T, unknown).transpose(0, 2, 1)])
