"""Pixel fusion: per-class geodesic costs, the fused decision, fitting, checkpoint and bundle."""
import json
import time

import numpy as np
import pytest
import torch

from lmae_sdk.degrade import degrade
from lmae_sdk.fusion import (FEATURES_BY_VERSION, FUSION_FEATURES, NEAREST_FEATURES, FusionError, PixelFusion,
                              class_distances, extra_features, hole_features, hole_log_probs, line_features,
                              pixel_features)
import lmae_sdk.propagation as propagation_module
from lmae_sdk.propagation import (NO_PATH, cheapest_class, geodesic_class_costs, geodesic_propagate, nearest_fill,
                                  propagate)
from lmae_sdk.upsampling import upsampled_prediction
from lmae_sdk.pipeline import CompletionSettings, SettingsError, finish


def _scene(seed=0, n=4):
    """A blocky image whose label follows it, with random holes."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, n, (6, 8)), np.ones((10, 10), np.int64)).astype(np.uint8)
    colours = rng.integers(0, 256, (n, 3))
    image = (colours[label] + rng.normal(0, 4, label.shape + (3,))).clip(0, 255).astype(np.uint8)
    partial = degrade(label, 0.5, "random", rng, patch=10)
    return image, label, partial


@pytest.mark.parametrize("seed", [0, 1])
def test_class_costs_min_and_argmin_are_geodesic_propagation(monkeypatch, seed):
    image, _, partial = _scene(seed)
    partial[partial == 3] = 255  # class 3 has no known pixel
    costs = geodesic_class_costs(image, partial, 5, edge_weight=300, blur_sigma=1)
    ids, cost = geodesic_propagate(image, partial, edge_weight=300, blur_sigma=1)
    hole = partial == 255
    assert costs.shape == partial.shape + (5,)
    assert (costs[..., 3] == NO_PATH).all() and (costs[..., 4] == NO_PATH).all()
    np.testing.assert_array_equal(costs.argmin(-1)[hole], ids[hole])
    np.testing.assert_allclose(costs.min(-1)[hole], cost[hole], rtol=1e-6)
    slow = geodesic_class_costs(image, partial, 5, edge_weight=300, blur_sigma=1, backend="numpy")
    np.testing.assert_allclose(slow, costs, rtol=1e-4, atol=1e-2)  # the numpy form sums by cumsum
    # propagate reads its ids / cost off the class costs when it computes them
    prop = propagate(partial, image, "geodesic", edge_weight=300, blur_sigma=1, num_classes=5)
    np.testing.assert_array_equal(prop.ids, np.where(hole, ids, partial))
    np.testing.assert_allclose(prop.path_cost, np.where(hole, cost, 0), rtol=1e-6)
    # the compiled and the numpy reading of the class costs agree, ties to the first class
    costs[..., 1] = costs[..., 0]
    compiled_ids, compiled_cost = cheapest_class(costs, partial)
    monkeypatch.setattr(propagation_module, "_compiled_cheapest_class", lambda: None)
    numpy_ids, numpy_cost = cheapest_class(costs, partial)
    np.testing.assert_array_equal(compiled_ids, numpy_ids)
    np.testing.assert_array_equal(compiled_cost, numpy_cost)
    assert not (numpy_ids[hole] == 1).any()


def _pass_through(feature: int, sign: float, hidden: int = 4, features: tuple[str, ...] = FUSION_FEATURES
                  ) -> PixelFusion:
    """A fusion whose score is sign * feature (relu(sign * f) carried through two layers)."""
    w1 = np.zeros((len(features), hidden), np.float32)
    w1[feature, 0] = sign
    w2 = np.eye(hidden, dtype=np.float32)
    w3 = np.zeros((hidden, 1), np.float32)
    w3[0, 0] = sign
    return PixelFusion([(w1, np.zeros(hidden)), (w2, np.zeros(hidden)), (w3, np.zeros(1))], np.zeros(5),
                       features=features)


def _settings(fusion: PixelFusion | None) -> CompletionSettings:
    return CompletionSettings(list("abcde"), fusion=fusion)


def test_fusion_reduces_to_the_copy_or_to_the_model_by_its_weights():
    image, _, partial = _scene(2)
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((5, 16, 24))).astype(np.float32)
    prop = propagate(partial, image, "geodesic", num_classes=5)
    hole = partial == 255
    as_copy, conf = finish(logits, partial, _settings(_pass_through(3, 1.0)), prop)  # is_nearest
    np.testing.assert_array_equal(as_copy[hole], prop.ids[hole])
    as_model, _ = finish(logits, partial, _settings(_pass_through(0, -1.0)), prop)  # log_prob
    model, _ = upsampled_prediction(logits, partial.shape)
    np.testing.assert_array_equal(as_model[hole], model[hole])
    for out in (as_copy, as_model):  # known pixels are never changed
        np.testing.assert_array_equal(out[~hole], partial[~hole])
    assert (conf[~hole] == 1).all() and (conf[hole] > 0).all() and (conf[hole] <= 1).all()
    with pytest.raises(ValueError, match="class costs"):
        finish(logits, partial, _settings(_pass_through(3, 1.0)), propagate(partial, image, "geodesic"))


def test_features_and_serialisation():
    image, _, partial = _scene(3)
    prop = propagate(partial, image, "geodesic", num_classes=5)
    logits = np.zeros((5, 16, 24), np.float32)
    idx, f = pixel_features(logits, partial, prop.class_costs)
    assert f.shape == (idx.size, 5, len(FUSION_FEATURES)) and idx.size == (partial == 255).sum()
    assert np.isfinite(f).all()
    np.testing.assert_allclose(f[..., 0], np.log(1 / 5), rtol=1e-6)  # flat logits: log(1/N)
    assert (f[..., 3].sum(1) >= 1).all()  # every hole pixel has a nearest class
    fusion = _pass_through(3, 1.0)
    again = PixelFusion.from_dict(json.loads(json.dumps(fusion.to_dict())))
    np.testing.assert_array_equal(again.scores(f), fusion.scores(f))
    with pytest.raises(FusionError, match="version"):
        PixelFusion.from_dict({**fusion.to_dict(), "version": 99})
    with pytest.raises(FusionError, match="format 2 was retired"):
        PixelFusion.from_dict({**fusion.to_dict(), "version": 2})
    # a checkpoint or manifest relying on a retired finishing rule says how to refit it
    for retired in ({"fusion": {**fusion.to_dict(), "version": 2}}, {"near_copy_px": 8.0}):
        with pytest.raises(SettingsError, match="lmae fit-fusion --ckpt"):
            CompletionSettings.from_dict({"class_names": list("abcde"), **retired}, "old.pt")
    with pytest.raises(FusionError, match="features"):
        PixelFusion.from_dict({**fusion.to_dict(), "features": ["log_prob"]})
    with pytest.raises(FusionError, match="chain"):
        PixelFusion([(np.zeros((3, 2)), np.zeros(2))], np.zeros(5))
    for rule in ("agree_skip_prob", "agree_skip_border", "min_log_prob"):  # a rule's number that is not one
        with pytest.raises(FusionError, match="old.json: malformed pixel fusion"):
            PixelFusion.from_dict({**fusion.to_dict(), rule: "high"}, "old.json")


def test_fit_fusion_calibrate_export_and_runtime(tmp_path, synth_root):
    from lmae_sdk import LMAECompleter
    from lmae_sdk.checkpoint import load_checkpoint
    from lmae_sdk.training.calibrate import calibrate
    from lmae_sdk.training.fusion_fit import fit_fusion
    from lmae_sdk.training.train import TrainConfig, train

    best = train(TrainConfig(data=str(synth_root), out=str(tmp_path / "f.pt"), preset="tiny", image_size=(64, 96),
                             epochs=1, batch_size=4, workers=0, threads=1, progress=False, warmup_epochs=0.5))
    fused = tmp_path / "fused.pt"
    info = fit_fusion(best, synth_root, fused, images=10, per_image=400, steps=60, log=lambda s: None)
    ck = load_checkpoint(fused)
    assert info["pixels"] > 1000 and ck["fusion"]["info"]["split"] == "train"
    fusion = PixelFusion.from_dict(ck["fusion"])
    assert fusion.num_classes == ck["config"]["num_classes"]
    assert "fusion" not in load_checkpoint(best)  # the input checkpoint is untouched

    # lmae fit gives the MLP a step cap it does not reach: the time share ends the fit
    t0 = time.time()
    timed = fit_fusion(best, synth_root, tmp_path / "timed.pt", images=10, per_image=400, steps=10**9,
                       minutes=0.05, log=lambda s: None)
    assert 0 < timed["steps"] < 10**9 and time.time() - t0 < 30

    r = calibrate(fused, synth_root, tmp_path / "cal.pt", thresholds=(0.5, 0.75), log=lambda s: None)
    assert [row["finishing_rule"] for row in r["rows"]] == ["pixel fusion"] * 2 + ["argmax"] * 2
    cal = load_checkpoint(tmp_path / "cal.pt")
    assert cal["unknown_threshold"] == r["chosen"]["unknown_threshold"]
    kept = r["finishing_rule"]["chosen"] == "pixel fusion"  # only when it beats the argmax on val
    means = r["finishing_rule"]["mean_pa_miou"]
    assert kept == (means["pixel fusion"] > means["argmax"]) and kept == bool(cal.get("fusion"))

    tc = LMAECompleter.load(fused, backend="torch", threads=1)
    assert tc.fusion is not None and "pixel fusion" in tc.describe()
    assert LMAECompleter.load(fused, backend="torch", threads=1, pixel_fusion=False).fusion is None
    image, _, partial = _scene(4)
    res = tc.complete(image, partial.copy())
    hole = partial == 255
    np.testing.assert_array_equal(res.label[~hole], partial[~hole])
    assert (res.label[hole] != 255).all()
    try:
        from lmae_sdk.export import export_bundle
    except ImportError as e:
        pytest.skip(f"lmae_sdk.export is unavailable: {e}")
    out = tmp_path / "bundle"
    export_bundle([fused], out, verify=False, lint=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fusion"] == json.loads(json.dumps(ck["fusion"]))
    graph = manifest["fusion_graph"]  # the fusion's scoring, exported as a graph
    assert graph["readiness"]["ok"] and graph["parity"]["passed"] and (out / graph["file"]).is_file()
    oc = LMAECompleter.load(out, backend="onnxruntime", threads=1)
    assert oc.fusion is not None and oc.fusion_scorer is not None and "fusion graph" in oc.describe()
    res_ort = oc.complete(image, partial.copy())
    assert (res_ort.label[hole] == res.label[hole]).mean() > 0.999
    np.testing.assert_array_equal(res_ort.label[~hole], partial[~hole])
    torch.set_num_threads(1)


def _without_kernels(monkeypatch) -> None:
    """The numpy forms of the fusion's compiled kernels (as without numba) for this test."""
    import lmae_sdk.fusion as fusion_module
    import lmae_sdk.fusion_inputs as inputs_module
    import lmae_sdk.fusion_rows as rows_module

    for module in (fusion_module, inputs_module, rows_module):
        monkeypatch.setattr(module, "compiled", lambda name: None)


