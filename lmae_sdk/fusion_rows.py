"""Pixel fusion's decision as rows: one row per (hole pixel, candidate class), scored in one batch.

:meth:`lmae_sdk.fusion.PixelFusion.complete` gathers the features of every candidate
class of the hole pixels it must decide into a (R, F) matrix (:func:`candidate_rows`); a
:class:`RowScorer` scores the rows, with the MLP and the class bias, and
:func:`decide_rows` takes each pixel's best class and its softmax share among its
candidates.  The scoring is most of the fusion's arithmetic and runs where the bundle's
graphs run: the bundle's fusion graph (``fusion_fp32.onnx``, :mod:`export.fusion_graph`)
on ONNX Runtime (CPU or CUDA), or :class:`HostRowScorer` (numpy) for checkpoints and
bundles exported without one.  Both compute the same function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .fusion_kernels import PIXELS_PER_PASS, compiled

if TYPE_CHECKING:
    from .fusion import PixelFusion

# rows per call of a scorer on a CPU: the MLP's (rows, 64) activations stay in cache
# (100k rows of a 14-64-64-1 MLP on one core: 13 ms in 2048-row calls, 36-57 ms in one call)
CPU_ROWS_PER_CALL = 2048


class RowScorer(Protocol):
    """(R, F) float32 features and (R,) int64 classes -> (R,) float32 class scores (logits)."""

    def __call__(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray: ...


NEAREST_FEATURES = ("is_closest", "distance_gap")
DIST_SCALE = np.float32(1 / 6)  # the scale of the fusion's log distances: log1p(400 px) ~ 6


def nearest_features(distances: np.ndarray) -> np.ndarray:
    """:data:`NEAREST_FEATURES` from the (M, N) Euclidean class distances: (M, N, 2), 1 for
    the class nearest-label fill copies, and the log distance beyond that class's."""
    gap = distances - distances.min(1, keepdims=True)
    return np.stack([gap == 0, np.log1p(gap) * DIST_SCALE], 2).astype(np.float32)


@dataclass
class ExtraParts:
    """The fusion's features after the first six, in parts (:func:`lmae_sdk.fusion.extra_parts`):
    per class the hole's ``share`` and the ``votes`` along lines (format 3 on), then
    :data:`NEAREST_FEATURES` when ``nearest`` (format 4, from the distances), then the
    per-pixel ones."""

    share: np.ndarray  # (M, N) border share (read when with_share)
    votes: np.ndarray  # (M, N, 2) line votes, or (M, N, 0)
    nearest: bool
    pixel: np.ndarray  # (M, Q)
    with_share: bool = False

    def class_extra(self, distances: np.ndarray | None) -> np.ndarray:
        """(M, N, P): the per-class ones in order."""
        parts = ([self.share[..., None]] if self.with_share else []) + [self.votes]
        if self.nearest:
            parts.append(nearest_features(distances))
        return np.concatenate(parts, 2).astype(np.float32, copy=False)


@dataclass
class FusionRows:
    """The candidate (pixel, class) pairs of the pixels to decide, pixel by pixel, classes
    in increasing order (so that a tie goes to the lower class id)."""

    features: np.ndarray  # (R, F) float32
    classes: np.ndarray  # (R,) int64
    starts: np.ndarray  # (M,) first row of each pixel; every pixel has at least one row


def candidate_mask(log_probs: np.ndarray, cost: np.ndarray, distances: np.ndarray, min_log_prob: float) -> np.ndarray:
    """(M, N) bool: the classes fusion scores at a pixel, those the model gives at least
    exp(min_log_prob), the two cheapest to copy and the one nearest-label fill copies (the
    Euclidean ``distances``' nearest).  A speed rule: in a probe on CamVid val the others did
    not change fusion's PA-mIoU at 5% in any kind of hole, and scoring them was most of its
    cost."""
    second = np.partition(cost, 1, axis=1)[:, 1:2] if cost.shape[1] > 1 else cost
    return (log_probs >= min_log_prob) | (cost <= second) | (distances <= distances.min(1, keepdims=True))


def row_min(x: np.ndarray) -> np.ndarray:
    """(M, 1): the smallest of each row of x (M, N), column by column (``x.min(1)``, whose
    reduction along a short last axis took 14 times as long: 1.9 ms for (25000, 11))."""
    out = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        np.minimum(out, x[:, c], out=out)
    return out[:, None]


