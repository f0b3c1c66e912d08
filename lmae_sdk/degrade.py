"""Make partial labels from full ones (unknown = 255): the experiments' input and the
training signal.  Pure functions of (label, ratio, rng); inputs are never modified."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from .labels import UNKNOWN

DEGRADE_STRATEGIES = ("random", "background", "label", "blocks", "objects", "bands")


def rng_for_name(seed: int, name: str) -> np.random.Generator:
    """The generator for one file's partial label: from ``seed`` and the sha256 of the whole
    file name (stem), so every file gets its own holes (dataset names share long prefixes,
    e.g. CamVid's ``0016E5_0...``) and a file's holes do not depend on the folder's others."""
    digest = hashlib.sha256(name.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _grid_scores_mask(label: np.ndarray, ratio: float, patch: int, scores: np.ndarray) -> np.ndarray:
    h, w = label.shape
    gh, gw = -(-h // patch), -(-w // patch)
    n = int(round(ratio * gh * gw))
    order = np.argsort(-scores.reshape(-1), kind="stable")[:n]
    cell = np.zeros(gh * gw, bool)
    cell[order] = True
    return np.kron(cell.reshape(gh, gw), np.ones((patch, patch), bool))[:h, :w]


def _cell_class_share(label: np.ndarray, patch: int, cls: int | None) -> np.ndarray:
    h, w = label.shape
    gh, gw = -(-h // patch), -(-w // patch)
    pad = np.full((gh * patch, gw * patch), UNKNOWN, np.uint8)
    pad[:h, :w] = label
    cells = pad.reshape(gh, patch, gw, patch)
    if cls is None:  # share of known, non-background pixels is computed by the caller
        return cells
    return (cells == cls).mean(axis=(1, 3))


def _most_frequent(label: np.ndarray) -> int:
    known = label[label != UNKNOWN]
    return int(np.bincount(known).argmax()) if known.size else 0


def degrade(label: np.ndarray, ratio: float, strategy: str = "random", rng: np.random.Generator | None = None,
            patch: int = 32, background_index: int | None = None) -> np.ndarray:
    """Return a copy of ``label`` with about ``ratio`` of it set to unknown (255).

    random: random grid patches; background / label: patches with most background /
    most non-background pixels first; blocks: a few large rectangles; objects: whole
    connected objects removed until the ratio is reached (propagation cannot recover them);
    bands: coarse polygon annotation, unlabelled bands of varying width along the class
    boundaries (small objects vanish inside them), :func:`boundary_bands`.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    rng = rng or np.random.default_rng(0)
    out = label.copy()
    h, w = label.shape
    if strategy == "random":
        gh, gw = -(-h // patch), -(-w // patch)
        hole = _grid_scores_mask(label, ratio, patch, rng.random(gh * gw))
    elif strategy in ("background", "label"):
        bg = background_index if background_index is not None else _most_frequent(label)
        share_bg = _cell_class_share(label, patch, bg)
        cells = _cell_class_share(label, patch, None)
        known = (cells != UNKNOWN).mean(axis=(1, 3))
        score = share_bg if strategy == "background" else known - share_bg
        score = score + rng.random(score.shape) * 1e-3
        hole = _grid_scores_mask(label, ratio, patch, score)
    elif strategy == "blocks":
        hole = np.zeros((h, w), bool)
        target = ratio * h * w
        for _ in range(200):
            if hole.sum() >= target:
                break
            area = min(target - hole.sum(), target) * rng.uniform(0.5, 1.0) + patch * patch
            aspect = rng.uniform(0.5, 2.0)
            bh = int(np.clip(np.sqrt(area / aspect), patch, h))
            bw = int(np.clip(area / bh, patch, w))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            hole[y: y + bh, x: x + bw] = True
    elif strategy == "objects":
        hole = np.zeros((h, w), bool)
        comps = []
        for c in np.unique(label):
            if c == UNKNOWN:
                continue
            n, cc = cv2.connectedComponents((label == c).astype(np.uint8), connectivity=8)
            for i in range(1, n):
                comps.append(cc == i)
        target = ratio * (label != UNKNOWN).sum()
        for i in rng.permutation(len(comps)):
            if hole.sum() >= target:
                break
            if hole.sum() + comps[i].sum() > 1.25 * target and hole.any():
                continue  # skip an object that would overshoot by far (e.g. the road)
            hole |= comps[i]
    elif strategy == "bands":
        hole = boundary_bands(label, ratio, rng)
    else:
        raise ValueError(f"unknown degrade strategy {strategy!r}; choose from {DEGRADE_STRATEGIES}")
    out[hole] = UNKNOWN
    return out


def boundary_bands(label: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """About ``ratio`` of the known pixels, in bands along the class boundaries whose width
    varies smoothly along them (as polygons drawn inside each region leave it): a pixel is in
    the hole where its distance to the nearest boundary, scaled by a smooth random field in
    [0.5, 1.5], is below the quantile that gives the ratio."""
    h, w = label.shape
    known = label != UNKNOWN
    if ratio <= 0 or not known.any():
        return np.zeros((h, w), bool)
    edge = np.zeros((h, w), bool)  # pixels with a differently labelled 4-neighbour
    diff_x, diff_y = label[:, 1:] != label[:, :-1], label[1:, :] != label[:-1, :]
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    if not edge.any():  # one class everywhere: bands along the image border
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    coarse = rng.random((max(2, h // 24), max(2, w // 24))).astype(np.float32)  # width changes over ~24 px
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    scaled = dist / (0.5 + np.clip(field, 0.0, 1.0))
    cut = np.quantile(scaled[known], min(ratio, 1.0))
    return (scaled <= cut) & known