def _dense_decision(fusion, logits, partial, costs, boundary, run):
    """The oracle: every class of every pixel in ``run`` scored by ``PixelFusion.scores``,
    the non-candidates dropped, argmax and softmax share."""
    from lmae_sdk.fusion import features_at
    from lmae_sdk.fusion_rows import candidate_mask

    idx = np.flatnonzero(run.reshape(-1))
    lp = hole_log_probs(logits, partial.shape, idx)
    s = fusion.scores(features_at(lp, partial, costs, idx, 255, boundary, fusion.features))
    s[~candidate_mask(lp, costs.reshape(-1, fusion.num_classes)[idx], class_distances(partial, idx, 5)[0],
                      fusion.min_log_prob)] = -np.inf
    s -= s.max(1, keepdims=True)
    return s.argmax(1), 1.0 / np.exp(s).sum(1)


@pytest.mark.parametrize("version", sorted(FEATURES_BY_VERSION))
@pytest.mark.parametrize("kernels", [True, False])
def test_rows_scored_in_batch_equal_every_class_scored_and_confident_agreement_is_kept(monkeypatch, version,
                                                                                        kernels):
    if not kernels:
        _without_kernels(monkeypatch)
    rng = np.random.default_rng(5)
    features = FEATURES_BY_VERSION[version]
    f, h = len(features), 8
    fusion = PixelFusion([(rng.normal(0, 1, (f, h)), rng.normal(0, 0.1, h)), (rng.normal(0, 0.5, (h, h)),
                          rng.normal(0, 0.1, h)), (rng.normal(0, 1, (h, 1)), np.zeros(1))], rng.normal(0, 0.3, 5),
                         features=features)
    image, _, partial = _scene(6)
    logits = (2 * rng.standard_normal((5, 16, 24))).astype(np.float32)
    # weak learned boundaries on the left (holes there may be skipped), strong ones on the right (never)
    noise = rng.random((2, *partial.shape))
    left = np.arange(partial.shape[1]) < partial.shape[1] // 2
    boundary = np.where(left, 0.1 * noise, 0.3 + 0.7 * noise).astype(np.float32)
    costs = propagate(partial, image, "geodesic", num_classes=5).class_costs
    slow, slow_conf = fusion.complete(logits, partial, costs, boundary=boundary)
    decided = slow_conf < 1 - 1e-6  # scored pixels (a sure agreement stands with its model probability)
    if version > 1:  # the hole features move the decision
        assert fusion.needs_boundary and PixelFusion.from_dict(fusion.to_dict()).features == features
        other, _ = fusion.complete(logits, partial, costs, boundary=1 - boundary)
        assert (other != slow).any()
        with pytest.raises(FusionError, match="boundary map"):
            fusion.complete(logits, partial, costs)
    hole = partial == 255
    lp = hole_log_probs(logits, partial.shape, np.flatnonzero(hole))  # what the fusion reads
    model, p_model = np.zeros(partial.shape, np.int64), np.ones(partial.shape, np.float32)
    model[hole], p_model[hole] = lp.argmax(1), np.exp(lp.max(1))
    assert (model[hole] == upsampled_prediction(logits, partial.shape)[0][hole]).mean() > 0.999
    cheap = hole & (model == costs.argmin(-1)) & (p_model >= fusion.agree_skip_prob)
    if NEAREST_FEATURES[0] in features:  # the class nearest-label fill copies, as the fusion measures it
        nearest = np.zeros(partial.shape, np.int64)
        nearest[hole] = class_distances(partial, np.flatnonzero(hole), 5)[0].argmin(1)
        cheap &= model == nearest
    if fusion.needs_boundary:  # in holes whose border is not outlined by class boundaries
        border = np.zeros(partial.shape, np.float32)
        border[hole] = hole_features(partial, boundary, 5, np.flatnonzero(hole))[1][:, 0]
        assert (border[hole] < fusion.agree_skip_border).any() and (border[hole] >= fusion.agree_skip_border).any()
        cheap &= border < fusion.agree_skip_border
    # (pixels at the skip rule's threshold to float rounding may fall either way)
    scored = hole & ~cheap & (np.abs(p_model - fusion.agree_skip_prob) > 1e-4)
    assert scored.sum() > 50 and decided[scored].any()
    want, want_conf = _dense_decision(fusion, logits, partial, costs, boundary, scored)
    assert (slow[scored] == want).mean() > 0.999
    np.testing.assert_allclose(slow_conf[scored], want_conf, atol=1e-4)
    # a scorer stands in for the host's MLP (the bundle's fusion graph): same rows, its scores
    calls = []

    def scorer(features, classes):
        calls.append(len(features))
        return fusion.mlp(features) + fusion.class_bias[classes]

    via, via_conf = fusion.complete(logits, partial, costs, boundary=boundary, scorer=scorer)
    assert calls and np.array_equal(via, slow)
    np.testing.assert_allclose(via_conf, slow_conf, atol=1e-6)
    # where the model's argmax is the copied label (and nearest-label fill's, format 4) and
    # the model is sure, that label stands
    assert cheap.any()
    np.testing.assert_array_equal(slow[cheap], model[cheap])


