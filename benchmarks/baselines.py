"""Completers a user already has, built on their usual libraries: nearest-known-label
fill (distance transform), scikit-image's random walker seeded by the known labels, and
a SLIC superpixel majority vote; plus the SDK's own geodesic (edge-aware) nearest fill,
the propagation behind the ``geodesic`` prior.  Each maps (image RGB uint8, partial uint8 with 255
unknown) -> completed label; known pixels are kept."""
from __future__ import annotations

import numpy as np

from lmae_sdk.labels import UNKNOWN
from lmae_sdk.propagation import geodesic_fill, nearest_fill


def random_walker_fill(image: np.ndarray, partial: np.ndarray, beta: float = 130.0, **_) -> np.ndarray:
    from skimage.segmentation import random_walker

    known = partial != UNKNOWN
    if known.all() or not known.any():
        return nearest_fill(image, partial)
    classes = np.unique(partial[known])
    markers = np.zeros(partial.shape, np.int32)
    for i, c in enumerate(classes):
        markers[partial == c] = i + 1
    data = image.astype(np.float32) / 255.0
    seg = random_walker(data, markers, beta=beta, mode="cg_j", tol=1e-3, channel_axis=-1)
    out = classes[np.clip(seg - 1, 0, len(classes) - 1)]
    return np.where(known, partial, out).astype(np.uint8)


def slic_vote_fill(image: np.ndarray, partial: np.ndarray, n_segments: int = 600, **_) -> np.ndarray:
    """Each superpixel takes the majority of its known pixels; superpixels with none
    fall back to the nearest known label."""
    from skimage.segmentation import slic

    seg = slic(image, n_segments=n_segments, compactness=10, start_label=0)
    out = nearest_fill(image, partial)
    known = partial != UNKNOWN
    n = int(seg.max()) + 1
    votes = np.zeros((n, 256), np.int64)
    np.add.at(votes, (seg[known], partial[known]), 1)
    has = votes.sum(1) > 0
    major = votes.argmax(1).astype(np.uint8)
    fill = np.where(has[seg], major[seg], out)
    return np.where(known, partial, fill).astype(np.uint8)


def border_oracle_fill(image: np.ndarray, partial: np.ndarray, gt: np.ndarray, ring_px: int = 2) -> np.ndarray:
    """Headroom, not a completer (it reads the ground truth): a hole pixel is right whenever
    its true class occurs among the known pixels bordering its hole (within ``ring_px``),
    else it takes the geodesic fill.  The best any method that only re-distributes the
    labels around a hole could score: how much of a setting is boundary placement and how
    much needs recognising what is not there."""
    import cv2

    hole = partial == UNKNOWN
    out = geodesic_fill(image, partial)
    n, comps = cv2.connectedComponents(hole.astype(np.uint8), connectivity=4)
    kernel = np.ones((2 * ring_px + 1, 2 * ring_px + 1), np.uint8)
    for i in range(1, n):
        comp = comps == i
        ring = cv2.dilate(comp.astype(np.uint8), kernel).astype(bool) & ~hole
        right = comp & np.isin(gt, np.unique(partial[ring]))
        out[right] = gt[right]
    return np.where(hole, out, partial).astype(np.uint8)


BASELINES = {"nearest": nearest_fill, "geodesic": geodesic_fill, "random_walker": random_walker_fill, "slic_vote": slic_vote_fill}
