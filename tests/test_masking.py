import numpy as np
import pytest

from lmae_sdk.masking import (DEFAULT_MIX, MaskPlan, background_class, num_masked, patch_class_share, plan_masks,
                              sample_strategy, strategy_scores, unknown_share)


def _planes_from_grid(grid_ids, n, patch=4, unknown=255):
    lab = np.kron(np.asarray(grid_ids, np.uint8), np.ones((patch, patch), np.uint8))
    planes = np.zeros((n,) + lab.shape, np.float32)
    for c in range(n):
        planes[c] = lab == c
    return planes


def test_plan_is_a_permutation_and_restores_order():
    rng = np.random.default_rng(0)
    L, n_mask = 20, 12
    p = plan_masks(np.zeros(L), rng.random(L), n_mask)
    assert p.ids_keep.shape == (1, 8) and p.ids_mask.shape == (1, 12) and p.ids_restore.shape == (1, 20)
    shuffled = np.concatenate([p.ids_keep[0], p.ids_mask[0]])
    assert sorted(shuffled) == list(range(L))
    np.testing.assert_array_equal(shuffled[p.ids_restore[0]], np.arange(L))
    assert p.ids_keep.dtype == np.int64


def test_unknown_patches_masked_first_then_topped_up():
    unknown = np.array([0.9, 0.1, 0.6, 0.0, 0.0, 0.3])
    scores = np.array([0.0, 0.0, 0.0, 0.2, 0.9, 0.0])
    p = plan_masks(unknown, scores, 3, threshold=0.5)
    assert set(p.ids_mask[0]) == {0, 2, 4}  # two unknown patches, then the top score
    # more unknown than n_mask: the most unknown win, the rest stay visible with holes
    p = plan_masks(np.array([0.6, 0.9, 0.7, 0.0]), np.zeros(4), 2)
    assert set(p.ids_mask[0]) == {1, 2}


def test_background_first_masks_background_patches():
    # 2x3 grid, class 0 is the background (most frequent)
    planes = _planes_from_grid([[0, 0, 1], [0, 2, 2]], 3)
    share = patch_class_share(planes, 4)
    assert background_class(share) == 0
    s = strategy_scores("background_first", share, np.random.default_rng(0))
    p = plan_masks(unknown_share(share), s, 3)
    assert set(p.ids_mask[0]) == {0, 1, 3}


def test_label_first_masks_foreground_patches():
    planes = _planes_from_grid([[0, 0, 1], [0, 2, 2]], 3)
    share = patch_class_share(planes, 4)
    s = strategy_scores("label_first", share, np.random.default_rng(0))
    p = plan_masks(unknown_share(share), s, 3)
    assert set(p.ids_mask[0]) == {2, 4, 5}


def test_classwise_masks_all_patches_of_one_class():
    planes = _planes_from_grid([[0, 1, 0, 2], [1, 0, 2, 0]], 3)
    share = patch_class_share(planes, 4)
    for seed in range(5):
        s = strategy_scores("classwise", share, np.random.default_rng(seed))
        chosen = int(np.argmax(s))
        cls = int(np.argmax(share[:, chosen]))
        members = set(np.flatnonzero(share[cls] > 0))
        p = plan_masks(unknown_share(share), s, len(members))
        assert set(p.ids_mask[0]) == members


def test_random_strategy_is_uniformish():
    L = 50
    counts = np.zeros(L)
    rng = np.random.default_rng(0)
    for _ in range(400):
        s = strategy_scores("random", np.zeros((3, L)), rng)
        counts[plan_masks(np.zeros(L), s, 25).ids_mask[0]] += 1
    assert counts.min() > 140 and counts.max() < 260


def test_unknown_share_with_pixel_holes():
    planes = _planes_from_grid([[0, 1]], 2)
    planes[:, :2, :] = 0  # top half of both patches unknown
    np.testing.assert_allclose(unknown_share(patch_class_share(planes, 4)), [0.5, 0.5])


def test_mix_follows_the_paper_ratio():
    rng = np.random.default_rng(0)
    draws = [sample_strategy(rng) for _ in range(5000)]
    assert DEFAULT_MIX == {"random": 1.0, "label_first": 2.0, "background_first": 2.0}
    frac = {k: draws.count(k) / len(draws) for k in DEFAULT_MIX}
    assert abs(frac["random"] - 0.2) < 0.03 and abs(frac["label_first"] - 0.4) < 0.03


def test_num_masked_and_stack():
    assert num_masked(252, 0.5) == 126 and num_masked(252, 0.7) == 176
    with pytest.raises(ValueError):
        num_masked(10, 1.0)
    rng = np.random.default_rng(0)
    st = MaskPlan.stack([plan_masks(np.zeros(6), rng.random(6), 3) for _ in range(4)])
    assert st.ids_keep.shape == (4, 3)
    assert st.masked_grid((2, 3)).sum() == 12


def test_patch_class_share_is_the_patch_mean():
    planes = np.random.default_rng(8).random((3, 16, 24)).astype(np.float32)
    want = planes.reshape(3, 4, 4, 6, 4).mean(axis=(2, 4)).reshape(3, -1)
    np.testing.assert_allclose(patch_class_share(planes, 4), want, rtol=1e-6)