@pytest.mark.parametrize("kernels", [True, False])
def test_speed_rules_never_take_away_nearest_label_fill(monkeypatch, kernels):
    """A thin band between class 0 (left) and class 1 (right), where the model is sure of
    class 0 and geodesic propagation copies class 0 with class 2 next cheapest: a fusion
    that follows ``is_closest`` gives nearest-label fill's answer at every band pixel.
    Neither the agreement of model and copy nor the candidate classes may keep class 1
    from the pixels whose nearest known pixel is class 1."""
    if not kernels:
        _without_kernels(monkeypatch)
    partial = np.zeros((20, 40), np.uint8)
    partial[:, 22:] = 1
    partial[:, 18:22] = 255  # columns 18, 19 nearest class 0; 20, 21 nearest class 1
    partial[:2, :2] = 2
    costs = np.full((20, 40, 5), NO_PATH, np.float32)
    costs[..., 0], costs[..., 2], costs[..., 1] = 1.0, 2.0, 5.0
    logits = np.zeros((5, 2, 3), np.float32)
    logits[0] = 12.0  # the model gives class 0 ~1 and class 1 ~6e-6
    features = FEATURES_BY_VERSION[4]
    fusion = _pass_through(features.index(NEAREST_FEATURES[0]), 1.0, features=features)
    boundary = np.zeros((2, *partial.shape), np.float32)
    out, _ = fusion.complete(logits, partial, costs, boundary=boundary)
    hole = partial == 255
    np.testing.assert_array_equal(out[hole], nearest_fill(None, partial)[hole])
    np.testing.assert_array_equal(out[:, 18:22], np.repeat([[0, 0, 1, 1]], 20, 0))


