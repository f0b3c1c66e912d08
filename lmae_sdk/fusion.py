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

and, for a model with a boundary net (format 3), four features of the pixel's hole, the
4-connected region of unknown pixels it lies in, so that one fusion can tell the kinds of
hole apart (a cut through regions, where the copy is right, from a removed object, where
the copy is wrong):

  border_share    the class's share of the known pixels along the hole's border
  border_boundary the mean learned boundary probability across that border: near 1 where
                  the hole is an object's outline, low where it cuts through regions
  hole_size       log area of the hole, over log area of the image
  pixel_boundary  the learned boundary probability at the pixel (its strongest side)

and two features of straight lines through the pixel, for thin structures (a
pole or a sign post cut by a hole continues straight across it, a few pixels wide: the
geodesic copy and the model at 1/16 resolution both lose it):

  line_vertical   the class's share of the two nearest known pixels straight up and down
  line_horizontal the same to the left and right

and (format 4) the decision of nearest-label fill, the baseline a completion must beat, so
that the fusion can fall back on it where the model and the geodesic copy are unsure (thin
unlabelled bands along class boundaries, as coarse polygon annotation leaves them):

  is_closest      1 for the class of the nearest known pixel (Euclidean)
  distance_gap    log of the class's distance beyond that nearest class's

