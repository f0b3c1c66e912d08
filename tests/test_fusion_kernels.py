"""The compiled host kernels of propagation and pixel fusion against their plain forms."""
import numpy as np
import pytest

import lmae_sdk.fusion as fusion_module
import lmae_sdk.fusion_inputs as inputs_module
import lmae_sdk.fusion_rows as rows_module
import lmae_sdk.propagation as propagation_module
from lmae_sdk.degrade import degrade
from lmae_sdk.fusion import class_distances, hole_log_probs, model_agreement
from lmae_sdk.fusion_kernels import compiled
from lmae_sdk.fusion_rows import ExtraParts, FusionRows, candidate_rows, decide_rows
from lmae_sdk.propagation import NO_PATH, geodesic_class_costs


def test_the_class_sweeps_are_one_geodesic_sweep_per_class_to_the_last_bit():
    """The class sweeps run two rows side by side; each class's costs are still those of
    the one-label sweeps run for that class alone, an odd last row included, and a class
    with no known pixel gets a ``NO_PATH`` plane (the compiled class planes)."""
    sweeps = propagation_module._compiled_sweeps()
    if sweeps is None:
        pytest.skip("numba is not installed: the class costs run their numpy form only")
    rng = np.random.default_rng(2)
    label = np.kron(rng.integers(0, 4, (6, 8)), np.ones((10, 10), np.int64)).astype(np.uint8)[:59, :71]
    image = (rng.integers(0, 256, (4, 3))[label] + rng.normal(0, 4, label.shape + (3,))).clip(0, 255).astype(np.uint8)
    partial = degrade(label, 0.5, "random", rng, patch=10)
    costs = geodesic_class_costs(image, partial, 5, edge_weight=300, blur_sigma=1)
    step_x, step_y = propagation_module._step_costs(image, 300, 1)
    for c in range(4):
        dist = np.where(partial == c, np.float32(0), NO_PATH).astype(np.float32)
        sweeps(dist, np.zeros(partial.shape, np.uint8), step_x, step_y, 2)
        np.testing.assert_array_equal(costs[..., c], dist)
    assert (costs[..., 4] == NO_PATH).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_distances_in_one_pass_are_opencvs_per_class_distance_transforms(monkeypatch, seed):
    """The compiled kernel measures every class (and the known pixels) in one pass; the
    numpy form runs one ``cv2.distanceTransform`` per class: the same distances to float
    rounding, the same nearest class, 1e4 for a class with no known pixel; a label with no
    known pixel is 1e4 from everything."""
    if compiled("class_distances") is None:
        pytest.skip("numba is not installed: class_distances runs its OpenCV form only")
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 4, (7, 9)), np.ones((9, 9), np.int64)).astype(np.uint8)
    partial = degrade(label, 0.6, "random", rng, patch=6)
    partial[partial == 2] = 255  # class 2 has no known pixel
    partial[0, 0] = 200  # known, in no class
    idx = np.flatnonzero(partial.reshape(-1) == 255)
    one_pass, known = class_distances(partial, idx, 5)
    monkeypatch.setattr(inputs_module, "compiled", lambda name: None)
    per_class, cv_known = class_distances(partial, idx, 5)
    np.testing.assert_allclose(one_pass, per_class, atol=1e-3)
    np.testing.assert_allclose(known, cv_known, atol=1e-3)
    assert (one_pass[:, [2, 4]] == 1e4).all() and (one_pass.argmin(1) == per_class.argmin(1)).mean() > 0.999
    assert known.min() >= 0.955 - 1e-6 and known.max() < 30
    monkeypatch.undo()
    empty = np.full((6, 7), 255, np.uint8)
    far, far_known = class_distances(empty, np.arange(empty.size), 3)
    assert (far == 1e4).all() and (far_known == 1e4).all()


def test_hole_log_probs_compiled_are_the_log_softmax_of_opencvs_upsampling(monkeypatch):
    """The compiled log-probabilities at hole pixels (the upsampling taps in numba, the
    exponentials in numpy): those of ``cv2.resize`` and a log-softmax to float rounding,
    the same argmax, each pixel's probabilities summing to 1."""
    if compiled("hole_logits") is None:
        pytest.skip("numba is not installed: the log-probabilities run their numpy form only")
    rng = np.random.default_rng(4)
    logits = (4 * rng.standard_normal((7, 14, 18))).astype(np.float32)
    shape = (45, 61)
    idx = np.flatnonzero(rng.random(shape[0] * shape[1]) < 0.6)
    lp = hole_log_probs(logits, shape, idx)
    monkeypatch.setattr(inputs_module, "compiled", lambda name: None)
    plain = hole_log_probs(logits, shape, idx)
    assert lp.shape == plain.shape == (idx.size, 7) and lp.dtype == np.float32
    np.testing.assert_allclose(lp, plain, atol=1e-4)
    np.testing.assert_array_equal(lp.argmax(1), plain.argmax(1))
    np.testing.assert_allclose(np.exp(lp).sum(1), 1, rtol=1e-5)
    monkeypatch.undo()
    monkeypatch.setattr(inputs_module, "PIXELS_PER_PASS", 300)  # in parts, the last one short
    np.testing.assert_array_equal(hole_log_probs(logits, shape, idx), lp)


