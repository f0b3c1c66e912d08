import cv2
import numpy as np
import pytest
from PIL import Image

from lmae_sdk.degrade import degrade
from lmae_sdk.labels import InputError, read_label, write_label
from lmae_sdk.planes import area_one_hot, label_planes, one_hot, prior_planes, resize_planes
from lmae_sdk.propagation import geodesic_nearest, geodesic_propagate, nearest_known, propagate
from lmae_sdk.upsampling import resize_logits, upsampled_prediction
from lmae_sdk.metrics import CompletionMeter, confusion, iou_per_class, mean_iou
from lmae_sdk.pipeline import CompletionSettings, finish

SETTINGS = CompletionSettings(list("abcde"))  # the argmax finishing rule, 255 = unknown


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


@pytest.mark.parametrize("src,dst", [((360, 480), (224, 288)), ((360, 480), (180, 240)), ((97, 131), (32, 48)),
                                     ((40, 40), (40, 40)), ((30, 50), (64, 40))])
def test_area_one_hot_equals_per_plane_opencv_area_resize(src, dst):
    rng = np.random.default_rng(3)
    label = rng.integers(0, 8, src).astype(np.uint8)
    label[label == 7] = 255  # unknown pixels: no mass in any plane
    label[:, : src[1] // 3] = 2  # a large region, so fractions are not all tiny
    got = area_one_hot(label, 6, dst)  # ids 6 (a class >= N) also count as no mass
    ref = resize_planes(one_hot(label, 6), dst, cv2.INTER_AREA)
    assert got.shape == (6, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.abs(got[2]).max() > 0.99


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


@pytest.mark.parametrize("transpose", [False, True])
def test_geodesic_nearest_stops_at_image_edges(transpose):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 25:] = 255  # an object edge at column 25
    lab = np.full((20, 40), 255, np.uint8)
    lab[:, :23] = 0
    lab[:, 36:] = 1
    if transpose:  # the same scene on columns: exercises the vertical sweeps
        img, lab = img.transpose(1, 0, 2).copy(), lab.T.copy()
    before = lab.copy()
    geo = geodesic_nearest(img, lab)
    euc = nearest_known(lab)[0]
    if transpose:
        geo, euc = geo.T, euc.T
    assert (lab == before).all()  # input untouched
    assert (geo[:, :25] == 0).all() and (geo[:, 25:] == 1).all()  # the hole splits at the edge
    assert (euc[:, 27] == 0).all()  # where plain nearest leaks class 0 across it


def _dijkstra_labels(img: np.ndarray, lab: np.ndarray, edge_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference: exact 4-connected geodesic nearest label and the gap to the best other label."""
    import heapq

    g = img.astype(np.float64) / 255
    h, w = lab.shape
    best = {}
    for c in np.unique(lab[lab != 255]):
        d = np.full((h, w), np.inf)
        heap = [(0.0, y, x) for y, x in zip(*np.nonzero(lab == c))]
        for _, y, x in heap:
            d[y, x] = 0.0
        while heap:
            dv, y, x = heapq.heappop(heap)
            if dv > d[y, x]:
                continue
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w:
                    nd = dv + 1 + edge_weight * np.abs(g[yy, xx] - g[y, x]).sum()
                    if nd < d[yy, xx]:
                        d[yy, xx] = nd
                        heapq.heappush(heap, (nd, yy, xx))
        best[int(c)] = d
    classes = sorted(best)
    stack = np.stack([best[c] for c in classes])
    order = np.sort(stack, axis=0)
    gap = order[1] - order[0] if len(classes) > 1 else np.full((h, w), np.inf)
    return np.asarray(classes)[stack.argmin(0)], gap, order[0]


@pytest.mark.parametrize("backend", ["auto", "numpy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geodesic_nearest_matches_dijkstra(seed, backend):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (12, 15, 3)).astype(np.uint8)
    lab = np.where(rng.random((12, 15)) < 0.15, rng.integers(0, 3, (12, 15)), 255).astype(np.uint8)
    ref, gap, ref_cost = _dijkstra_labels(img, lab, edge_weight=2.0)
    got, cost = geodesic_propagate(img, lab, edge_weight=2.0, blur_sigma=0, rounds=12,  # enough sweeps to converge
                                   backend=backend)
    clear = gap > 1e-3  # ties may go either way
    assert clear.mean() > 0.8
    assert (got[clear] == ref[clear]).all()
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-4, atol=1e-3)  # the path cost is the geodesic distance


def test_compiled_and_numpy_geodesic_sweeps_agree():
    pytest.importorskip("numba", reason="numba not installed: only the numpy sweeps exist here")
    rng = np.random.default_rng(5)
    img = cv2.resize(rng.integers(0, 256, (12, 16, 3)).astype(np.uint8), (160, 120), interpolation=cv2.INTER_NEAREST)
    lab = cv2.resize(rng.integers(0, 4, (6, 8)).astype(np.uint8), (160, 120), interpolation=cv2.INTER_NEAREST)
    lab[rng.random((120, 160)) < 0.6] = 255
    ids_c, cost_c = geodesic_propagate(img, lab, edge_weight=1000.0, blur_sigma=1.2)
    ids_n, cost_n = geodesic_propagate(img, lab, edge_weight=1000.0, blur_sigma=1.2, backend="numpy")
    assert (ids_c == ids_n).mean() > 0.999  # float rounding may flip an exact tie
    np.testing.assert_allclose(cost_c, cost_n, rtol=1e-3, atol=1e-2)


def test_compiled_colour_step_costs_equal_numpy_bit_for_bit(monkeypatch):
    pytest.importorskip("numba", reason="numba not installed: only the numpy step costs exist here")
    import lmae_sdk.propagation as L

    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    boundary = rng.random((2, 37, 53)).astype(np.float32)
    got = [L._step_costs(img, 1000.0, b, boundary, 3000.0, 2.0) for b in (0, 1.2)]
    monkeypatch.setattr(L, "_compiled_colour_steps", lambda: None)
    want = [L._step_costs(img, 1000.0, b, boundary, 3000.0, 2.0) for b in (0, 1.2)]
    for (gx, gy), (wx, wy) in zip(got, want):
        assert gx[:, 1:].min() > 1 and (gx[:, 0] == 0).all() and (gy[0] == 0).all()
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


def test_known_distance_is_nearest_knowns_distance():
    from lmae_sdk.propagation import known_distance

    rng = np.random.default_rng(7)
    lab = rng.integers(0, 3, (40, 60)).astype(np.uint8)
    lab[rng.random((40, 60)) < 0.7] = 255
    lab[5:30, 10:50] = 255
    np.testing.assert_allclose(known_distance(lab), nearest_known(lab)[1], atol=1e-3)
    assert known_distance(lab).dtype == np.float32 and (known_distance(lab)[lab != 255] == 0).all()
    assert np.isinf(known_distance(np.full((4, 5), 255, np.uint8))).all()
    assert (known_distance(np.zeros((4, 5), np.uint8)) == 0).all()
    # geodesic propagation reads its distance plane from it (the ids from the sweeps)
    img = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    prop = propagate(lab, img, "geodesic", edge_weight=1000.0, blur_sigma=1.2)
    np.testing.assert_allclose(prop.distance, nearest_known(lab)[1], atol=1e-3)
    assert (prop.ids[lab != 255] == lab[lab != 255]).all() and (prop.ids != 255).all()


def test_path_cost_plane_marks_holes_behind_image_edges():
    img = np.zeros((32, 64, 3), np.uint8)
    img[8:24, 40:56] = 255  # a bright object
    lab = np.zeros((32, 64), np.uint8)
    lab[8:24, 8:24] = 255  # a hole in the same flat surface
    lab[8:24, 40:56] = 255  # the object removed whole
    prop = propagate(lab, img, "geodesic", edge_weight=1000.0, blur_sigma=0)
    plane = prior_planes(lab, 2, (32, 64), propagated=prop, path_cost_plane=True)[-1]
    assert plane.shape == (32, 64) and plane.min() >= 0 and plane.max() <= 1
    assert plane[16, 48] > 2 * plane[16, 16]  # reaching the object's inside crosses its edge
    assert plane[0, 0] == 0  # known pixels
    with pytest.raises(ValueError, match="geodesic"):
        prior_planes(lab, 2, (32, 64), path_cost_plane=True)  # Euclidean propagation has no path cost


def test_prior_modes():
    img = np.zeros((8, 8, 3), np.uint8)
    lab = np.full((8, 8), 255, np.uint8)
    lab[:, :2] = 0
    lab[:, 6:] = 1
    pri = prior_planes(lab, 2, (8, 8), image=img, mode="geodesic")
    assert np.allclose(pri, prior_planes(lab, 2, (8, 8)))  # flat image: no edges to respect
    with pytest.raises(ValueError, match="needs the image"):
        prior_planes(lab, 2, (8, 8), mode="geodesic")
    with pytest.raises(ValueError, match="prior mode"):
        prior_planes(lab, 2, (8, 8), mode="bilateral")


@pytest.mark.parametrize("strategy", ["random", "background", "label", "blocks", "objects", "bands"])
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
    out, conf = finish(logits, partial, SETTINGS)
    known = partial != 255
    np.testing.assert_array_equal(out[known], partial[known])
    assert (out[~known] < 4).all() and (conf[known] == 1).all() and (conf[~known] <= 1).all()
    out2, _ = finish(logits, partial, SETTINGS, min_confidence=0.99)
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


def test_class_max_equals_numpy_max_and_first_argmax(monkeypatch):
    import lmae_sdk.upsampling as L

    rng = np.random.default_rng(3)
    planes = rng.standard_normal((7, 13, 17)).astype(np.float32)
    planes[:, 0, :5] = 0.25  # ties: the first class wins
    got = [L.class_max(planes)]
    monkeypatch.setattr(L, "_compiled_class_max", lambda: None)  # the numpy form
    got.append(L.class_max(planes))
    for top, arg in got:
        np.testing.assert_array_equal(top, planes.max(0))
        np.testing.assert_array_equal(arg, planes.argmax(0))
        assert arg.dtype == np.uint8 and (arg[0, :5] == 0).all()


def test_normalize_image_compiled_equals_numpy_bit_for_bit(monkeypatch):
    import lmae_sdk.planes as L

    img = np.random.default_rng(4).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    got = L.normalize_image(img, (24, 32))
    monkeypatch.setattr(L, "_compiled_normalize", lambda: None)
    want = L.normalize_image(img, (24, 32))
    assert got.shape == (3, 24, 32) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_jpeg_read_matches_pillow_and_a_truncated_file_is_refused(tmp_path):
    from lmae_sdk.labels import read_image

    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.integers(0, 256, (40, 56, 3)).astype(np.uint8), (0, 0), 2)
    path = tmp_path / "a.jpg"
    Image.fromarray(img).save(path, quality=90)
    got = read_image(path)
    np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")))
    data = path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")


def test_grey_label_png_round_trip(tmp_path):
    lab = np.random.default_rng(6).integers(0, 12, (33, 47)).astype(np.uint8)
    lab[:5] = 255
    write_label(tmp_path / "l.png", lab)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "L"
    got, palette = read_label(tmp_path / "l.png")
    assert palette is None
    np.testing.assert_array_equal(got, lab)


def test_finish_without_confidence_gives_the_same_labels():
    rng = np.random.default_rng(7)
    logits = (3 * rng.standard_normal((5, 8, 12))).astype(np.float32)
    partial = rng.integers(0, 5, (21, 30)).astype(np.uint8)
    partial[5:15, 4:20] = 255
    with_conf, conf = finish(logits, partial, SETTINGS)
    without, none = finish(logits, partial, SETTINGS, confidence=False)
    assert none is None and conf is not None
    np.testing.assert_array_equal(without, with_conf)
    gated, conf2 = finish(logits, partial, SETTINGS, min_confidence=0.6, confidence=False)  # needs it: computed
    assert conf2 is not None and (gated[conf2 < 0.6] == 255).all()


@pytest.mark.parametrize("size", [(21, 30), (40, 61)])
def test_fill_argmax_is_the_upsampled_argmax_where_asked(size, monkeypatch):
    import lmae_sdk.upsampling as L

    rng = np.random.default_rng(9)
    logits = cv2.GaussianBlur(rng.standard_normal((16, 24, 6)).astype(np.float32) * 8, (0, 0), 1.5)
    logits = np.ascontiguousarray(logits.transpose(2, 0, 1))
    where = rng.random(size) < 0.5
    full = resize_logits(logits, size)
    ranked = np.sort(full, 0)
    clear = (ranked[-1] - ranked[-2]) > 1e-4  # not a near tie: the answer cannot depend on rounding
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(L, "_compiled_upsampled_argmax", lambda: None)
        out = np.full(size, 77, np.uint8)
        L.fill_argmax(logits, where, out)
        assert (out[~where] == 77).all()
        np.testing.assert_array_equal(out[where & clear], full.argmax(0)[where & clear])