def test_hole_features_describe_each_hole_region():
    """Two holes: a square cut through class 0 / 1 regions and a removed class-2 object;
    each pixel gets its own hole's border classes, mean border boundary probability, size
    and the map's value at the pixel."""
    partial = np.zeros((12, 12), np.uint8)
    partial[:, 6:] = 1
    partial[1:4, 4:8] = 255  # cut across the 0 | 1 edge at column 6
    partial[7:10, 1:4] = 255  # a removed object inside class 0
    boundary = np.zeros((2, 12, 12), np.float32)
    boundary[:, 6:11, 0:5] = 0.9  # the map sees the object's outline (and nothing at the cut)
    idx = np.flatnonzero(partial.reshape(-1) == 255)
    share, others = hole_features(partial, boundary, 3, idx)
    border_p = others[:, 0]
    cut_mask = np.zeros((12, 12), bool)
    cut_mask[1:4, 4:8] = True
    cut = cut_mask.reshape(-1)[idx]
    # hole size: 12 and 9 pixels; pixel boundary: the object's pixels all sit on the 0.9 map
    np.testing.assert_allclose(others[:, 1], np.where(cut, np.log1p(12), np.log1p(9)) / np.log1p(144), rtol=1e-6)
    np.testing.assert_allclose(others[~cut, 2], 0.9, rtol=1e-6)
    np.testing.assert_allclose(others[cut, 2], 0.0)
    # the cut's border: columns 4-5 are class 0, 6-7 class 1 (above, below) plus a side each
    np.testing.assert_allclose(share[cut][:, :2], [[0.5, 0.5]] * cut.sum())
    np.testing.assert_allclose(border_p[cut], 0.0)
    np.testing.assert_allclose(share[~cut], [[1.0, 0.0, 0.0]] * (~cut).sum())
    np.testing.assert_allclose(border_p[~cut], 0.9, rtol=1e-6)
    with pytest.raises(FusionError, match="shape"):
        hole_features(partial, boundary[:, :-1], 3, idx)


