"""Pixel fusion: the last step of a completion, at input resolution.

The model knows which classes belong in a hole but sees it at model resolution; geodesic
propagation places boundaries at full resolution but only copies what is on the hole's
border.  Per hole pixel and per class, pixel fusion scores six features with one small
MLP shared by all classes (plus a bias per class) and takes the best class:

  log_prob        the model's log-probability of the class (bilinear-upsampled logits)
  path_cost       log geodesic path cost to the nearest known pixel of the class
  path_cost_gap   ... minus the cheapest class's cost (0 for the propagated label)
  is_nearest      1 for the class geodesic propagation copies
  class_distance  log Euclidean distance to the nearest known pixel of the class
  known_distance  log Euclidean distance to the nearest known pixel (any class)

It replaces the hand-set near-copy rule (``near_copy_px`` / ``near_copy_min_prob``): near
known pixels it learns to trust the copy, deep inside a hole or across strong edges the
model.  ``lmae fit-fusion`` fits it on training images (benchmarks/RESULTS.md, section 2).
The weights travel in the checkpoint and the bundle manifest as plain lists.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .labels import UNKNOWN, resize_logits

FUSION_FEATURES = ("log_prob", "path_cost", "path_cost_gap", "is_nearest", "class_distance", "known_distance")
FUSION_VERSION = 1
_COST_CAP = 1e6  # costs above this (labels.NO_PATH included) read as "no path"
_COST_SCALE = np.float32(1 / np.log1p(_COST_CAP))
_DIST_SCALE = np.float32(1 / 6)  # log1p(400 px) ~ 6


class FusionError(ValueError):
    pass


def hole_log_probs(logits: np.ndarray, shape: tuple[int, int], idx: np.ndarray) -> np.ndarray:
    """(M, N) log-softmax of the bilinear-upsampled logits at flat pixel indices ``idx``."""
    n = logits.shape[0]
    up = resize_logits(np.ascontiguousarray(logits, dtype=np.float32), shape).reshape(n, -1)[:, idx].T
    up -= up.max(1, keepdims=True)
    return up - np.log(np.exp(up).sum(1, keepdims=True))


def pixel_features(logits: np.ndarray, partial: np.ndarray, class_costs: np.ndarray,
                   unknown: int = UNKNOWN) -> tuple[np.ndarray, np.ndarray]:
    """Features of every hole pixel: (flat indices (M,), features (M, N, len(FUSION_FEATURES))).

    ``logits`` (N, h, w) model-size; ``class_costs`` (H, W, N) from
    :func:`labels.geodesic_class_costs` (``Propagation.class_costs``).
    """
    idx = np.flatnonzero((partial == unknown).reshape(-1))
    return idx, features_at(hole_log_probs(logits, partial.shape, idx), partial, class_costs, idx, unknown)


def class_distances(partial: np.ndarray, idx: np.ndarray, num_classes: int, unknown: int = UNKNOWN
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (px) at flat indices ``idx``: to the nearest known pixel of each
    class (M, N) (1e4 for a class with no known pixel) and to any known pixel (M,)."""
    per_class = np.full((idx.size, num_classes), 1e4, np.float32)
    for c in range(num_classes):
        not_c = (partial != c).astype(np.uint8)
        if not not_c.all():
            per_class[:, c] = cv2.distanceTransform(not_c, cv2.DIST_L2, 3).reshape(-1)[idx]
    unknown_mask = (partial == unknown).astype(np.uint8)
    known = cv2.distanceTransform(unknown_mask, cv2.DIST_L2, 3).reshape(-1)[idx] if not unknown_mask.all() else \
        np.full(idx.size, 1e4, np.float32)
    return per_class, known


def features_at(log_probs: np.ndarray, partial: np.ndarray, class_costs: np.ndarray, idx: np.ndarray,
                unknown: int = UNKNOWN) -> np.ndarray:
    """(M, N, F) features at flat hole indices ``idx`` given their (M, N) model log-probs."""
    m, n = log_probs.shape
    feats = np.empty((m, n, len(FUSION_FEATURES)), np.float32)
    if m == 0:
        return feats
    feats[..., 0] = log_probs
    cost = class_costs.reshape(-1, n)[idx]  # (M, N)
    best = cost.min(1, keepdims=True)
    feats[..., 1] = np.log1p(np.minimum(cost, _COST_CAP)) * _COST_SCALE
    feats[..., 2] = np.log1p(np.minimum(cost - best, _COST_CAP)) * _COST_SCALE
    feats[..., 3] = cost == best
    per_class, known = class_distances(partial, idx, n, unknown)
    feats[..., 4] = np.log1p(per_class) * _DIST_SCALE
    feats[..., 5] = (np.log1p(known) * _DIST_SCALE)[:, None]
    return feats


