import numpy as np
import pytest
from PIL import Image

from lmae_sdk.degrade import degrade
from lmae_sdk.labels import (InputError, label_planes, nearest_known, prior_planes, read_label, resize_logits,
                             upsampled_prediction, write_label)
from lmae_sdk.metrics import CompletionMeter, confusion, iou_per_class, mean_iou
from lmae_sdk.preprocess import finish


def test_pa_miou_on_hand_made_arrays():
    gt = np.array([[0, 0, 1, 1], [2, 2, 1, 255]], np.uint8)
    partial = np.array([[0, 255, 255, 1], [255, 2, 255, 255]], np.uint8)
    completed = np.array([[0, 0, 0, 1], [2, 2, 1, 1]], np.uint8)
    m = CompletionMeter(3)
    m.update(completed, gt, partial)
    s = m.summary()
    # unknown pixels with GT: (0,1) gt0 pred0, (0,2) gt1 pred0, (1,0) gt2 pred2, (1,2) gt1 pred1; (1,3) void
    # IoU: class0 = 1/2, class1 = 1/2, class2 = 1/1
    assert s["pa_miou"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert s["pa_pixel_acc"] == pytest.approx(75.0)
    # global: 7 valid pixels, one wrong
    assert s["global_pixel_acc"] == pytest.approx(100 * 6 / 7)


def test_pixels_left_unknown_count_as_misses():
    gt = np.array([[0, 1]], np.uint8)
    partial = np.array([[255, 255]], np.uint8)
    m = CompletionMeter(2)
    m.update(np.array([[0, 255]], np.uint8), gt, partial)
    assert m.summary()["pa_pixel_acc"] == pytest.approx(50.0)


def test_confusion_and_iou_absent_class_is_nan():
    c = confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    iou = iou_per_class(c)
    assert np.isnan(iou[2]) and iou[0] == pytest.approx(0.5)
    assert mean_iou(c) == pytest.approx((0.5 + 0.5) / 2)


def test_soft_planes_keep_thin_structures_nearest_may_drop_them():
    lab = np.zeros((64, 64), np.uint8)
    lab[:, 31] = 1  # a 1-px pole
    soft = label_planes(lab, 2, (16, 16), "soft")
    assert soft[1].sum() > 0 and np.allclose(soft.sum(0), 1.0)
    lab[10:20, 10:20] = 255
    soft = label_planes(lab, 2, (16, 16), "soft")
    assert soft.sum(0).min() < 1.0  # unknown mass is missing, not spread


def test_nearest_known_and_prior():
    lab = np.full((8, 8), 255, np.uint8)
    lab[:, :2] = 0
    lab[:, 6:] = 1
    ids, dist = nearest_known(lab)
    assert (ids[:, :4] == 0).all() and (ids[:, 5:] == 1).all()
    assert dist[0, 0] == 0 and dist[0, 3] > dist[0, 2] > 0
    pri = prior_planes(lab, 2, (8, 8))
    assert pri.shape == (3, 8, 8) and np.allclose(pri[:2].sum(0), 1.0)
    ids, dist = nearest_known(np.full((4, 4), 255, np.uint8))
    assert (ids == 255).all() and np.isinf(dist).all()


@pytest.mark.parametrize("strategy", ["random", "background", "label", "blocks", "objects"])
def test_degrade_ratio_and_input_untouched(strategy):
    rng = np.random.default_rng(0)
    lab = np.zeros((96, 128), np.uint8)
    lab[20:60, 30:90] = 1
    lab[70:90, 10:40] = 2
    lab[:, 100:103] = 3
    before = lab.copy()
    out = degrade(lab, 0.5, strategy, rng, patch=16)
    np.testing.assert_array_equal(lab, before)
    frac = (out == 255).mean()
    assert 0.25 < frac < 0.8, frac
    assert ((out == lab) | (out == 255)).all()


def test_finish_never_changes_known_pixels():
    rng = np.random.default_rng(0)
    partial = rng.integers(0, 4, (30, 40)).astype(np.uint8)
    partial[5:20, 5:25] = 255
    logits = rng.normal(size=(4, 16, 16)).astype(np.float32)
    out, conf = finish(logits, partial)
    known = partial != 255
    np.testing.assert_array_equal(out[known], partial[known])
    assert (out[~known] < 4).all() and (conf[known] == 1).all() and (conf[~known] <= 1).all()
    out2, _ = finish(logits, partial, min_confidence=0.99)
    assert (out2[~known] == 255).any()


def test_read_label_refuses_rgb_and_16bit(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n0000")
    with pytest.raises(InputError, match="rgb.png: RGB colour label"):
        read_label(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="deep.png: 16/32-bit"):
        read_label(tmp_path / "deep.png")
    with pytest.raises(InputError, match="trunc.png: unreadable"):
        read_label(tmp_path / "trunc.png")


def test_write_label_palette_round_trip(tmp_path):
    lab = np.array([[0, 1], [2, 255]], np.uint8)
    write_label(tmp_path / "p.png", lab, [[0, 0, 0], [255, 0, 0], [0, 255, 0]])
    back, pal = read_label(tmp_path / "p.png")
    np.testing.assert_array_equal(back, lab)
    assert pal[1] == [255, 0, 0]
    assert not list(tmp_path.glob(".*tmp"))


def test_near_copy_takes_the_nearest_known_label_close_to_known_pixels():
    partial = np.zeros((20, 20), np.uint8)
    partial[:, 10:] = 1
    partial[:, 8:12] = 255  # a 4-px-wide hole on the 0|1 boundary
    logits = np.zeros((2, 20, 20), np.float32)
    logits[1] = 5.0  # the model says class 1 everywhere
    out, conf = finish(logits, partial)
    assert (out[:, 8:12] == 1).all()
    out, conf = finish(logits, partial, near_copy_px=1.5)
    assert (out[:, 8] == 0).all() and (out[:, 11] == 1).all()  # 1 px from known: copied
    assert conf[0, 8] < 0.01  # the model's probability of the copied class
    np.testing.assert_array_equal(out[partial != 255], partial[partial != 255])


@pytest.mark.parametrize("size", [(8, 12), (21, 30)])
def test_upsampled_prediction_matches_resize_then_softmax(size):
    rng = np.random.default_rng(1)
    logits = (3 * rng.standard_normal((5, 8, 12))).astype(np.float32)
    logits[:, 0, 0] = 1.0  # a tie: argmax keeps the first class
    pred, conf = upsampled_prediction(logits, size)
    full = resize_logits(logits, size)
    p = np.exp(full - full.max(0)) / np.exp(full - full.max(0)).sum(0)
    ref_pred, ref_conf = full.argmax(0), p.max(0)
    np.testing.assert_array_equal(pred, ref_pred)
    np.testing.assert_allclose(conf, ref_conf, rtol=1e-5)
    forced = np.full(size, 255, np.uint8)
    forced[::3, ::2] = rng.integers(0, 5, forced[::3, ::2].shape)
    fpred, fconf = upsampled_prediction(logits, size, forced)
    sel = forced != 255
    np.testing.assert_array_equal(fpred[sel], forced[sel])
    np.testing.assert_array_equal(fpred[~sel], ref_pred[~sel])
    ys, xs = np.nonzero(sel)
    np.testing.assert_allclose(fconf[sel], p[forced[sel], ys, xs], rtol=1e-5)
