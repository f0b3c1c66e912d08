"""What pixel fusion reads at the hole pixels of a label: the model's log-probabilities
(its logits upsampled to the label), the Euclidean distance to each class's nearest known
pixel, and where the model, the geodesic copy and nearest-label fill agree.

Each has a compiled form (:mod:`lmae_sdk.fusion_kernels`, where numba is installed) and a
numpy / OpenCV form that gives the same result to float rounding.
"""
from __future__ import annotations

import cv2
import numpy as np

from .fusion_kernels import PIXELS_PER_PASS, compiled
from .labels import UNKNOWN
from .upsampling import resize_logits, upsampling_taps

NO_CLASS_DISTANCE = 1e4  # px: the class distance of a class with no known pixel


def hole_log_probs(logits: np.ndarray, shape: tuple[int, int], idx: np.ndarray) -> np.ndarray:
    """(M, N) log-softmax of the bilinear-upsampled logits at flat pixel indices ``idx``."""
    n = logits.shape[0]
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    kernel = compiled("hole_logits")
    if kernel is not None and logits.shape[1:] != tuple(shape):
        idx, out = np.ascontiguousarray(idx, np.int64), np.empty((idx.size, n), np.float32)
        taps = [t for axis in upsampling_taps(logits.shape[1:], tuple(shape)) for t in axis]
        step = max(1, min(idx.size, PIXELS_PER_PASS))
        shifted, top, total = np.empty((step, n), np.float32), np.empty(step, np.float32), np.empty(step, np.float32)
        rows = np.arange(0, step * n, n)  # where each pixel's row starts in the flat scratch
        for s in range(0, idx.size, step):  # in cache-sized parts
            part, k = out[s: s + step], min(step, idx.size - s)
            kernel(logits, idx[s: s + step], shape[1], *taps, part, shifted[:k], top[:k])
            compiled("segment_sums")(np.exp(shifted[:k], out=shifted[:k]).reshape(-1), rows[:k], total[:k])
            compiled("subtract_rows")(part, top[:k], np.log(total[:k], out=total[:k]))
        return out
    up = resize_logits(logits, shape).reshape(n, -1)[:, idx].T
    up -= up.max(1, keepdims=True)
    return up - np.log(np.exp(up).sum(1, keepdims=True))


def model_agreement(lp: np.ndarray, class_costs: np.ndarray, idx: np.ndarray, distances: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model (M,), agree (M,), its log-prob (M,)): the model's argmax at flat hole pixels ``idx``
    from their log-probs ``lp`` (M, N), whether it is also geodesic propagation's cheapest class
    (``class_costs`` (H, W, N)) and, given ``distances`` (M, N), nearest-label fill's class
    (ties: the lowest class id, as argmax and argmin), and its log-prob."""
    n = lp.shape[1]
    costs = class_costs.reshape(-1, n)
    kernel = compiled("agreement")
    if kernel is not None:
        model, agree, top = np.empty(idx.size, np.int64), np.empty(idx.size, np.bool_), np.empty(idx.size, np.float32)
        with_nearest = distances is not None
        dist = np.ascontiguousarray(distances, np.float32) if with_nearest else np.empty((0, n), np.float32)
        kernel(np.ascontiguousarray(lp, np.float32), np.ascontiguousarray(costs), np.ascontiguousarray(idx, np.int64),
               dist, with_nearest, model, agree, top)
        return model, agree, top
    model = lp.argmax(1)
    agree = model == costs[idx].argmin(1)
    if distances is not None:
        agree &= model == distances.argmin(1)
    return model, agree, np.take_along_axis(lp, model[:, None], 1)[:, 0]


def class_distances(partial: np.ndarray, idx: np.ndarray, num_classes: int, unknown: int = UNKNOWN
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (px, OpenCV's 3x3 chamfer) at flat indices ``idx``: to the nearest
    known pixel of each class (M, N) (1e4 for a class with no known pixel) and to any known
    pixel (M,).  Compiled, every class in one pass (:mod:`lmae_sdk.fusion_kernels`); else one
    ``cv2.distanceTransform`` per class."""
    present = np.bincount(partial.reshape(-1), minlength=num_classes)[:num_classes] > 0
    kernel = compiled("class_distances")
    if kernel is not None and partial.dtype == np.uint8 and unknown <= 255 and num_classes <= 256:  # one pass
        classes = np.flatnonzero(present)
        plane_of = np.full(256, -1, np.int64)
        plane_of[classes] = np.arange(classes.size)
        per_class, known = np.empty((idx.size, num_classes), np.float32), np.empty(idx.size, np.float32)
        kernel(np.ascontiguousarray(partial), plane_of, classes.size, int(unknown), np.ascontiguousarray(idx, np.int64),
               plane_of[:num_classes], np.float32(NO_CLASS_DISTANCE), per_class, known)
        if not (partial != unknown).any():
            known[:] = NO_CLASS_DISTANCE
        return per_class, known
    per_class = np.full((idx.size, num_classes), NO_CLASS_DISTANCE, np.float32)
    for c in np.flatnonzero(present):
        not_c = cv2.compare(partial, int(c), cv2.CMP_NE)  # 255 off class c, in one pass
        per_class[:, c] = cv2.distanceTransform(not_c, cv2.DIST_L2, 3).reshape(-1)[idx]
    unknown_mask = (partial == unknown).astype(np.uint8)
    known = cv2.distanceTransform(unknown_mask, cv2.DIST_L2, 3).reshape(-1)[idx] if not unknown_mask.all() else \
        np.full(idx.size, NO_CLASS_DISTANCE, np.float32)
    return per_class, known
