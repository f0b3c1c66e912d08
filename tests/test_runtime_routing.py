"""Routing: which engine completes an image and which patches it masks; passes."""
import numpy as np
import pytest
import torch

from lmae_sdk import LMAE, make_config
from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
from lmae_sdk.masking import num_masked
from lmae_sdk.pipeline import prepare
from lmae_sdk.routing import apply_pass, choose_ratio, patch_region, route_image

H, W, P = 64, 96, 16  # grid 4 x 6, L = 24
RATIOS = [0.25, 0.5, 0.75]  # masks 6, 12, 18 patches


@pytest.fixture(scope="module")
def cfg():
    return make_config("tiny", 5, img_size=(H, W))


@pytest.fixture(scope="module")
def completer(tmp_path_factory, cfg):
    from lmae_sdk import LMAECompleter

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(make_checkpoint(LMAE(cfg), class_names=list("abcde"), palette=None, mask_ratios=RATIOS,
                                    label_resize="soft", unknown_threshold=0.5), path)
    return LMAECompleter.load(path, backend="torch", threads=1)


def _label(unknown_patches: dict[int, float], bg: int = 0, other: dict[int, int] | None = None) -> np.ndarray:
    """A model-size label: patch id -> unknown share (the top rows of the patch)."""
    lab = np.full((H, W), bg, np.uint8)
    for pid, c in (other or {}).items():
        gy, gx = divmod(pid, W // P)
        lab[gy * P:(gy + 1) * P, gx * P:(gx + 1) * P] = c
    for pid, share in unknown_patches.items():
        gy, gx = divmod(pid, W // P)
        rows = int(round(share * P))
        lab[gy * P: gy * P + rows, gx * P:(gx + 1) * P] = 255
    return lab


def _route(cfg, lab, ratios=RATIOS, threshold=0.5):
    img = np.zeros((H, W, 3), np.uint8)
    return route_image(prepare(img, lab, cfg), cfg, ratios, threshold)


def test_choose_ratio_smallest_covering():
    L = 24
    assert [num_masked(L, m) for m in RATIOS] == [6, 12, 18]
    assert choose_ratio(0, RATIOS, L) == 0.25
    assert choose_ratio(6, RATIOS, L) == 0.25
    assert choose_ratio(7, RATIOS, L) == 0.5
    assert choose_ratio(18, RATIOS, L) == 0.75
    assert choose_ratio(19, RATIOS, L) is None
    assert choose_ratio(5, [0.75, 0.25], L) == 0.25  # order of the engines does not matter


def test_engine_and_patches_for_constructed_labels(cfg):
    must = {0: 1.0, 3: 1.0, 7: 0.75, 10: 1.0, 14: 0.625, 20: 1.0, 23: 1.0}  # 7 patches > 0.5
    d = _route(cfg, _label({**must, 5: 0.5, 6: 0.25}))  # 0.5 and 0.25 unknown: stay visible
    assert d.n_must == 7 and d.mask_ratio == 0.5 and d.final
    masked = set(d.masked.tolist())
    assert len(masked) == 12 and set(must) <= masked
    # few unknown patches -> the smallest engine
    d = _route(cfg, _label({1: 1.0, 2: 1.0}))
    assert (d.n_must, d.mask_ratio) == (2, 0.25) and {1, 2} <= set(d.masked.tolist())
    # exactly at the threshold does not count
    d = _route(cfg, _label({i: 0.5 for i in range(20)}))
    assert d.n_must == 0 and d.mask_ratio == 0.25
    # the routing threshold comes from the caller (the manifest)
    d = _route(cfg, _label({i: 0.5 for i in range(20)}), threshold=0.4)
    assert d.n_must == 20 and not d.final


def test_top_up_is_background_first(cfg):
    # classes: background 0 everywhere except patches 12..17 (class 2); 2 unknown patches
    other = {p: 2 for p in range(12, 18)}
    d = _route(cfg, _label({0: 1.0, 1: 1.0}, other=other))
    assert d.mask_ratio == 0.25
    masked = set(d.masked.tolist())
    assert {0, 1} <= masked
    assert not masked & set(range(12, 18))  # the top-up takes background patches, not the objects


def test_more_unknown_than_largest_engine_needs_passes(cfg):
    shares = {i: 1.0 for i in range(12)}
    shares.update({i: 0.75 for i in range(12, 22)})  # 22 must-patches > 18
    lab = _label(shares)
    d = _route(cfg, lab)
    assert d.n_must == 22 and not d.final and d.mask_ratio == 0.75
    masked = set(d.masked.tolist())
    assert set(range(12)) <= masked  # the most-unknown patches go first
    assert len(masked) == 18  # an intermediate pass masks all the largest engine can (0.75 * 24)
    # an intermediate pass: its predictions for its patches become known
    logits = np.random.default_rng(0).normal(size=(5, H, W)).astype(np.float32)
    work = apply_pass(lab, logits, d, cfg)
    region = patch_region(cfg, d.masked, lab.shape)
    assert (work[region] != 255).all()
    assert (work[lab != 255] == lab[lab != 255]).all()  # known pixels kept
    d2 = _route(cfg, work)
    assert d2.final and d2.n_must == 22 - 18 and d2.mask_ratio == 0.25


def test_passes_end_to_end_fill_every_pixel(completer):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
    lab = np.full((80, 120), 255, np.uint8)
    lab[:6, :6] = 1  # almost nothing known
    r = completer.complete(img, lab)
    assert r.passes >= 2 and r.mask_ratio == 0.75
    assert (r.label != 255).all()
    assert (r.label[:6, :6] == 1).all()
    # nothing known at all: still completes, never leaves unknown pixels silently
    r = completer.complete(img, np.full((80, 120), 255, np.uint8))
    assert r.passes >= 2 and (r.label != 255).all() and r.filled == 80 * 120


def test_routing_inside_completer_uses_smallest_engine(completer):
    img = np.zeros((H, W, 3), np.uint8)
    assert completer.complete(img, _label({0: 1.0})).mask_ratio == 0.25
    assert completer.complete(img, _label({i: 1.0 for i in range(10)})).mask_ratio == 0.5
    r = completer.complete(img, _label({i: 1.0 for i in range(16)}))
    assert (r.mask_ratio, r.passes) == (0.75, 1)
