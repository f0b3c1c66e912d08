"""Make partial labels from full ones (unknown = 255): the experiments' input and the
training signal.  Pure functions of (label, ratio, rng); inputs are never modified.  Every
strategy's work grows with the label's pixels only (never with the patch size or the number
of objects times the pixels)."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from .labels import UNKNOWN
from .propagation import nearest_known

UNLABELLED_BOUNDARIES = 0.9  # a split whose class boundaries are at least this share unknown: the card says so
# a label with at most this share of its class-boundary pixels unknown counts as complete (CamVid's own labels: 95% of
# them at most 0.26, void strips between classes; with 50% random holes: at least 0.39)
COMPLETE_LABEL_BOUNDARIES_UNKNOWN = 0.25
DEGRADE_STRATEGIES = ("random", "background", "label", "blocks", "objects", "bands")
PATCH_STRATEGIES = ("random", "background", "label", "blocks")  # the strategies that read ``patch``


class DegradeError(ValueError):
    """Options that cannot make a partial label of this label (names the option and why)."""


def rng_for_name(seed: int, name: str) -> np.random.Generator:
    """The generator for one file's partial label: from ``seed`` and the sha256 of the whole
    file name (stem), so every file gets its own holes (dataset names share long prefixes,
    e.g. CamVid's ``0016E5_0...``) and a file's holes do not depend on the folder's others."""
    digest = hashlib.sha256(name.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def check_patch(patch: object, shape: tuple[int, int] | None = None) -> int:
    """``patch`` as a whole number of pixels >= 1 that (with ``shape``, a label's (H, W))
    fits in the label; else a :class:`DegradeError` saying why.  :func:`degrade` checks the
    number only (a larger patch makes the whole label one cell); ``lmae degrade`` refuses a
    label smaller than its patch."""
    if isinstance(patch, (bool, np.bool_)) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise DegradeError(f"patch must be a whole number of pixels >= 1, got {patch!r}")
    if shape is None:
        return int(patch)
    h, w = shape
    if patch > min(h, w):
        raise DegradeError(f"patch {patch} px is larger than the label ({h}x{w} pixels, HxW); "
                           f"use a patch of at most {min(h, w)} px")
    return int(patch)


def _cell_index(h: int, w: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel row's and column's grid cell."""
    return np.arange(h) // patch, np.arange(w) // patch


def _grid_scores_mask(label: np.ndarray, ratio: float, patch: int, scores: np.ndarray) -> np.ndarray:
    """The ``ratio`` of the grid cells that hold a known pixel with the highest ``scores`` (a
    complete label: of every cell; a partial one: cells that are unknown already are not
    chosen again, so the ratio is of what is known)."""
    h, w = label.shape
    gh, gw = -(-h // patch), -(-w // patch)
    scores = scores.reshape(-1)
    n = int(round(ratio * gh * gw))
    if (label == UNKNOWN).any():
        has_known = _cell_share(label, patch, label != UNKNOWN).reshape(-1) > 0
        scores = np.where(has_known, scores, -np.inf)
        n = int(round(ratio * int(has_known.sum())))
    order = np.argsort(-scores, kind="stable")[:n]
    cell = np.zeros(gh * gw, bool)
    cell[order] = True
    rows, cols = _cell_index(h, w, patch)
    return cell.reshape(gh, gw)[rows[:, None], cols[None, :]]


def _cell_share(label: np.ndarray, patch: int, pixels: np.ndarray) -> np.ndarray:
    """(gh, gw): the share of each grid cell's patch x patch pixels where ``pixels`` is True
    (cells cut off by the label's edge count their missing pixels as False)."""
    h, w = label.shape
    gh, gw = -(-h // patch), -(-w // patch)
    rows, cols = _cell_index(h, w, patch)
    cell = (rows[:, None] * gw + cols[None, :])[pixels]
    return np.bincount(cell, minlength=gh * gw).reshape(gh, gw) / (patch * patch)


def _most_frequent(label: np.ndarray) -> int:
    known = label[label != UNKNOWN]
    return int(np.bincount(known).argmax()) if known.size else 0


def degrade(label: np.ndarray, ratio: float, strategy: str = "random", rng: np.random.Generator | None = None,
            patch: int = 32, background_index: int | None = None) -> np.ndarray:
    """Return a copy of ``label`` with about ``ratio`` of its known pixels set to unknown (255)
    (of a complete label: of all of it; a partial label's holes are never chosen again).

    random: random grid patches; background / label: patches with most background /
    most non-background pixels first; blocks: a few large rectangles; objects: whole
    connected objects removed until the ratio is reached (propagation cannot recover them);
    bands: coarse polygon annotation, unlabelled bands of varying width along the class
    boundaries (small objects vanish inside them), :func:`boundary_bands`.

    Raises :class:`DegradeError` for a ratio outside [0, 1], and, for the strategies of grid
    patches (random, background, label, blocks: the patch is their cell or smallest block), a
    patch that is not a whole number >= 1 (a patch larger than the label makes it one cell).
    """
    if not 0.0 <= ratio <= 1.0:
        raise DegradeError(f"ratio must be in [0, 1], got {ratio}")
    if strategy in PATCH_STRATEGIES:
        patch = check_patch(patch)
    rng = rng or np.random.default_rng(0)
    out = label.copy()
    h, w = label.shape
    if strategy == "random":
        gh, gw = -(-h // patch), -(-w // patch)
        hole = _grid_scores_mask(label, ratio, patch, rng.random(gh * gw))
    elif strategy in ("background", "label"):
        bg = background_index if background_index is not None else _most_frequent(label)
        share_bg = _cell_share(label, patch, label == bg)
        known = _cell_share(label, patch, label != UNKNOWN)
        score = share_bg if strategy == "background" else known - share_bg
        score = score + rng.random(score.shape) * 1e-3
        hole = _grid_scores_mask(label, ratio, patch, score)
    elif strategy == "blocks":
        hole = np.zeros((h, w), bool)
        known = label != UNKNOWN
        target = ratio * int(np.count_nonzero(known))  # a share of the known pixels
        filled = 0  # (hole & known).sum(), kept up to date block by block
        for _ in range(200):
            if filled >= target:
                break
            area = min(target - filled, target) * rng.uniform(0.5, 1.0) + patch * patch
            aspect = rng.uniform(0.5, 2.0)
            bh = int(np.clip(np.sqrt(area / aspect), patch, h))
            bw = int(np.clip(area / bh, patch, w))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            block = hole[y: y + bh, x: x + bw]
            filled += int(np.count_nonzero(known[y: y + bh, x: x + bw] & ~block))
            block[...] = True
    elif strategy == "objects":
        hole = _objects_hole(label, ratio, rng)
    elif strategy == "bands":
        hole = boundary_bands(label, ratio, rng)
    else:
        raise DegradeError(f"unknown degrade strategy {strategy!r}; choose from {DEGRADE_STRATEGIES}")
    out[hole] = UNKNOWN
    return out


def class_extents(label: np.ndarray) -> np.ndarray:
    """Where each class of a partial label extends: its unknown pixels take the nearest known
    pixel's class.  A complete label is its own (returned as is).  Bands and objects are
    found on these extents, not on the label, because a partial label's holes are not class
    boundaries: an object cut by a hole is still one object, and a region's edge along a hole
    is not where two classes meet."""
    if not (label == UNKNOWN).any():
        return label
    ids, _ = nearest_known(label)
    return np.where(label == UNKNOWN, ids, label)


def class_edges(extents: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels with a differently labelled 4-neighbour."""
    edge = np.zeros(extents.shape, bool)
    diff_x, diff_y = extents[:, 1:] != extents[:, :-1], extents[1:, :] != extents[:-1, :]
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    return edge


def unlabelled_boundary_pixels(label: np.ndarray) -> tuple[int, int]:
    """(pixels along the class boundaries of the :func:`class_extents`, those of them that are
    unknown in ``label``).  Near 1 as a share, the known pixels never reach a class boundary
    (coarse polygon annotation): how a completer places boundaries cannot be checked on them."""
    edge = class_edges(class_extents(label))
    return int(np.count_nonzero(edge)), int(np.count_nonzero(edge & (label == UNKNOWN)))


def complete_boundaries(boundary: tuple[int, int]) -> bool:
    """Whether a label whose :func:`unlabelled_boundary_pixels` are ``boundary`` counts as
    complete: it has class boundaries and at most :data:`COMPLETE_LABEL_BOUNDARIES_UNKNOWN` of
    them are unknown."""
    edges, unknown = boundary
    return edges > 0 and unknown <= COMPLETE_LABEL_BOUNDARIES_UNKNOWN * edges


def _objects_hole(label: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Whole connected objects (8-connected, per class, in class order, found on the
    :func:`class_extents`) in random order until ``ratio`` of the known pixels is reached,
    skipping one that would overshoot by far (e.g. the road); an object's size and its hole
    are its known pixels.  Objects are numbered once over the whole label and chosen by their
    sizes, so the work grows with the pixels, not with objects x pixels."""
    h, w = label.shape
    known = label != UNKNOWN
    extents = class_extents(label)
    ids = np.zeros((h, w), np.int64)  # 0: unknown; object k (1-based, numbering of the classes in order)
    sizes = [np.zeros(1, np.int64)]
    count = 0
    for c in np.unique(extents):
        if c == UNKNOWN:
            continue
        n, cc = cv2.connectedComponents((extents == c).astype(np.uint8), connectivity=8)
        inside = cc > 0
        ids[inside] = cc[inside] + count
        sizes.append(np.bincount(cc[inside & known], minlength=n)[1:])
        count += n - 1
    size = np.concatenate(sizes)  # size[k]: known pixels of object k
    target = ratio * known.sum()
    chosen = np.zeros(count + 1, bool)
    taken = 0
    for i in rng.permutation(count):
        if taken >= target:
            break
        if taken + size[i + 1] > 1.25 * target and taken > 0:
            continue  # skip an object that would overshoot by far (e.g. the road)
        chosen[i + 1] = True
        taken += size[i + 1]
    return chosen[ids] & known


def boundary_bands(label: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """About ``ratio`` of the known pixels, in bands along the class boundaries (of the
    :func:`class_extents`) whose width varies smoothly along them (as polygons drawn inside
    each region leave it): a pixel is in the hole where its distance to the nearest boundary,
    scaled by a smooth random field in [0.5, 1.5], is below the quantile that gives the ratio."""
    h, w = label.shape
    known = label != UNKNOWN
    if ratio <= 0 or not known.any():
        return np.zeros((h, w), bool)
    edge = class_edges(class_extents(label))
    if not edge.any():  # one class everywhere: bands along the image border
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    coarse = rng.random((max(2, h // 24), max(2, w // 24))).astype(np.float32)  # width changes over ~24 px
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    scaled = dist / (0.5 + np.clip(field, 0.0, 1.0))
    cut = np.quantile(scaled[known], min(ratio, 1.0))
    return (scaled <= cut) & known
