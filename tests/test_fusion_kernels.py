"""The compiled host kernels of propagation and pixel fusion against their plain forms."""
import numpy as np
import pytest

import lmae_sdk.fusion as fusion_module
import lmae_sdk.fusion_rows as rows_module
import lmae_sdk.propagation as propagation_module
from lmae_sdk.degrade import degrade
from lmae_sdk.fusion import class_distances
from lmae_sdk.fusion_kernels import compiled
from lmae_sdk.fusion_rows import FusionRows, decide_rows
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
    monkeypatch.setattr(fusion_module, "compiled", lambda name: None)
    per_class, cv_known = class_distances(partial, idx, 5)
    np.testing.assert_allclose(one_pass, per_class, atol=1e-3)
    np.testing.assert_allclose(known, cv_known, atol=1e-3)
    assert (one_pass[:, [2, 4]] == 1e4).all() and (one_pass.argmin(1) == per_class.argmin(1)).mean() > 0.999
    assert known.min() >= 0.955 - 1e-6 and known.max() < 30
    monkeypatch.undo()
    empty = np.full((6, 7), 255, np.uint8)
    far, far_known = class_distances(empty, np.arange(empty.size), 3)
    assert (far == 1e4).all() and (far_known == 1e4).all()


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