def _fusion_loops(lp: np.ndarray, cost: np.ndarray, per_class: np.ndarray, known: np.ndarray, w1: np.ndarray,
                  b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, w3: np.ndarray, b3: float, class_bias: np.ndarray,
                  min_log_prob: float, cost_cap: float, cost_scale: float, dist_scale: float, pred: np.ndarray,
                  conf: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """:meth:`PixelFusion.scores` + argmax / softmax share for a two-hidden-layer MLP, pixel
    by pixel, features on the fly, only over candidate classes (see ``_candidates``)."""
    m, n = lp.shape
    f, h = w1.shape
    x = np.empty(f, np.float32)
    a1 = np.empty(h, np.float32)
    a2 = np.empty(h, np.float32)
    score = np.empty(n, np.float32)
    for i in range(m):
        best = cost[i, 0]
        second = np.float32(np.inf)
        for c in range(1, n):
            v = cost[i, c]
            if v < best:
                second, best = best, v
            elif v < second:
                second = v
        kd = np.log1p(known[i]) * dist_scale
        top = np.float32(-np.inf)
        arg = 0
        for c in range(n):
            if lp[i, c] < min_log_prob and cost[i, c] > second:
                score[c] = -np.inf
                continue
            x[0] = lp[i, c]
            x[1] = np.log1p(min(cost[i, c], cost_cap)) * cost_scale
            x[2] = np.log1p(min(cost[i, c] - best, cost_cap)) * cost_scale
            x[3] = 1.0 if cost[i, c] == best else 0.0
            x[4] = np.log1p(per_class[i, c]) * dist_scale
            x[5] = kd
            # rows of the weights are contiguous: accumulate row by row (vectorises)
            a1[:] = b1
            for k in range(f):
                for j in range(h):
                    a1[j] += x[k] * w1[k, j]
            a2[:] = b2
            for k in range(h):
                if a1[k] > 0:  # ReLU
                    for j in range(h):
                        a2[j] += a1[k] * w2[k, j]
            out = b3
            for j in range(h):
                if a2[j] > 0:
                    out += a2[j] * w3[j]
            score[c] = out + class_bias[c]
            if score[c] > top:
                top, arg = score[c], c
        total = np.float32(0)
        for c in range(n):
            if score[c] > -np.inf:
                total += np.exp(score[c] - top)
        pred[i] = arg
        conf[i] = 1.0 / total


@functools.cache
def _compiled_fusion():
    try:
        import numba
    except Exception:
        return None
    # reassociation lets the weight-row loops vectorise; no 'ninf': the kernel relies on -inf
    return numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_fusion_loops)


def _candidates(log_probs: np.ndarray, cost: np.ndarray, min_log_prob: float) -> np.ndarray:
    """(M, N) bool: the classes fusion scores at a pixel, those the model gives at least
    exp(min_log_prob) and the two cheapest to copy.  A speed rule: in a probe on CamVid val
    the others did not change fusion's PA-mIoU at 5% in any kind of hole, and scoring them
    was most of its cost."""
    second = np.partition(cost, 1, axis=1)[:, 1:2] if cost.shape[1] > 1 else cost
    return (log_probs >= min_log_prob) | (cost <= second)


