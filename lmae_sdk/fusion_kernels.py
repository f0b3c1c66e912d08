"""Compiled host kernels of pixel fusion: the log-probabilities at hole pixels, the class
distances, where model and copies agree, the borders of the hole regions, the line votes,
the candidate rows and each pixel's best row, each in one pass over the pixels that need it.

Each kernel has a numpy form in :mod:`lmae_sdk.fusion`, :mod:`lmae_sdk.fusion_inputs` or
:mod:`lmae_sdk.fusion_rows` that gives the same result (to float rounding); numba compiles
these where it is installed (:mod:`lmae_sdk.jit`).  They stay on the host because what they
compute is chosen per pixel from data (which pixels are holes, which classes are candidates,
the nearest known pixel along a line): the rows they build are what the fusion graph scores.
"""
from __future__ import annotations

import functools

import numpy as np

from .jit import numba_compiled

# pixels per part where a host step leaves its exponentials or logarithms to numpy: the part's
# (4096, N) float32 scratch stays in a core's L2 cache
PIXELS_PER_PASS = 4096


def _hole_logits_loops(logits: np.ndarray, idx: np.ndarray, width: int, y0: np.ndarray, y1: np.ndarray,
                       wy: np.ndarray, x0: np.ndarray, x1: np.ndarray, wx: np.ndarray, out: np.ndarray,
                       shifted: np.ndarray, top: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """out (M, N): the bilinear-upsampled logits at flat pixels ``idx`` (OpenCV's INTER_LINEAR
    taps, :func:`lmae_sdk.upsampling.upsampling_taps`); top (M,): each pixel's largest;
    shifted (M, N): out minus top.  The exponentials of the log-softmax are left to numpy,
    whose vectorised ``exp`` is about 20 times numba's scalar one."""
    n = logits.shape[0]
    one = np.float32(1)
    for i in range(idx.size):
        y, x = idx[i] // width, idx[i] % width
        a, b, ty = y0[y], y1[y], wy[y]
        c0, c1, tx = x0[x], x1[x], wx[x]
        t = np.float32(-np.inf)
        for c in range(n):
            v = (logits[c, a, c0] * (one - tx) + logits[c, a, c1] * tx) * (one - ty) \
                + (logits[c, b, c0] * (one - tx) + logits[c, b, c1] * tx) * ty
            out[i, c] = v
            t = max(t, v)
        top[i] = t
        for c in range(n):
            shifted[i, c] = out[i, c] - t


def _subtract_rows_loops(x: np.ndarray, top: np.ndarray, log_total: np.ndarray
                         ) -> None:  # pragma: no cover - compiled by numba
    """x (M, N) -= top + log_total, row by row (the log-softmax's shift)."""
    m, n = x.shape
    for i in range(m):
        s = top[i] + log_total[i]
        for c in range(n):
            x[i, c] -= s


CHAMFER_STEP = np.float32(0.955)  # OpenCV's 3x3 mask for DIST_L2: a step across, and a diagonal one
CHAMFER_DIAGONAL = np.float32(1.3693)
_FAR = np.float32(1e30)


def _class_distances_loops(partial: np.ndarray, plane_of: np.ndarray, known_plane: int, unknown: int,
                           idx: np.ndarray, column_of: np.ndarray, far: float, per_class: np.ndarray,
                           known: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """OpenCV's two-pass 3x3 chamfer distance (``cv2.distanceTransform(..., DIST_L2, 3)``) for
    ``known_plane + 1`` planes at once, read at flat pixels ``idx``: plane ``plane_of[v]`` is 0
    on the pixels labelled v, plane ``known_plane`` on every pixel that is not ``unknown``.
    per_class (M, N): column c is plane ``column_of[c]``, or ``far`` where that is -1 (a class
    with no pixel); known (M,): the last plane.  One pass over the label for every plane,
    instead of one per class; the sums are OpenCV's, the order in which equal-length paths are
    added may differ (float rounding: at most 0.003 px on CamVid's labels)."""
    h, w = partial.shape
    planes = known_plane + 1
    tmp = np.empty((h + 2, w + 2, planes), np.float32)  # a border of far pixels around the label
    tmp[0] = _FAR
    tmp[h + 1] = _FAR
    tmp[:, 0] = _FAR
    tmp[:, w + 1] = _FAR
    for y in range(h):  # forward: from the upper left, upper, upper right and left neighbours
        for x in range(w):
            for p in range(planes):
                t = min(tmp[y, x + 1, p] + CHAMFER_STEP, tmp[y, x, p] + CHAMFER_DIAGONAL)
                t = min(t, tmp[y, x + 2, p] + CHAMFER_DIAGONAL)
                tmp[y + 1, x + 1, p] = min(t, tmp[y + 1, x, p] + CHAMFER_STEP)
            v = partial[y, x]
            if plane_of[v] >= 0:
                tmp[y + 1, x + 1, plane_of[v]] = 0
            if v != unknown:
                tmp[y + 1, x + 1, known_plane] = 0
    for y in range(h, 0, -1):  # backward: from the lower right, lower, lower left and right ones
        for x in range(w, 0, -1):
            for p in range(planes):
                t = min(tmp[y, x, p], tmp[y + 1, x + 1, p] + CHAMFER_DIAGONAL)
                t = min(t, tmp[y + 1, x, p] + CHAMFER_STEP)
                t = min(t, tmp[y + 1, x - 1, p] + CHAMFER_DIAGONAL)
                tmp[y, x, p] = min(t, tmp[y, x + 1, p] + CHAMFER_STEP)
    n = per_class.shape[1]
    for i in range(idx.size):
        y, x = idx[i] // w, idx[i] % w
        for c in range(n):
            per_class[i, c] = tmp[y + 1, x + 1, column_of[c]] if column_of[c] >= 0 else far
        known[i] = tmp[y + 1, x + 1, known_plane]


def _agreement_loops(lp: np.ndarray, class_costs: np.ndarray, idx: np.ndarray, dist: np.ndarray,
                     with_nearest: bool, model: np.ndarray, agree: np.ndarray,
                     top: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """model (M,): the first argmax of ``lp`` (M, N), top (M,) its value; agree (M,): that class
    is the first cheapest of ``class_costs`` (H*W, N) at flat pixel ``idx`` and, ``with_nearest``,
    the first nearest of ``dist`` (M, N).  Branch-free selects: which class wins is data, and
    mispredicted branches took about a quarter of the time."""
    m, n = lp.shape
    for i in range(m):
        best, best_v = 0, lp[i, 0]
        for c in range(1, n):
            v = lp[i, c]
            best = c if v > best_v else best
            best_v = v if v > best_v else best_v
        model[i] = best
        top[i] = best_v
        row = class_costs[idx[i]]
        cheapest, cheapest_v = 0, row[0]
        for c in range(1, n):
            v = row[c]
            cheapest = c if v < cheapest_v else cheapest
            cheapest_v = v if v < cheapest_v else cheapest_v
        ok = cheapest == best
        if with_nearest:
            nearest, nearest_v = 0, dist[i, 0]
            for c in range(1, n):
                v = dist[i, c]
                nearest = c if v < nearest_v else nearest
                nearest_v = v if v < nearest_v else nearest_v
            ok = ok and nearest == best
        agree[i] = ok


def _hole_borders_loops(partial: np.ndarray, region: np.ndarray, boundary: np.ndarray, unknown: int,
                        num_classes: int, count: np.ndarray, share: np.ndarray,
                        border: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """Per hole region (``region`` (H, W), 0 for known pixels), over the pixel pairs that cross
    its border (right neighbours: ``boundary[0]``, lower ones: ``boundary[1]``) whose known
    pixel has a class below ``num_classes``: count (R,) the pairs, share (R, N) the pairs per
    class of the known pixel, border (R,) the sum of the pairs' boundary probabilities."""
    h, w = partial.shape
    for y in range(h):
        for x in range(w):
            a = partial[y, x]
            for plane in range(2):
                y2, x2 = (y, x + 1) if plane == 0 else (y + 1, x)
                if y2 >= h or x2 >= w:
                    continue
                b = partial[y2, x2]
                if (a == unknown) == (b == unknown):
                    continue
                owner, cls = (region[y, x], b) if a == unknown else (region[y2, x2], a)
                if cls < num_classes:
                    count[owner] += 1
                    share[owner, cls] += 1
                    border[owner] += boundary[plane, y, x]


def _line_votes_loops(partial: np.ndarray, unknown: int, num_classes: int, idx: np.ndarray,
                      votes: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """votes (M, N, 2) += 0.5 for the class of the nearest known pixel straight up, down
    (plane 0), left and right (plane 1) of each flat pixel ``idx`` (none that way: no vote):
    four scans of the label find every pixel's nearest known pixel in each direction (the
    work grows with the pixels, not with how deep the holes are), then one read per vote."""
    h, w = partial.shape
    near = np.empty((4, h, w), np.int16)  # up, down, left, right: that pixel's label, -1 for none
    last = np.full(w, -1, np.int16)
    for y in range(h):
        for x in range(w):
            near[0, y, x] = last[x]
            if partial[y, x] != unknown:
                last[x] = partial[y, x]
    last[:] = -1
    for y in range(h - 1, -1, -1):
        for x in range(w):
            near[1, y, x] = last[x]
            if partial[y, x] != unknown:
                last[x] = partial[y, x]
    for y in range(h):
        left = -1
        for x in range(w):
            near[2, y, x] = left
            if partial[y, x] != unknown:
                left = partial[y, x]
        right = -1
        for x in range(w - 1, -1, -1):
            near[3, y, x] = right
            if partial[y, x] != unknown:
                right = partial[y, x]
    for i in range(idx.size):
        y, x = idx[i] // w, idx[i] % w
        for way in range(4):
            v = near[way, y, x]
            if 0 <= v < num_classes:
                votes[i, v, way // 2] += 0.5


def _rows_loops(lp: np.ndarray, cost: np.ndarray, dist: np.ndarray, log_cost: np.ndarray, log_cost_gap: np.ndarray,
                log_dist: np.ndarray, log_dist_gap: np.ndarray, log_known: np.ndarray, share: np.ndarray,
                votes: np.ndarray, pixel_extra: np.ndarray, with_share: bool, nearest: bool, min_log_prob: float,
                fill: bool, starts: np.ndarray, feats: np.ndarray, classes: np.ndarray
                ) -> None:  # pragma: no cover - compiled by numba
    """The rows of :func:`fusion_rows.candidate_rows`.  ``fill=False``: only count each
    pixel's candidate classes into ``starts``; ``fill=True``: write the rows of each pixel
    from ``starts[i]`` on: the first six features, the border share (``with_share``), the
    line votes, the nearest-fill features (``nearest``), the per-pixel ones.  The scaled
    logarithms come computed (``log_*``, :func:`fusion_rows.log_features`): numpy's
    vectorised ``log1p`` over every class is faster than numba's scalar one over the
    candidates."""
    m, n = lp.shape
    v, q = votes.shape[2], pixel_extra.shape[1]
    for i in range(m):
        best = cost[i, 0]  # the smallest and second smallest cost, as np.partition(cost, 1)
        second = np.float32(np.inf) if n > 1 else best
        closest = dist[i, 0]
        for c in range(1, n):  # branch-free: which class is cheapest is data
            x = cost[i, c]
            second = min(second, max(best, x))
            best = min(best, x)
            closest = min(closest, dist[i, c])
        r = starts[i] if fill else 0
        for c in range(n):
            if not (lp[i, c] >= min_log_prob or cost[i, c] <= second or dist[i, c] <= closest):
                continue
            if fill:
                feats[r, 0] = lp[i, c]
                feats[r, 1] = log_cost[i, c]
                feats[r, 2] = log_cost_gap[i, c]
                feats[r, 3] = 1.0 if cost[i, c] == best else 0.0
                feats[r, 4] = log_dist[i, c]
                feats[r, 5] = log_known[i]
                k = 6
                if with_share:
                    feats[r, k] = share[i, c]
                    k += 1
                for e in range(v):
                    feats[r, k + e] = votes[i, c, e]
                k += v
                if nearest:
                    feats[r, k] = 1.0 if dist[i, c] == closest else 0.0
                    feats[r, k + 1] = log_dist_gap[i, c]
                    k += 2
                for e in range(q):
                    feats[r, k + e] = pixel_extra[i, e]
                classes[r] = c
            r += 1
        if not fill:
            starts[i] = r


def _best_rows_loops(scores: np.ndarray, starts: np.ndarray, classes: np.ndarray, pred: np.ndarray,
                     shifted: np.ndarray) -> None:  # pragma: no cover - compiled by numba
    """pred (M,): the class of each pixel's first highest-scoring row (pixel i's rows run from
    ``starts[i]`` to the next pixel's start); shifted (R,): each row's score minus its pixel's
    highest (the softmax's exponentials are left to numpy's vectorised ``exp``)."""
    m, r_end = starts.size, scores.size
    for i in range(m):
        a = starts[i]
        b = starts[i + 1] if i + 1 < m else r_end
        best, top = a, scores[a]
        for r in range(a + 1, b):  # branch-free selects
            best = r if scores[r] > top else best
            top = max(top, scores[r])
        for r in range(a, b):
            shifted[r] = scores[r] - top
        pred[i] = classes[best]


def _segment_sums_loops(x: np.ndarray, starts: np.ndarray, total: np.ndarray
                        ) -> None:  # pragma: no cover - compiled by numba
    """total (M,): the sum of each segment of x (R,), segment i running from ``starts[i]`` to
    the next segment's start, in order (the rows of an (M, N) array: starts 0, N, 2N, ...)."""
    m, r_end = starts.size, x.size
    for i in range(m):
        b = starts[i + 1] if i + 1 < m else r_end
        s = np.float32(0)
        for r in range(starts[i], b):
            s += x[r]
        total[i] = s


# numba options per kernel: fastmath lets the chamfer's min skip NaN handling (it has no NaN): 10% faster
_OPTIONS = {"class_distances": {"fastmath": True}}


@functools.cache
def compiled(name: str):
    """The numba-compiled kernel ``name`` (``hole_logits``, ``subtract_rows``, ``class_distances``,
    ``agreement``, ``hole_borders``, ``line_votes``, ``rows``, ``best_rows``, ``segment_sums``),
    or None without numba."""
    return numba_compiled(globals()[f"_{name}_loops"], **_OPTIONS.get(name, {}))