def test_candidate_rows_compiled_in_parts_are_its_numpy_form(monkeypatch):
    """The compiled rows (the logarithms computed in parts of pixels, the last part short):
    the same rows, classes and starts as in one part, and as the numpy form to float rounding."""
    if compiled("rows") is None:
        pytest.skip("numba is not installed: the rows are built by numpy only")
    rng = np.random.default_rng(6)
    m, n = 700, 6
    log_probs = np.log(rng.dirichlet(np.ones(n), m)).astype(np.float32)
    cost = rng.exponential(50, (m, n)).astype(np.float32)
    cost[rng.random((m, n)) < 0.1] = NO_PATH  # no path: capped
    distances = rng.exponential(20, (m, n)).astype(np.float32).round(1)  # rounded: ties for the nearest
    known = distances.min(1) * np.float32(0.5)
    extra = ExtraParts(rng.random((m, n)).astype(np.float32), rng.random((m, n, 2)).astype(np.float32), True,
                       rng.random((m, 3)).astype(np.float32), with_share=True)
    scales = (fusion_module._COST_CAP, fusion_module._COST_SCALE, rows_module.DIST_SCALE)
    whole = candidate_rows(log_probs, cost, distances, known, extra, -3.0, scales)
    monkeypatch.setattr(rows_module, "PIXELS_PER_PASS", 128)
    parts = candidate_rows(log_probs, cost, distances, known, extra, -3.0, scales)
    monkeypatch.setattr(rows_module, "compiled", lambda name: None)
    plain = candidate_rows(log_probs, cost, distances, known, extra, -3.0, scales)
    assert whole.features.shape == (whole.classes.size, 6 + 1 + 2 + 2 + 3) and whole.classes.size > 2 * m
    for rows in (parts, plain):
        np.testing.assert_array_equal(rows.classes, whole.classes)
        np.testing.assert_array_equal(rows.starts, whole.starts)
    np.testing.assert_array_equal(parts.features, whole.features)
    np.testing.assert_allclose(plain.features, whole.features, atol=1e-6)


@pytest.mark.parametrize("with_nearest", [True, False])
def test_model_agreement_compiled_is_its_numpy_form(monkeypatch, with_nearest):
    """The compiled agreement of model, geodesic copy and nearest fill: the same classes,
    agreement and log-probability as numpy's argmax / argmin, ties to the first class."""
    if compiled("agreement") is None:
        pytest.skip("numba is not installed: the agreement is numpy's only")
    rng = np.random.default_rng(7)
    m, n = 3000, 5
    lp = rng.integers(-4, 1, (m, n)).astype(np.float32)  # small integers: many ties
    costs = rng.integers(0, 4, (40, 100, n)).astype(np.float32)
    idx = rng.choice(4000, m, replace=False)
    dist = rng.integers(0, 4, (m, n)).astype(np.float32)
    distances = dist if with_nearest else None
    got = model_agreement(lp, costs, idx, distances)
    monkeypatch.setattr(inputs_module, "compiled", lambda name: None)
    want = model_agreement(lp, costs, idx, distances)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert 0.05 < got[1].mean() < 0.95


def test_hole_regions_compiled_are_their_numpy_form(monkeypatch):
    """The compiled border pass of the hole regions: the same regions, class shares and areas
    as the numpy form, the same mean border probability to float rounding; a known pixel in
    no class (200) counts for neither."""
    if compiled("hole_borders") is None:
        pytest.skip("numba is not installed: the hole regions are numpy's only")
    rng = np.random.default_rng(8)
    label = np.kron(rng.integers(0, 4, (6, 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
    partial = degrade(label, 0.5, "random", rng, patch=5)
    partial[rng.random(partial.shape) < 0.02] = 200
    boundary = rng.random((2, *partial.shape)).astype(np.float32)
    got = fusion_module.hole_regions(partial, boundary, 4)
    monkeypatch.setattr(fusion_module, "compiled", lambda name: None)
    want = fusion_module.hole_regions(partial, boundary, 4)
    assert got.share.shape[0] > 5 and (got.border > 0).any()
    for name in ("region", "share", "size", "strongest"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    np.testing.assert_allclose(got.border, want.border, rtol=1e-6)


def test_each_pixels_best_row_compiled_is_its_numpy_form(monkeypatch):
    """The compiled best row of each pixel: the same class as the numpy form (the first
    highest score on a tie, one-row pixels included) and the same softmax share to float
    rounding."""
    if compiled("best_rows") is None:
        pytest.skip("numba is not installed: the best rows are found by numpy only")
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 6, 400)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    classes = np.concatenate([np.sort(rng.choice(11, k, replace=False)) for k in counts]).astype(np.int64)
    scores = rng.normal(0, 2, counts.sum()).round(1).astype(np.float32)  # rounded: many ties
    rows = FusionRows(np.zeros((scores.size, 1), np.float32), classes, starts)
    pred, share = decide_rows(rows, scores)
    monkeypatch.setattr(rows_module, "compiled", lambda name: None)
    numpy_pred, numpy_share = decide_rows(rows, scores)
    np.testing.assert_array_equal(pred, numpy_pred)
    np.testing.assert_allclose(share, numpy_share, rtol=1e-6)
    assert pred.dtype == np.uint8 and share.dtype == np.float32
    assert (share[counts == 1] == 1).all() and (share[counts > 1] < 1).all()
