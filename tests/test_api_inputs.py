"""What ``LMAECompleter.complete`` / ``complete_batch`` accept: the channel order of image
arrays, min_confidence in [0, 1], and a clear InputError for every malformed pair, raised
before any work (a batch with on_error="return" reports the pair and carries on)."""
import re

import numpy as np
import pytest
from PIL import Image

from lmae_sdk.labels import InputError
from lmae_sdk.runtime import image_pipeline


@pytest.fixture(scope="module")
def completer(ckpt):
    from lmae_sdk import LMAECompleter

    return LMAECompleter.load(ckpt, backend="torch", threads=1)


def _pair(seed=0, h=48, w=72):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[:, : w // 2, 0] = 250  # a colour structure that the channel order changes
    lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
    lab[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return img, lab


def test_bgr_arrays_with_channels_bgr_give_the_rgb_result(completer, tmp_path):
    img, lab = _pair()
    rgb = completer.complete(img, lab)
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    as_bgr = completer.complete(bgr, lab, channels="bgr")
    np.testing.assert_array_equal(as_bgr.label, rgb.label)
    np.testing.assert_array_equal(as_bgr.confidence, rgb.confidence)
    # the model does see the order: the same array read as RGB gives other probabilities
    assert not np.array_equal(completer.complete(bgr, lab).confidence, rgb.confidence)
    bgra = np.concatenate([bgr, np.full(lab.shape + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(completer.complete(bgra, lab, channels="bgr").confidence, rgb.confidence)
    (batched,) = completer.complete_batch([(bgr, lab)], channels="bgr")
    np.testing.assert_array_equal(batched.confidence, rgb.confidence)
    # files are decoded to RGB whatever the arrays' order
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    np.testing.assert_array_equal(completer.complete(path, lab, channels="bgr").confidence, rgb.confidence)


@pytest.mark.parametrize("channels", ["BGR", "rgba", None, 3])
def test_unknown_channel_orders_are_refused(completer, channels):
    img, lab = _pair()
    with pytest.raises(ValueError, match=f"channels must be 'rgb' or 'bgr', got {channels!r}"):
        completer.complete(img, lab, channels=channels)
    with pytest.raises(ValueError, match="channels"):
        completer.complete_batch([(img, lab)], channels=channels)  # refused when called, before iterating


@pytest.mark.parametrize("value", [2, -1, 1.0001, float("nan"), "0.5", None, True])
def test_min_confidence_outside_0_1_is_refused(completer, value):
    img, lab = _pair()
    with pytest.raises(ValueError, match=rf"min_confidence must be a number in \[0, 1\], got {value!r}"):
        completer.complete(img, lab, min_confidence=value)
    with pytest.raises(ValueError, match="min_confidence"):
        completer.complete_batch([(img, lab)], min_confidence=value)


def test_min_confidence_bounds_are_accepted(completer):
    img, lab = _pair()
    hole = lab == 255
    assert completer.complete(img, lab, min_confidence=0).unreliable == 0
    r = completer.complete(img, lab, min_confidence=1)
    assert r.unreliable + r.filled == hole.sum() and r.unreliable > 0


@pytest.mark.parametrize("batch_size", [0, -2])
def test_batch_size_below_one_is_refused(completer, batch_size):
    with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {batch_size}"):
        completer.complete_batch([_pair()], batch_size=batch_size)


IMG, LAB = _pair()
BAD_PAIRS = {
    "empty image": (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.uint8), "image is 0x0"),
    "no columns": (np.zeros((10, 0, 3), np.uint8), np.zeros((10, 0), np.uint8), "image is 0x10"),
    "float image": (IMG.astype(np.float32), LAB, r"image dtype float32; expected uint8"),
    "two channels": (IMG[:, :, :2], LAB, r"image has 2 channels"),
    "five channels": (np.dstack([IMG, IMG[:, :, :2]]), LAB, r"image has 5 channels"),
    "4-D image": (IMG[None], LAB, r"image shape \(1, 48, 72, 3\)"),
    "no image": (None, LAB, "image is None"),
    "no label": (IMG, None, "label is None"),
    "3-D label": (IMG, LAB[:, :, None], r"label shape \(48, 72, 1\); expected \(H, W\)"),
    "float label": (IMG, LAB.astype(np.float32), "label dtype float32; expected integer class ids"),
    "bool label": (IMG, LAB > 2, "label dtype bool; expected integer class ids"),
    "negative label": (IMG, LAB.astype(np.int16) - 1, r"label values -1\.\.254 outside 0\.\.255"),
    "size mismatch": (IMG, LAB[:-1], "label size 72x47 differs from the image's 72x48"),
    "unknown class": (IMG, np.where(LAB == 4, 7, LAB).astype(np.uint8), "class ids"),
}


@pytest.mark.parametrize("case", list(BAD_PAIRS))
def test_bad_pairs_are_clear_input_errors_before_any_work(completer, case, monkeypatch):
    image, label, message = BAD_PAIRS[case]

    def no_work(*a, **k):
        raise AssertionError("a bad pair reached the pipeline")

    monkeypatch.setattr(image_pipeline, "prepare", no_work)
    monkeypatch.setattr(image_pipeline, "propagate_for", no_work)
    with pytest.raises(InputError, match=message):
        completer.complete(image, label)


def test_a_batch_reports_bad_pairs_and_completes_the_rest(completer):
    good = _pair(3)
    bad = [(image, label) for image, label, _ in BAD_PAIRS.values()]
    pairs = [good] + bad + [good]
    results = list(completer.complete_batch(pairs, batch_size=4, on_error="return"))
    assert [r.ok for r in results] == [True] + [False] * len(bad) + [True]
    for r, (_, _, message) in zip(results[1:-1], BAD_PAIRS.values()):
        assert isinstance(r.error, InputError) and r.label is None
        assert re.search(message, str(r.error)), str(r.error)
    np.testing.assert_array_equal(results[0].label, results[-1].label)
    with pytest.raises(InputError, match="image is 0x0"):
        list(completer.complete_batch([good, bad[0]], on_error="raise"))


def test_grey_images_with_one_channel_equal_2d_grey(completer):
    img, lab = _pair(5)
    grey = img[:, :, 1]
    np.testing.assert_array_equal(completer.complete(grey[:, :, None], lab).confidence,
                                  completer.complete(grey, lab).confidence)