def test_line_features_vote_with_the_nearest_known_pixel_in_each_straight_direction():
    """A vertical pole (class 2, one column) cut by a hole: its pixels in the hole get the
    pole from above and below, their neighbours get the background; a pixel with no known
    pixel in a direction gets no vote from it."""
    partial = np.zeros((9, 7), np.uint8)
    partial[:, 3] = 2  # the pole
    partial[:, 5:] = 1
    partial[2:6, 1:6] = 255  # the hole: rows 2-5, columns 1-5
    partial[0:6, 6] = 255  # ... open to the right edge above row 6
    idx = np.flatnonzero(partial.reshape(-1) == 255)
    votes = line_features(partial, 3, idx)
    at = {(int(i) // 7, int(i) % 7): v for i, v in zip(idx, votes)}
    np.testing.assert_allclose(at[(3, 3)][:, 0], [0, 0, 1])  # the pole above and below
    np.testing.assert_allclose(at[(3, 3)][:, 1], [0.5, 0, 0])  # class 0 to the left; the right runs out
    np.testing.assert_allclose(at[(4, 2)][:, 0], [1, 0, 0])
    np.testing.assert_allclose(at[(4, 5)][:, 0], [0, 1, 0])
    np.testing.assert_allclose(at[(0, 6)][:, 0], [0, 0.5, 0])  # nothing above row 0: only below votes
    np.testing.assert_allclose(at[(0, 6)][:, 1], [0, 0.5, 0])  # class 1 to the left, the image edge right


def test_nearest_features_carry_nearest_label_fill():
    """A band between class 0 (left) and class 1 (right): ``is_closest`` marks the class
    nearest-label fill copies, ``distance_gap`` grows with the distance beyond it, and both
    come out of ``extra_features`` in format 4's order whether or not the distances are given."""
    image, _, partial = _scene(5)
    partial[:, :30], partial[:, 30:] = 0, 1
    partial[:, 24:33] = 255
    partial[:, :5] = 2
    idx = np.flatnonzero(partial.reshape(-1) == 255)
    distances, _ = class_distances(partial, idx, 4)
    rng = np.random.default_rng(0)
    boundary = rng.random((2, *partial.shape)).astype(np.float32)
    features = FEATURES_BY_VERSION[4]
    given, pixel = extra_features(features, partial, boundary, 4, idx, distances=distances)
    computed, _ = extra_features(features, partial, boundary, 4, idx)
    np.testing.assert_array_equal(given, computed)
    first = features.index(NEAREST_FEATURES[0]) - len(FUSION_FEATURES)
    closest, gap = given[..., first], given[..., first + 1]
    filled = nearest_fill(image, partial).reshape(-1)[idx]
    np.testing.assert_array_equal(closest.argmax(1), filled)
    assert set(np.unique(filled)) == {0, 1}
    np.testing.assert_array_equal(gap[closest == 1], 0)
    assert (gap[closest == 0] > 0).all()
    column = idx % partial.shape[1]
    assert (np.diff(gap[column == 24, 1]) == 0).all() and gap[column == 24, 1].min() > gap[column == 27, 1].max()
    assert (gap[:, 3] > gap[:, 2]).all()  # class 3 has no known pixel
    assert pixel.shape == (idx.size, len(features) - len(FUSION_FEATURES) - given.shape[2])


def test_a_hole_outlined_by_class_boundaries_is_decided_even_where_model_and_copies_agree():
    """A square removed from class 0's region: the model is sure of class 0, which the
    geodesic copy and nearest-label fill copy too.  Where the learned boundaries outline
    the square (a removed object), the fusion decides its pixels (here: the least likely
    class, 1); where they do not (a cut through one region), the skip keeps class 0."""
    partial = np.zeros((24, 32), np.uint8)
    partial[:, 24:] = 1
    partial[8:16, 8:16] = 255
    costs = np.full((24, 32, 5), NO_PATH, np.float32)
    costs[..., 0], costs[..., 1] = 1.0, 2.0
    logits = np.zeros((5, 3, 4), np.float32)
    logits[0] = 12.0
    features = FEATURES_BY_VERSION[4]
    fusion = _pass_through(1, 1.0, features=features)  # scores path_cost: prefers the costlier copy
    hole = partial == 255
    outlined, _ = fusion.complete(logits, partial, costs, boundary=np.full((2, 24, 32), 0.9, np.float32))
    assert (outlined[hole] == 1).all()
    cut, cut_conf = fusion.complete(logits, partial, costs, boundary=np.full((2, 24, 32), 0.05, np.float32))
    assert (cut[hole] == 0).all() and (cut_conf[hole] > 0.99).all()
    for out in (outlined, cut):
        np.testing.assert_array_equal(out[~hole], partial[~hole])
    always = PixelFusion.from_dict({**fusion.to_dict(), "agree_skip_border": 1.0})
    assert always.agree_skip_border == 1.0 and (always.complete(logits, partial, costs, boundary=np.full(
        (2, 24, 32), 0.9, np.float32))[0][hole] == 0).all()

