"""Property: a completion never changes a known pixel of the partial label.

Over random images and partial labels (sizes, hole shapes, scattered unknown pixels, fully
known and fully unknown labels), through the API (``complete`` and ``complete_batch`` with
one and two lanes) and through the CLI (``lmae complete``).  The completer is the product's
full recipe with random weights: geodesic prior, learned boundary net and hole-aware pixel
fusion, the finish that has the most freedom to move a pixel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lmae_sdk.labels import read_label, write_label

NUM_CLASSES = 5
MODEL = (64, 96)
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture(scope="module")
def full_recipe_ckpt(tmp_path_factory):
    from lmae_sdk.boundaries import BoundaryNet, BoundarySpec
    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
    from lmae_sdk.fusion import FEATURES_BY_VERSION, PixelFusion
    from lmae_sdk.model import LMAE, make_config

    torch.manual_seed(0)
    model = LMAE(make_config("tiny", NUM_CLASSES, img_size=MODEL, geodesic_boundary_weight=300.0))
    ck = make_checkpoint(model, class_names=list("abcde"), palette=None, mask_ratios=[0.5, 0.75],
                         label_resize="soft", unknown_threshold=0.5)
    ck["boundary_net"] = {**BoundarySpec(4, MODEL).to_dict(), "state_dict": BoundaryNet(4).state_dict()}
    rng = np.random.default_rng(0)
    features = FEATURES_BY_VERSION[max(FEATURES_BY_VERSION)]
    f, h = len(features), 8
    ck["fusion"] = PixelFusion([(rng.normal(0, 1, (f, h)), rng.normal(0, 0.1, h)),
                                (rng.normal(0, 1, (h, 1)), np.zeros(1))], rng.normal(0, 0.3, NUM_CLASSES),
                               features=features).to_dict()
    path = tmp_path_factory.mktemp("ck") / "full.pt"
    save_checkpoint(ck, path)
    return path


@pytest.fixture(scope="module")
def completer(full_recipe_ckpt):
    from lmae_sdk import LMAECompleter

    c = LMAECompleter.load(full_recipe_ckpt, threads=1)
    assert c.fusion is not None and c.boundaries is not None  # the recipe's finish is under test
    return c


@st.composite
def partial_pairs(draw, max_side: int = 120):
    """(image RGB uint8, partial label uint8 with 255 = unknown)."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if draw(st.booleans()):  # smooth regions, as in photos
        image = np.repeat(np.repeat(image[::8, ::8], 8, 0), 8, 1)[:h, :w].copy()
    label = rng.integers(0, NUM_CLASSES, (max(1, h // 10 + 1), max(1, w // 10 + 1))).astype(np.uint8)
    label = np.repeat(np.repeat(label, 10, 0), 10, 1)[:h, :w].copy()
    kind = draw(st.sampled_from(["blocks", "scattered", "all_unknown", "all_known", "bands"]))
    if kind == "blocks":
        for _ in range(draw(st.integers(1, 5))):
            y, x = rng.integers(0, h), rng.integers(0, w)
            label[y: y + rng.integers(1, h + 1), x: x + rng.integers(1, w + 1)] = 255
    elif kind == "scattered":
        label[rng.random((h, w)) < draw(st.floats(0.05, 0.95))] = 255
    elif kind == "all_unknown":
        label[:] = 255
    elif kind == "bands":  # thin unknown bands along class edges, as coarse polygons leave
        edge = np.zeros((h, w), bool)
        edge[1:] |= label[1:] != label[:-1]
        edge[:, 1:] |= label[:, 1:] != label[:, :-1]
        label[edge] = 255
    return image, label


def _check(label: np.ndarray, completed: np.ndarray) -> None:
    known = label != 255
    assert completed.shape == label.shape and completed.dtype == np.uint8
    np.testing.assert_array_equal(completed[known], label[known])
    if known.any():  # with a known pixel, every hole is filled with a class
        assert (completed < NUM_CLASSES).all()


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURES)
@given(pair=partial_pairs(), tile=st.booleans())
def test_complete_keeps_known_pixels(completer, pair, tile):
    image, label = pair
    before = label.copy()
    r = completer.complete(image, label, tile=tile, tile_scale=0.7)
    np.testing.assert_array_equal(label, before)  # the input is not modified either
    _check(label, r.label)


@settings(max_examples=6, deadline=None, suppress_health_check=FIXTURES)
@given(pairs=st.lists(partial_pairs(), min_size=1, max_size=5), lanes=st.sampled_from([1, 2]),
       batch_size=st.integers(1, 3), min_confidence=st.sampled_from([0.0, 0.6]))
def test_complete_batch_keeps_known_pixels(completer, pairs, lanes, batch_size, min_confidence):
    results = list(completer.complete_batch(pairs, batch_size=batch_size, lanes=lanes,
                                            min_confidence=min_confidence))
    assert len(results) == len(pairs)
    for (image, label), r in zip(pairs, results):
        assert r.ok, r.error
        known = label != 255
        np.testing.assert_array_equal(r.label[known], label[known])  # below min_confidence: left unknown


@settings(max_examples=4, deadline=None, suppress_health_check=FIXTURES)
@given(pairs=st.lists(partial_pairs(max_side=80), min_size=1, max_size=3))
def test_cli_complete_keeps_known_pixels(full_recipe_ckpt, tmp_path_factory, pairs):
    from lmae_sdk.cli import main as lmae

    root = tmp_path_factory.mktemp("cli")
    imgs, labs, out = root / "images", root / "labels", root / "out"
    imgs.mkdir()
    labs.mkdir()
    for i, (image, label) in enumerate(pairs):
        Image.fromarray(image).save(imgs / f"p{i}.png")
        write_label(labs / f"p{i}.png", label)
    r = CliRunner().invoke(lmae, ["complete", "--model", str(full_recipe_ckpt), "--images", str(imgs),
                                  "--labels", str(labs), "--out", str(out), "--threads", "1", "--lanes", "1",
                                  "--workers", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    for i, (_, label) in enumerate(pairs):
        _check(label, read_label(out / f"p{i}.png")[0])
        np.testing.assert_array_equal(read_label(labs / f"p{i}.png")[0], label)  # input files untouched
