"""Model-size logits back to input resolution: bilinear upsampling, per-pixel argmax and
softmax confidence (compiled kernels that interpolate only where the argmax can change)."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from .jit import numba_compiled
from .planes import resize_planes


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W), bilinear (smooth class boundaries; never nearest on labels)."""
    if logits.shape[1:] == tuple(size):
        return logits
    return resize_planes(np.ascontiguousarray(logits, dtype=np.float32), size, cv2.INTER_LINEAR)


def _class_max_loops(planes: np.ndarray, top: np.ndarray, arg: np.ndarray) -> None:  # pragma: no cover - numba
    """Row by row, classes outer, pixels inner: loops the compiler vectorises."""
    n, h, w = planes.shape
    for y in range(h):
        for x in range(w):
            top[y, x] = planes[0, y, x]
            arg[y, x] = 0
        for c in range(1, n):
            for x in range(w):
                if planes[c, y, x] > top[y, x]:  # strict: the first maximum wins, as np.argmax
                    top[y, x] = planes[c, y, x]
                    arg[y, x] = c


@functools.cache
def _compiled_class_max():
    return numba_compiled(_class_max_loops)


def class_max(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) float32 -> per pixel the largest value (H, W) float32 and its class (H, W)
    uint8, the first on ties (``planes.max(0)``, ``planes.argmax(0)``).  Compiled by numba
    ~5x faster than numpy's elementwise loop below."""
    n, h, w = planes.shape
    top = np.empty((h, w), np.float32)
    arg = np.empty((h, w), np.uint8)
    compiled = _compiled_class_max()
    if compiled is not None:
        compiled(np.ascontiguousarray(planes, dtype=np.float32), top, arg)
        return top, arg
    # elementwise numpy only: boolean-mask assignment is ~10x slower here
    top[:] = planes[0]
    arg[:] = 0
    for c in range(1, n):  # classes ascend, so max(arg, c * better) sets c where better
        np.maximum(arg, np.greater(planes[c], top).view(np.uint8) * np.uint8(c), out=arg)
        np.maximum(top, planes[c], out=top)
    return top, arg


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis for a resize src -> dst (half-pixel
    centres, clamped at the borders): per destination index the two source indices and the
    weight of the second."""
    f = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    first = np.floor(f)
    weight = f - first
    weight[first < 0] = 0.0
    first = np.clip(first, 0, src - 1)
    weight[first >= src - 1] = 0.0
    return first.astype(np.int32), np.minimum(first + 1, src - 1).astype(np.int32), weight.astype(np.float32)


@functools.cache
def upsampling_taps(src: tuple[int, int], dst: tuple[int, int]):
    """((y0, y1, wy), (x0, x1, wx)): :func:`resize_logits`' bilinear taps from ``src`` (h, w)
    to ``dst`` (H, W), per destination row and column."""
    return _linear_taps(src[0], dst[0]), _linear_taps(src[1], dst[1])


def _upsampled_argmax_loops(logits: np.ndarray, small_arg: np.ndarray, where: np.ndarray, y0: np.ndarray,
                            y1: np.ndarray, wy: np.ndarray, x0: np.ndarray, x1: np.ndarray, wx: np.ndarray,
                            out: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """out[y, x] = argmax of the bilinear-upsampled logits where ``where`` is set.  Where the
    four source pixels share their argmax, that class wins (a convex combination keeps
    it on top); only the pixels between disagreeing ones interpolate every class."""
    n = logits.shape[0]
    one = np.float32(1)
    for y in range(where.shape[0]):
        a, b, ty = y0[y], y1[y], wy[y]
        for x in range(where.shape[1]):
            if not where[y, x]:
                continue
            c0, c1 = x0[x], x1[x]
            k = small_arg[a, c0]
            if small_arg[a, c1] == k and small_arg[b, c0] == k and small_arg[b, c1] == k:
                out[y, x] = k
                continue
            tx = wx[x]
            best = np.float32(-np.inf)
            k = 0
            for c in range(n):
                v = (logits[c, a, c0] * (one - tx) + logits[c, a, c1] * tx) * (one - ty) \
                    + (logits[c, b, c0] * (one - tx) + logits[c, b, c1] * tx) * ty
                if v > best:  # strict: the first maximum wins
                    best = v
                    k = c
            out[y, x] = k


@functools.cache
def _compiled_upsampled_argmax():
    return numba_compiled(_upsampled_argmax_loops)


def fill_argmax(logits: np.ndarray, where: np.ndarray, out: np.ndarray) -> None:
    """``out[where] = upsampled_prediction(logits, where.shape)[0][where]`` without the
    probabilities: the argmax of the bilinear-upsampled logits (to float rounding on near
    ties), in place.  Compiled by numba it interpolates only pixels between source pixels
    whose argmax differs (~4x faster than upsampling every plane); else that numpy path."""
    compiled = _compiled_upsampled_argmax()
    if compiled is None:
        pred, _ = upsampled_prediction(logits, where.shape, confidence=False)
        np.copyto(out, pred, where=where)
        return
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    (y0, y1, wy), (x0, x1, wx) = upsampling_taps(logits.shape[1:], where.shape)
    compiled(logits, class_max(logits)[1], np.ascontiguousarray(where), y0, y1, wy, x0, x1, wx, out)


def upsampled_prediction(logits: np.ndarray, size: tuple[int, int],
                         confidence: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, h, w) model-size logits -> per input pixel the argmax id (H, W) uint8 and its
    softmax probability (H, W) float32, as argmax / softmax of ``resize_logits(...)``.

    Works one bilinear-upsampled class plane at a time on dense 2-D arrays: no (N, M)
    boolean gather, which cost more than the resize itself.  ``confidence=False``: the
    probability is None (the softmax, half of the time here, is skipped).
    """
    n, (h, w) = logits.shape[0], size
    planes = resize_logits(logits, size)  # (N, H, W)
    top, arg = class_max(planes)
    if not confidence:
        return arg, None
    total = np.zeros((h, w), np.float32)  # softmax denominator, stabilized by the max
    e = np.empty((h, w), np.float32)
    for c in range(n):
        total += np.exp(np.subtract(planes[c], top, out=e), out=e)
    return arg, 1.0 / total