Near known pixels it learns to trust the copy, deep inside a hole or across strong edges
the model.  ``lmae fit-fusion`` fits it on training images (benchmarks/RESULTS.md).  Format
2 (the hole features without the line votes) was retired: such a fusion is refused with
what to run to refit it.  Format 3 (without the nearest-fill features) is still read.
The weights travel in the checkpoint and the bundle manifest as plain lists.  At completion
the candidate classes of the pixels to decide become rows, which the bundle's fusion graph
scores in one batch (:mod:`lmae_sdk.fusion_rows`; what the features read at the hole
pixels: :mod:`lmae_sdk.fusion_inputs`; their compiled kernels: :mod:`lmae_sdk.fusion_kernels`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .fusion_inputs import class_distances, hole_log_probs, model_agreement
from .fusion_kernels import compiled
from .fusion_rows import (DIST_SCALE, NEAREST_FEATURES, ExtraParts, HostRowScorer, RowScorer, candidate_rows,
                          decide_rows)
from .labels import UNKNOWN

FUSION_FEATURES = ("log_prob", "path_cost", "path_cost_gap", "is_nearest", "class_distance", "known_distance")
HOLE_FEATURES = ("border_share", "border_boundary", "hole_size", "pixel_boundary")
LINE_FEATURES = ("line_vertical", "line_horizontal")
# format version -> features; after the first six: the per-class ones, then the per-pixel ones
# (format 2, FUSION_FEATURES + HOLE_FEATURES, was retired)
FEATURES_BY_VERSION = {1: FUSION_FEATURES, 3: FUSION_FEATURES + HOLE_FEATURES[:1] + LINE_FEATURES + HOLE_FEATURES[1:],
                       4: FUSION_FEATURES + HOLE_FEATURES[:1] + LINE_FEATURES + NEAREST_FEATURES + HOLE_FEATURES[1:]}
_COST_CAP = 1e6  # costs above this (labels.NO_PATH included) read as "no path"
_COST_SCALE = np.float32(1 / np.log1p(_COST_CAP))


class FusionError(ValueError):
    pass


def pixel_features(logits: np.ndarray, partial: np.ndarray, class_costs: np.ndarray, unknown: int = UNKNOWN,
                   boundary: np.ndarray | None = None, features: tuple[str, ...] = FUSION_FEATURES
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``features`` of every hole pixel: (flat indices (M,), features (M, N, len(features))).

    ``logits`` (N, h, w) model-size; ``class_costs`` (H, W, N) from
    :func:`labels.geodesic_class_costs` (``Propagation.class_costs``); ``boundary`` (2, H, W)
    for the hole features (``Propagation.boundary``).
    """
    idx = np.flatnonzero((partial == unknown).reshape(-1))
    return idx, features_at(hole_log_probs(logits, partial.shape, idx), partial, class_costs, idx, unknown, boundary,
                            features)


@dataclass
class HoleRegions:
    """The hole regions of a partial label (4-connected unknown pixels) and what
    :data:`HOLE_FEATURES` reads of each: per region the class shares along its border (R, N),
    its border's mean learned boundary probability (R,) and its log-area feature (R,); per
    pixel its region and its strongest learned boundary (flat, H*W)."""

    region: np.ndarray  # (H*W,) region id of each pixel (0: known pixels)
    share: np.ndarray  # (R, N) float32
    border: np.ndarray  # (R,) float32: border_boundary
    size: np.ndarray  # (R,) float32: hole_size
    strongest: np.ndarray  # (H*W,) float32: pixel_boundary

    def border_at(self, idx: np.ndarray) -> np.ndarray:
        """(M,) ``border_boundary`` at flat pixels ``idx``."""
        return self.border[self.region[idx]]

    def at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`hole_features` at flat pixels ``idx``."""
        at = self.region[idx]
        return self.share[at], np.stack([self.border[at], self.size[at], self.strongest[idx]], 1)


def hole_regions(partial: np.ndarray, boundary: np.ndarray | None, num_classes: int,
                 unknown: int = UNKNOWN) -> HoleRegions:
    """:class:`HoleRegions` of ``partial`` with the learned map ``boundary`` (2, H, W)."""
    if boundary is None:
        raise FusionError("this pixel fusion reads the learned class-boundary map (the model's boundary net), "
                          "and none was given")
    if boundary.shape != (2, *partial.shape):
        raise FusionError(f"boundary map shape {boundary.shape}; expected (2, {partial.shape[0]}, {partial.shape[1]})")
    bmap = boundary.astype(np.float32, copy=False)
    hole = partial == unknown
    regions, region = cv2.connectedComponents(hole.astype(np.uint8), connectivity=4)
    kernel = compiled("hole_borders")
    if kernel is not None and partial.dtype == np.uint8:
        count, share, border = np.zeros(regions), np.zeros((regions, num_classes)), np.zeros(regions)
        kernel(np.ascontiguousarray(partial), region, np.ascontiguousarray(bmap), int(unknown), int(num_classes),
               count, share, border)
        count = np.maximum(count, 1)
        return _regions(partial, region, regions, share / count[:, None], border / count, bmap)
    owners, classes, probs = [], [], []
    # pixel pairs across the border: right neighbours (plane 0), lower neighbours (plane 1)
    for plane, a, b in ((0, np.s_[:, :-1], np.s_[:, 1:]), (1, np.s_[:-1, :], np.s_[1:, :])):
        p = bmap[plane][a]
        for inside, outside in ((a, b), (b, a)):
            cross = hole[inside] & ~hole[outside]
            owners.append(region[inside][cross])
            classes.append(partial[outside][cross])
            probs.append(p[cross])
    owner, cls, prob = np.concatenate(owners), np.concatenate(classes).astype(np.int64), np.concatenate(probs)
    keep = cls < num_classes
    owner, cls, prob = owner[keep], cls[keep], prob[keep].astype(np.float64)
    count = np.maximum(np.bincount(owner, minlength=regions), 1).astype(np.float64)
    share = np.bincount(owner * num_classes + cls, minlength=regions * num_classes).reshape(regions, num_classes)
    border = np.bincount(owner, prob, minlength=regions) / count
    return _regions(partial, region, regions, share / count[:, None], border, bmap)


def _regions(partial: np.ndarray, region: np.ndarray, regions: int, share: np.ndarray, border: np.ndarray,
             bmap: np.ndarray) -> HoleRegions:
    """:class:`HoleRegions` from the regions' border shares and mean border probabilities."""
    area = np.bincount(region.reshape(-1), minlength=regions)
    strongest = np.maximum(bmap[0], bmap[1])  # right and lower sides; then left and upper
    np.maximum(strongest[:, 1:], bmap[0][:, :-1], out=strongest[:, 1:])
    np.maximum(strongest[1:], bmap[1][:-1], out=strongest[1:])
    return HoleRegions(region.reshape(-1), share.astype(np.float32), border.astype(np.float32),
                       (np.log1p(area) / np.log1p(partial.size)).astype(np.float32), strongest.reshape(-1))


def hole_features(partial: np.ndarray, boundary: np.ndarray | None, num_classes: int, idx: np.ndarray,
                  unknown: int = UNKNOWN) -> tuple[np.ndarray, np.ndarray]:
    """:data:`HOLE_FEATURES` at flat hole indices ``idx``, from the learned map ``boundary``
    (2, H, W): the class-wise ``border_share`` (M, N) and the others (M, 3), in order."""
    return hole_regions(partial, boundary, num_classes, unknown).at(idx)


def _nearest_known_above(partial: np.ndarray, unknown: int) -> np.ndarray:
    """(H, W): the label of the nearest known pixel at or above each pixel in its column
    (``unknown`` where there is none)."""
    rows = np.where(partial != unknown, np.arange(partial.shape[0])[:, None], -1)
    last = np.maximum.accumulate(rows, axis=0)
    out = np.take_along_axis(partial, np.maximum(last, 0), 0)
    out[last < 0] = unknown
    return out


def line_features(partial: np.ndarray, num_classes: int, idx: np.ndarray, unknown: int = UNKNOWN) -> np.ndarray:
    """:data:`LINE_FEATURES` at flat hole indices ``idx``: (M, N, 2), per class the share of
    the two nearest known pixels straight up and down (0) and left and right (1) that have
    it (no known pixel that way: no vote)."""
    votes = np.zeros((idx.size, num_classes, 2), np.float32)
    kernel = compiled("line_votes")
    if kernel is not None:
        kernel(np.ascontiguousarray(partial), int(unknown), int(num_classes), np.ascontiguousarray(idx, np.int64),
               votes)
        return votes
    rows = np.arange(idx.size)
    for axis, view in ((0, partial), (1, partial.T)):
        for flip in (False, True):
            near = _nearest_known_above(view[::-1] if flip else view, unknown)
            near = near[::-1] if flip else near
            label = (near if axis == 0 else near.T).reshape(-1)[idx]
            ok = label < num_classes
            votes[rows[ok], label[ok], axis] += 0.5  # one label per pixel and direction: no repeated index
    return votes


def extra_parts(features: tuple[str, ...], partial: np.ndarray, boundary: np.ndarray | None, num_classes: int,
                idx: np.ndarray, unknown: int = UNKNOWN, hole: tuple[np.ndarray, np.ndarray] | None = None
                ) -> ExtraParts:
    """The features after :data:`FUSION_FEATURES` at flat hole indices ``idx``, in parts:
    the hole and line features (format 3 on) and whether the nearest-fill ones follow
    (format 4), which :func:`fusion_rows.candidate_rows` computes from the distances.
    ``hole``: :func:`hole_features` at ``idx`` when the caller has them."""
    m = idx.size
    if len(features) == len(FUSION_FEATURES):
        return ExtraParts(np.zeros((m, num_classes), np.float32), np.zeros((m, num_classes, 0), np.float32), False,
                          np.zeros((m, 0), np.float32))
    share, others = hole if hole is not None else hole_features(partial, boundary, num_classes, idx, unknown)
    return ExtraParts(share, line_features(partial, num_classes, idx, unknown), NEAREST_FEATURES[0] in features,
                      others, with_share=True)


def extra_features(features: tuple[str, ...], partial: np.ndarray, boundary: np.ndarray | None, num_classes: int,
                   idx: np.ndarray, unknown: int = UNKNOWN, distances: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The features after :data:`FUSION_FEATURES` at flat hole indices ``idx``: the per-class
    ones (M, N, P) and the per-pixel ones (M, Q), in the order of ``features``
    (``distances``: :func:`class_distances`' per-class ones, computed here if not given)."""
    parts = extra_parts(features, partial, boundary, num_classes, idx, unknown)
    if parts.nearest and distances is None:
        distances = class_distances(partial, idx, num_classes, unknown)[0]
    return parts.class_extra(distances), parts.pixel


def features_at(log_probs: np.ndarray, partial: np.ndarray, class_costs: np.ndarray, idx: np.ndarray,
                unknown: int = UNKNOWN, boundary: np.ndarray | None = None,
                features: tuple[str, ...] = FUSION_FEATURES) -> np.ndarray:
    """(M, N, F) ``features`` at flat hole indices ``idx`` given their (M, N) model log-probs
    (the hole features need the ``boundary`` map)."""
    m, n = log_probs.shape
    feats = np.empty((m, n, len(features)), np.float32)
    if m == 0:
        return feats
    feats[..., 0] = log_probs
    cost = class_costs.reshape(-1, n)[idx]  # (M, N)
    best = cost.min(1, keepdims=True)
    feats[..., 1] = np.log1p(np.minimum(cost, _COST_CAP)) * _COST_SCALE
    feats[..., 2] = np.log1p(np.minimum(cost - best, _COST_CAP)) * _COST_SCALE
    feats[..., 3] = cost == best
    distances, known = class_distances(partial, idx, n, unknown)
    feats[..., 4] = np.log1p(distances) * DIST_SCALE
    feats[..., 5] = (np.log1p(known) * DIST_SCALE)[:, None]
    per_class, per_pixel = extra_features(features, partial, boundary, n, idx, unknown, distances=distances)
    p = per_class.shape[2]
    feats[..., 6:6 + p] = per_class
    feats[..., 6 + p:] = per_pixel[:, None, :]
    return feats


@dataclass
class PixelFusion:
    """A shared per-class MLP over its ``features`` plus a bias per class."""

    layers: list[tuple[np.ndarray, np.ndarray]]  # (in, out) weight, (out,) bias; ReLU between; last out = 1
    class_bias: np.ndarray  # (N,)
    info: dict[str, Any] | None = None  # how it was fitted (data, settings, loss)
    agree_skip_prob: float = 0.8  # see complete()
    min_log_prob: float = -3.0  # see fusion_rows.candidate_mask(): classes the model gives >= 5%
    features: tuple[str, ...] = FUSION_FEATURES  # FEATURES_BY_VERSION[format version]
    agree_skip_border: float = 0.2  # see complete(): with hole features, the skip needs a hole border below this

    def __post_init__(self) -> None:
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in self.layers]
        self.class_bias = np.asarray(self.class_bias, np.float32)
        self.features = tuple(self.features)
        if self.features not in FEATURES_BY_VERSION.values():
            raise FusionError(f"unknown fusion feature set {list(self.features)}")
        width = len(self.features)
        for w, b in self.layers:
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise FusionError(f"fusion layer shapes {w.shape} / {b.shape} do not chain from width {width}")
            width = w.shape[1]
        if width != 1:
            raise FusionError(f"the last fusion layer gives {width} outputs, expected 1")

    @property
    def num_classes(self) -> int:
        return int(self.class_bias.shape[0])

    @property
    def version(self) -> int:
        return next(v for v, f in FEATURES_BY_VERSION.items() if f == self.features)

    @property
    def needs_boundary(self) -> bool:
        """Its hole features read the learned class-boundary map."""
        return len(self.features) > len(FUSION_FEATURES)

    def mlp(self, x: np.ndarray) -> np.ndarray:
        """(R, F) features -> (R,) MLP outputs, without the class bias."""
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        return x[:, 0]

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """(M, N, F) -> (M, N) class scores (logits)."""
        m, n, f = feats.shape
        if n != self.num_classes:
            raise FusionError(f"fusion fitted for {self.num_classes} classes, got features for {n}")
        return self.mlp(feats.reshape(m * n, f)).reshape(m, n) + self.class_bias

    def complete(self, logits: np.ndarray, partial: np.ndarray, class_costs: np.ndarray, unknown: int = UNKNOWN,
                 boundary: np.ndarray | None = None, scorer: RowScorer | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(completed label (H, W) uint8, confidence (H, W) float32): known pixels kept with
        confidence 1; hole pixels take the best fused class, confidence its softmax share.
        ``boundary`` (2, H, W): the learned map, needed by a fusion with hole features.
        ``scorer``: what scores the candidate rows (:mod:`lmae_sdk.fusion_rows`): the
        bundle's fusion graph, or by default :class:`~lmae_sdk.fusion_rows.HostRowScorer`.

        Where the model's argmax is the propagated label and the model gives it at least
        ``agree_skip_prob``, that label stands without scoring: a speed rule (at 0.8 fusion
        chose that label there anyway in a probe on CamVid val, and it skips most pixels of
        small random holes).  A fusion that reads nearest-label fill's decision (format 4)
        needs that fill to copy the label too: in thin bands along class boundaries model
        and propagation agree, sure and wrong, where the nearest known pixel is right.  A
        fusion with hole features (format 3 on) skips only in holes whose ``border_boundary``
        is below ``agree_skip_border``: a hole outlined by class boundaries is a removed
        object, where model and copies agree, sure and wrong (the surrounding class), and the
        fusion overrides them (the probe behind 0.2: benchmarks/HISTORY.md, the skip rule)."""
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
        distances, known = class_distances(partial, idx, n, unknown)
        model, agree, model_lp = model_agreement(lp, class_costs, idx, distances if NEAREST_FEATURES[0] in self.features
                                                 else None)
        p_model = np.exp(model_lp)
        sure = agree & (p_model >= self.agree_skip_prob)
        regions = None
        if self.needs_boundary:  # the skip reads the border of each pixel's hole
            regions = hole_regions(partial, boundary, n, unknown)
            sure &= regions.border_at(idx) < self.agree_skip_border
        pred, p = model.astype(np.uint8), p_model.astype(np.float32)
        run = np.flatnonzero(~sure)
        if run.size:
            pred[run], p[run] = self._decide(lp[run], partial, class_costs.reshape(-1, n)[idx[run]], idx[run],
                                             distances[run], known[run], unknown, boundary,
                                             scorer or HostRowScorer(self),
                                             None if regions is None else regions.at(idx[run]))
        out.reshape(-1)[idx] = pred
        conf.reshape(-1)[idx] = p
        return out, conf

    def _decide(self, lp: np.ndarray, partial: np.ndarray, cost: np.ndarray, idx: np.ndarray,
                distances: np.ndarray, known: np.ndarray, unknown: int, boundary: np.ndarray | None,
                scorer: RowScorer, hole: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """(class (M,), softmax share (M,)) over the candidate classes of pixels ``idx``
        (``cost``: their class costs; ``distances``, ``known``: :func:`class_distances` at them;
        ``hole``: :func:`hole_features` at them, or None)."""
        parts = extra_parts(self.features, partial, boundary, self.num_classes, idx, unknown, hole)
        rows = candidate_rows(lp, cost, distances, known, parts, self.min_log_prob,
                              (_COST_CAP, _COST_SCALE, DIST_SCALE))
        return decide_rows(rows, scorer(rows.features, rows.classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (checkpoint and manifest JSON)."""
        return {"version": self.version, "features": list(self.features),
                "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers],
                "class_bias": self.class_bias.tolist(), "agree_skip_prob": float(self.agree_skip_prob),
                "agree_skip_border": float(self.agree_skip_border), "min_log_prob": float(self.min_log_prob),
                "info": self.info or {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "fusion") -> "PixelFusion":
        version = d.get("version")
        if version == 2:
            raise FusionError(f"{source}: pixel fusion format 2 was retired (format 3 adds the line votes)")
        if version not in FEATURES_BY_VERSION:
            raise FusionError(f"{source}: pixel fusion version {version!r} is not supported "
                              f"(this lmae-sdk reads {sorted(FEATURES_BY_VERSION)})")
        features = FEATURES_BY_VERSION[version]
        if list(d.get("features", [])) != list(features):
            raise FusionError(f"{source}: pixel fusion features {d.get('features')} differ from version {version}'s "
                              f"{list(features)}")
        try:
            return cls([(layer["weight"], layer["bias"]) for layer in d["layers"]], d["class_bias"], d.get("info"),
                       float(d.get("agree_skip_prob", 0.8)), float(d.get("min_log_prob", -3.0)), features,
                       float(d.get("agree_skip_border", 0.2)))
        except FusionError:
            raise
        except (KeyError, TypeError, ValueError) as e:  # ValueError: a rule's number that is not one
            raise FusionError(f"{source}: malformed pixel fusion ({type(e).__name__}: {e})") from None