def log_features(cost: np.ndarray, distances: np.ndarray, known: np.ndarray, scales: tuple[float, float, float],
                 nearest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows' scaled logarithms at every class of M pixels, for the rows to read: the path
    cost and its gap to the cheapest class's (capped), the class distance and its gap to the
    nearest class's (``nearest``, else (M, 0)), all (M, N), and the known distance (M,).
    Vectorised over every class: about 20 times faster per value than a compiled scalar
    ``log1p`` over the candidates alone."""
    cap, cost_scale, dist_scale = (np.float32(s) for s in scales)

    def scaled_log1p(x: np.ndarray, scale: np.float32) -> np.ndarray:
        np.log1p(x, out=x)
        x *= scale
        return x

    log_cost = scaled_log1p(np.minimum(cost, cap), cost_scale)
    log_cost_gap = scaled_log1p(np.minimum(cost - row_min(cost), cap), cost_scale)
    log_dist = scaled_log1p(np.array(distances, np.float32), dist_scale)
    log_dist_gap = (scaled_log1p(distances - row_min(distances), dist_scale) if nearest
                    else np.empty((cost.shape[0], 0), np.float32))
    log_known = scaled_log1p(np.array(known, np.float32), dist_scale)
    return log_cost, log_cost_gap, log_dist, log_dist_gap, log_known


def candidate_rows(log_probs: np.ndarray, cost: np.ndarray, distances: np.ndarray, known: np.ndarray,
                   extra: ExtraParts, min_log_prob: float, scales: tuple[float, float, float]) -> FusionRows:
    """The rows of M pixels: ``log_probs``, ``cost`` (geodesic class costs), ``distances``
    (Euclidean class distances) (M, N); ``known`` (M,) the distance to any known pixel;
    ``extra`` the features after the first six; ``scales``: (cost cap, cost scale, distance
    scale) of :mod:`lmae_sdk.fusion`.  The features are those of
    :func:`lmae_sdk.fusion.features_at`, read only at the candidate classes."""
    m, n = log_probs.shape
    cost, distances = np.ascontiguousarray(cost, np.float32), np.ascontiguousarray(distances, np.float32)
    width = 6 + int(extra.with_share) + extra.votes.shape[2] + 2 * int(extra.nearest) + extra.pixel.shape[1]
    kernel = compiled("rows")
    if kernel is not None:
        per_pixel = [np.ascontiguousarray(a, np.float32) for a in (log_probs, cost, distances, extra.share,
                                                                  extra.votes, extra.pixel)]
        known = np.ascontiguousarray(known, np.float32)
        flags = (bool(extra.with_share), bool(extra.nearest), np.float32(min_log_prob))

        def call(s: int, e: int, logs: tuple, fill: bool, starts: np.ndarray, feats: np.ndarray,
                 classes: np.ndarray) -> None:
            lp, c, d, share, votes, pixel = (a[s:e] for a in per_pixel)
            kernel(lp, c, d, *logs, share, votes, pixel, *flags, fill, starts, feats, classes)

        starts = np.empty(m, np.int64)
        no_logs = (np.empty((0, n), np.float32),) * 4 + (np.empty(0, np.float32),)
        call(0, m, no_logs, False, starts, np.empty((0, width), np.float32), np.empty(0, np.int64))
        counts = starts.copy()
        starts[0], starts[1:] = 0, np.cumsum(counts)[:-1]
        feats, classes = np.empty((int(counts.sum()), width), np.float32), np.empty(int(counts.sum()), np.int64)
        for s in range(0, m, PIXELS_PER_PASS):  # the logarithms in cache-sized parts
            e = min(m, s + PIXELS_PER_PASS)
            logs = log_features(cost[s:e], distances[s:e], known[s:e], scales, extra.nearest)
            call(s, e, logs, True, starts[s:e], feats, classes)
        return FusionRows(feats, classes, starts)
    logs = log_features(cost, distances, known, scales, extra.nearest)
    log_cost, log_cost_gap, log_dist, _, log_known = logs
    pixel, cls = np.nonzero(candidate_mask(log_probs, cost, distances, min_log_prob))
    class_extra = extra.class_extra(distances)
    p = class_extra.shape[2]
    feats = np.empty((pixel.size, width), np.float32)
    feats[:, 0] = log_probs[pixel, cls]
    feats[:, 1] = log_cost[pixel, cls]
    feats[:, 2] = log_cost_gap[pixel, cls]
    feats[:, 3] = cost[pixel, cls] == cost.min(1)[pixel]
    feats[:, 4] = log_dist[pixel, cls]
    feats[:, 5] = log_known[pixel]
    feats[:, 6:6 + p] = class_extra[pixel, cls]
    feats[:, 6 + p:] = extra.pixel[pixel]
    starts = np.searchsorted(pixel, np.arange(m))
    return FusionRows(feats, cls.astype(np.int64), starts)


def decide_rows(rows: FusionRows, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class (M,) uint8, softmax share of that class among the pixel's candidates (M,))."""
    scores = np.asarray(scores, np.float32).reshape(-1)
    kernel = compiled("best_rows")
    if kernel is not None:
        starts = np.ascontiguousarray(rows.starts, np.int64)
        pred, share, shifted = (np.empty(starts.size, np.uint8), np.empty(starts.size, np.float32),
                                np.empty(scores.size, np.float32))
        kernel(scores, starts, np.ascontiguousarray(rows.classes, np.int64), pred, shifted)
        compiled("segment_sums")(np.exp(shifted, out=shifted), starts, share)
        return pred, np.divide(np.float32(1), share, out=share)
    counts = np.diff(np.append(rows.starts, scores.size))
    top = np.maximum.reduceat(scores, rows.starts)
    shifted = scores - np.repeat(top, counts)
    conf = 1.0 / np.add.reduceat(np.exp(shifted), rows.starts)
    # the first row at its pixel's maximum: rows of a pixel run in class order
    at_top = np.flatnonzero(shifted == 0)
    first = at_top[np.unique(np.searchsorted(rows.starts, at_top, side="right") - 1, return_index=True)[1]]
    return rows.classes[first].astype(np.uint8), conf.astype(np.float32)


class HostRowScorer:
    """The fusion's MLP and class bias in numpy, in cache-sized calls (checkpoints, training,
    and bundles exported without a fusion graph)."""

    def __init__(self, fusion: "PixelFusion", rows_per_call: int = CPU_ROWS_PER_CALL) -> None:
        self.fusion, self.rows_per_call = fusion, int(rows_per_call)

    def __call__(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        out = np.empty(len(features), np.float32)
        step = self.rows_per_call or max(len(features), 1)
        for s in range(0, len(features), step):
            out[s: s + step] = self.fusion.mlp(features[s: s + step])
        return out + self.fusion.class_bias[classes]