@dataclass
class PixelFusion:
    """A shared per-class MLP over :data:`FUSION_FEATURES` plus a bias per class."""

    layers: list[tuple[np.ndarray, np.ndarray]]  # (in, out) weight, (out,) bias; ReLU between; last out = 1
    class_bias: np.ndarray  # (N,)
    info: dict[str, Any] | None = None  # how it was fitted (data, settings, loss)
    agree_skip_prob: float = 0.8  # see complete()
    min_log_prob: float = -3.0  # see _candidates(): classes the model gives >= 5%

    def __post_init__(self) -> None:
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in self.layers]
        self.class_bias = np.asarray(self.class_bias, np.float32)
        width = len(FUSION_FEATURES)
        for w, b in self.layers:
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise FusionError(f"fusion layer shapes {w.shape} / {b.shape} do not chain from width {width}")
            width = w.shape[1]
        if width != 1:
            raise FusionError(f"the last fusion layer gives {width} outputs, expected 1")

    @property
    def num_classes(self) -> int:
        return int(self.class_bias.shape[0])

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """(M, N, F) -> (M, N) class scores (logits)."""
        m, n, f = feats.shape
        if n != self.num_classes:
            raise FusionError(f"fusion fitted for {self.num_classes} classes, got features for {n}")
        x = feats.reshape(m * n, f)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        return x.reshape(m, n) + self.class_bias

    def complete(self, logits: np.ndarray, partial: np.ndarray, class_costs: np.ndarray,
                 unknown: int = UNKNOWN) -> tuple[np.ndarray, np.ndarray]:
        """(completed label (H, W) uint8, confidence (H, W) float32): known pixels kept with
        confidence 1; hole pixels take the best fused class, confidence its softmax share.

        Where the model's argmax is the propagated label and the model gives it at least
        ``agree_skip_prob``, that label stands without scoring: a speed rule (at 0.8 fusion
        chose that label there anyway in a probe on CamVid val, and it skips most pixels of
        small random holes)."""
        out = partial.copy()
        conf = np.ones(partial.shape, np.float32)
        idx = np.flatnonzero((partial == unknown).reshape(-1))
        if idx.size == 0:
            return out, conf
        n = self.num_classes
        if logits.shape[0] != n or class_costs.shape[-1] != n:
            raise FusionError(f"fusion fitted for {n} classes, got {logits.shape[0]} logit planes and "
                              f"{class_costs.shape[-1]} class costs")
        lp = hole_log_probs(logits, partial.shape, idx)  # (M, N)
        model = lp.argmax(1)
        p_model = np.exp(np.take_along_axis(lp, model[:, None], 1)[:, 0])
        nearest = class_costs.reshape(-1, n)[idx].argmin(1)
        pred, p = model.astype(np.uint8), p_model.astype(np.float32)
        run = np.flatnonzero((model != nearest) | (p_model < self.agree_skip_prob))
        if run.size:
            pred[run], p[run] = self._decide(lp[run], partial, class_costs, idx[run], unknown)
        out.reshape(-1)[idx] = pred
        conf.reshape(-1)[idx] = p
        return out, conf

    def _decide(self, lp: np.ndarray, partial: np.ndarray, class_costs: np.ndarray, idx: np.ndarray,
                unknown: int) -> tuple[np.ndarray, np.ndarray]:
        """(class (M,), softmax share (M,)) over the candidate classes of pixels ``idx``."""
        n = self.num_classes
        compiled = _compiled_fusion() if len(self.layers) == 3 else None
        if compiled is None:  # numpy: every class scored, non-candidates dropped
            s = self.scores(features_at(lp, partial, class_costs, idx, unknown))
            s[~_candidates(lp, class_costs.reshape(-1, n)[idx], self.min_log_prob)] = -np.inf
            s -= s.max(1, keepdims=True)
            return s.argmax(1).astype(np.uint8), (1.0 / np.exp(s).sum(1)).astype(np.float32)
        per_class, known = class_distances(partial, idx, n, unknown)
        (w1, b1), (w2, b2), (w3, b3) = self.layers
        pred = np.empty(idx.size, np.uint8)
        conf = np.empty(idx.size, np.float32)
        compiled(np.ascontiguousarray(lp), np.ascontiguousarray(class_costs.reshape(-1, n)[idx]), per_class, known,
                 w1, b1, w2, b2, np.ascontiguousarray(w3[:, 0]), np.float32(b3[0]), self.class_bias,
                 np.float32(self.min_log_prob), np.float32(_COST_CAP), _COST_SCALE, _DIST_SCALE, pred, conf)
        return pred, conf

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (checkpoint and manifest JSON)."""
        return {"version": FUSION_VERSION, "features": list(FUSION_FEATURES),
                "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers],
                "class_bias": self.class_bias.tolist(), "agree_skip_prob": float(self.agree_skip_prob),
                "min_log_prob": float(self.min_log_prob), "info": self.info or {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "fusion") -> "PixelFusion":
        if d.get("version") != FUSION_VERSION:
            raise FusionError(f"{source}: pixel fusion version {d.get('version')!r} is not supported "
                              f"(this lmae-sdk reads {FUSION_VERSION})")
        if list(d.get("features", [])) != list(FUSION_FEATURES):
            raise FusionError(f"{source}: pixel fusion features {d.get('features')} differ from {FUSION_FEATURES}")
        try:
            return cls([(layer["weight"], layer["bias"]) for layer in d["layers"]], d["class_bias"], d.get("info"),
                       float(d.get("agree_skip_prob", 0.8)), float(d.get("min_log_prob", -3.0)))
        except (KeyError, TypeError) as e:
            raise FusionError(f"{source}: malformed pixel fusion ({type(e).__name__}: {e})") from None

