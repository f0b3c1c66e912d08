"""Learned class boundaries: targets, the step cost, fitting, training, export and runtime."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lmae_sdk.boundaries import (BoundaryError, BoundaryNet, BoundarySpec, boundary_probabilities, boundary_targets,
                                 flip_boundaries, weights_sha256)
from lmae_sdk.fusion import FEATURES_BY_VERSION
from lmae_sdk.propagation import geodesic_class_costs, geodesic_propagate
from lmae_sdk.model import make_config
from lmae_sdk.pipeline import propagate_for


def test_targets_mark_class_changes_and_ignore_unknown():
    lab = np.array([[0, 0, 1], [0, 255, 1], [2, 2, 1]], np.uint8)
    t = boundary_targets(lab)
    np.testing.assert_array_equal(t[0], [[0, 1, -1], [-1, -1, -1], [0, 1, -1]])
    np.testing.assert_array_equal(t[1], [[0, -1, 0], [1, -1, 0], [-1, -1, -1]])


def test_flipped_map_is_the_map_of_the_flipped_label():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (7, 9)).astype(np.uint8)
    want = boundary_targets(lab[:, ::-1].copy())
    got = flip_boundaries(np.clip(boundary_targets(lab), 0, None))
    valid = want >= 0
    np.testing.assert_array_equal(got[valid], want[valid])


def test_a_learned_boundary_stops_propagation_where_colour_does_not():
    image = np.full((6, 12, 3), 128, np.uint8)  # no colour edge anywhere
    label = np.full((6, 12), 255, np.uint8)
    label[:, 0], label[:, 11] = 0, 1
    wall = np.zeros((2, 6, 12), np.float32)
    wall[0, :, 2] = 1.0  # a boundary between columns 2 and 3, near class 0's side
    plain, _ = geodesic_propagate(image, label, edge_weight=10, blur_sigma=0)
    walled, _ = geodesic_propagate(image, label, edge_weight=10, blur_sigma=0, boundary=wall, boundary_weight=100)
    assert (plain[:, 3:6] == 0).all()  # nearer to class 0's column
    assert (walled[:, 3:11] == 1).all() and (walled[:, :3] == 0).all()
    costs = geodesic_class_costs(image, label, 2, edge_weight=10, blur_sigma=0, boundary=wall, boundary_weight=100)
    np.testing.assert_array_equal(costs.argmin(-1)[label == 255], walled[label == 255])
    with pytest.raises(ValueError, match="boundary map shape"):
        geodesic_propagate(image, label, boundary=wall[:, :3], boundary_weight=1)


def test_boundary_power_lets_paths_through_unsure_boundaries_only():
    image = np.full((6, 12, 3), 128, np.uint8)
    label = np.full((6, 12), 255, np.uint8)
    label[:, 0], label[:, 11] = 0, 1
    unsure = np.zeros((2, 6, 12), np.float32)
    unsure[0, :, 8] = 0.3  # a doubtful boundary between columns 8 and 9, near class 1's side
    kw = dict(edge_weight=10, blur_sigma=0, boundary=unsure, boundary_weight=10)
    linear, _ = geodesic_propagate(image, label, **kw)  # step cost 1 + 3: column 9 belongs to class 1
    squared, _ = geodesic_propagate(image, label, boundary_power=2, **kw)  # 1 + 0.9: the plain distance decides
    assert (linear[:, 9] == 1).all() and (linear[:, 5] == 0).all()
    assert (squared[:, 6:11] == 1).all() and (squared[:, 5] == 0).all()
    sure = unsure * (1 / 0.3)  # a confident boundary still walls off at any power
    for power in (1, 2, 3):
        ids, _ = geodesic_propagate(image, label, edge_weight=10, blur_sigma=0, boundary=sure, boundary_weight=10,
                                    boundary_power=power)
        assert (ids[:, 1:9] == 0).all() and (ids[:, 9:] == 1).all()
    costs = geodesic_class_costs(image, label, 2, boundary_power=2, **kw)
    np.testing.assert_array_equal(costs.argmin(-1)[label == 255], squared[label == 255])
    cfg = make_config("tiny", 2, img_size=(32, 32), geodesic_edge_weight=10, geodesic_blur=0,
                      geodesic_boundary_weight=10, geodesic_boundary_power=2, prior_mode="geodesic")
    prop = propagate_for(cfg, label, image, class_costs=True, boundary=unsure)
    np.testing.assert_array_equal(prop.ids, np.where(label == 255, squared, label))
    assert prop.boundary is unsure  # fusion reads the map itself, not its power
    with pytest.raises(ValueError, match="geodesic_boundary_power"):
        make_config("tiny", 2, img_size=(32, 32), geodesic_boundary_power=0)


def test_a_model_with_a_boundary_term_refuses_to_propagate_without_the_map():
    cfg = make_config("tiny", 2, img_size=(32, 32), geodesic_boundary_weight=100.0)
    image = np.zeros((8, 8, 3), np.uint8)
    label = np.full((8, 8), 255, np.uint8)
    label[0, 0] = 1
    with pytest.raises(ValueError, match="boundary map"):
        propagate_for(cfg, label, image)
    assert propagate_for(cfg, label, image, boundary=np.zeros((2, 8, 8), np.float32)).ids.min() == 1


def test_net_shapes_spec_and_fingerprint():
    net = BoundaryNet(4).eval()
    assert net(torch.zeros(2, 3, 32, 48)).shape == (2, 2, 32, 48)
    spec = BoundarySpec.from_dict(BoundarySpec(4, (32, 48)).to_dict())
    assert spec.size == (32, 48)
    with pytest.raises(BoundaryError, match="even"):
        BoundarySpec.from_dict({"version": 1, "width": 4, "size": [31, 48]})
    with pytest.raises(BoundaryError, match="version"):
        BoundarySpec.from_dict({"version": 9, "width": 4, "size": [32, 48]})
    sd = net.state_dict()
    assert weights_sha256(sd) == weights_sha256({k: v.clone() for k, v in sd.items()})
    sd2 = {k: v.clone() for k, v in sd.items()}
    next(v for v in sd2.values() if v.is_floating_point()).add_(1)
    assert weights_sha256(sd2) != weights_sha256(sd)


def test_the_exported_strided_stem_is_the_net_without_its_pixel_unshuffle():
    from lmae_sdk.export.graphs import BoundaryGraph, with_strided_stem

    torch.manual_seed(0)
    net = BoundaryNet(4).eval()
    for m in net.modules():  # trained-looking batch norms, so every channel matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    strided = with_strided_stem(net)
    assert strided.unshuffle is None and strided.unet.e1[0][0].stride == (2, 2)
    assert net.unshuffle is not None  # the net itself is left as it was
    x = torch.randn(2, 3, 36, 50)
    with torch.no_grad():
        torch.testing.assert_close(strided(x), net(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(BoundaryGraph(net, True)(x), boundary_probabilities(net, x, True),
                                   atol=1e-6, rtol=1e-5)
        net.unet.e1[0][0].weight[0, 5, 1, 2] += 1.0  # one tap of one unshuffled channel moves: the stem did not copy it
        assert (strided(x) - net(x)).abs().max() > 1e-3


def test_flip_average_is_the_mean_of_the_map_and_the_mirror_images_map():
    from lmae_sdk.boundaries import TorchBoundaries, boundary_input

    torch.manual_seed(0)
    net = BoundaryNet(4).eval()
    spec = BoundarySpec.from_dict(BoundarySpec(4, (32, 48), flip_average=True).to_dict())
    assert spec.flip_average and "flip_average" not in BoundarySpec(4, (32, 48)).to_dict()
    image = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    plain = TorchBoundaries(net, BoundarySpec(4, (32, 48)))
    direct, mirrored = plain(image), flip_boundaries(plain(np.ascontiguousarray(image[:, ::-1])))
    averaged = TorchBoundaries(net, spec)(image)
    np.testing.assert_allclose(averaged[:, :, :-1], (direct + mirrored)[:, :, :-1] / 2, atol=1e-5)
    np.testing.assert_allclose(averaged[1], (direct[1] + mirrored[1]) / 2, atol=1e-5)
    assert np.abs(averaged - direct).max() > 1e-3  # an untrained net is not mirror-symmetric
    assert boundary_input(image, spec).shape == (3, 32, 48)


@pytest.mark.parametrize("shape", [(360, 480), (40, 60), (300, 250)])
def test_augmented_crops_keep_one_size_and_the_label_values(shape):
    from lmae_sdk.training.boundary_fit import _crop

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    label = np.kron(rng.integers(0, 4, (shape[0] // 10, shape[1] // 10)), np.ones((10, 10), np.uint8))
    crops = [_crop(image, label, 256, rng, augment=True) for _ in range(40)]
    assert len({(img.shape, lab.shape) for img, lab in crops}) == 1
    img, lab = crops[0]
    assert img.shape[:2] == lab.shape == (min(256, shape[0]) // 2 * 2, min(256, shape[1]) // 2 * 2)
    assert all(set(np.unique(lab)) <= set(np.unique(label)) for _, lab in crops)
    plain = [_crop(image, label, 256, np.random.default_rng(1)) for _ in range(2)]
    assert all(img.dtype == np.uint8 for img, _ in crops + plain)
    # rescaling moves the label's 10-px grid; plain crops keep it on the grid
    edges = [np.flatnonzero(np.diff(lab[0].astype(int))) for _, lab in crops]
    assert any(e.size and (np.diff(e) % 10).any() for e in edges)
    assert not any((np.diff(np.flatnonzero(np.diff(lab[0].astype(int)))) % 10).any() for _, lab in plain)


def test_fit_train_export_and_runtime(tmp_path, synth_root):
    from lmae_sdk import LMAECompleter
    from lmae_sdk.bundle import BundleError, read_manifest
    from lmae_sdk.checkpoint import load_checkpoint
    from click.testing import CliRunner

    from lmae_sdk.cli import main as cli_main
    from lmae_sdk.training.boundary_fit import fit_boundaries
    from lmae_sdk.training.train import TrainConfig, train

    base = train(TrainConfig(data=str(synth_root), out=str(tmp_path / "b.pt"), preset="tiny", image_size=(64, 96),
                             epochs=1, batch_size=4, workers=0, threads=1, progress=False, warmup_epochs=0.5))
    fitted = tmp_path / "bnd.pt"
    res = CliRunner().invoke(cli_main, ["fit-boundaries", "--ckpt", str(base), "--data", str(synth_root), "--out",
                                        str(fitted), "--steps", "4", "--width", "4", "--crop", "48", "--batch-size",
                                        "2", "--tune-images", "3", "--threads", "1", "--no-bf16",
                                        "--weight-grid", "300:300,1000:3000", "--augment"])
    assert res.exit_code == 0, res.output
    assert "boundary net: 4 steps" in res.output and "scale and colour augmentation" in res.output
    plain = load_checkpoint(fitted)
    assert plain["boundary_net"]["fit"]["steps"] == 4 and "boundary_net" not in load_checkpoint(base)
    assert plain["boundary_net"]["fit"]["augment"]
    # switch the fitted net to flip-averaged maps in place: no training, the weights retuned
    res = CliRunner().invoke(cli_main, ["fit-boundaries", "--ckpt", str(fitted), "--data", str(synth_root),
                                        "--continue-net", "--minutes", "0", "--flip-average", "--width", "4",
                                        "--tune-images", "3", "--threads", "1", "--weight-grid",
                                        "300:300:2,1000:3000:2"])
    assert res.exit_code == 0, res.output
    assert "boundary net (flip-averaged map): 0 steps" in res.output and "power 2: PA-mIoU" in res.output
    ck = load_checkpoint(fitted)
    assert ck["boundary_net"]["flip_average"]  # the exported graph below averages too (parity with torch)
    assert ck["boundary_net"]["fit"]["continued_from"]["steps"] == 4
    assert weights_sha256(ck["boundary_net"]["state_dict"]) == weights_sha256(plain["boundary_net"]["state_dict"])
    with pytest.raises(ValueError, match="no boundary net to continue"):
        fit_boundaries(base, synth_root, tmp_path / "y.pt", minutes=0, width=4, tune_images=2, continue_net=True,
                       log=lambda s: None)
    chosen = tuple(ck["config"][k] for k in ("geodesic_edge_weight", "geodesic_boundary_weight",
                                             "geodesic_boundary_power"))
    assert chosen in [(300, 300, 2), (1000, 3000, 2)]  # the power travels to training, the bundle and runtime
    for grid in ("1000", "1000:3000:2:1", "1000:3000:0"):
        bad = CliRunner().invoke(cli_main, ["fit-boundaries", "--ckpt", str(base), "--data", str(synth_root), "--out",
                                            str(tmp_path / "x.pt"), "--steps", "1", "--weight-grid", grid])
        assert bad.exit_code == 2 and "COLOUR:BOUNDARY" in bad.output and not (tmp_path / "x.pt").exists()
    # the model's prior now needs the map: training on it carries the net into the new checkpoint
    tuned = train(TrainConfig(data=str(synth_root), out=str(tmp_path / "t.pt"), preset="tiny", image_size=(64, 96),
                              epochs=1, batch_size=4, workers=0, threads=1, progress=False, warmup_epochs=0.5,
                              init_from=str(fitted), boundaries_from=str(fitted)))
    tk = load_checkpoint(tuned)
    for key in ("geodesic_edge_weight", "geodesic_boundary_weight", "geodesic_boundary_power"):
        assert tk["config"][key] == ck["config"][key]
    assert weights_sha256(tk["boundary_net"]["state_dict"]) == weights_sha256(ck["boundary_net"]["state_dict"])

    # pixel fusion fitted on it reads the map too: the features of each pixel's hole and the
    # straight-line votes and nearest-label fill's decision (format 4)
    fit_args = ["fit-fusion", "--ckpt", str(tuned), "--data", str(synth_root), "--images", "6", "--per-image", "300",
                "--steps", "20", "--threads", "1"]
    res = CliRunner().invoke(cli_main, fit_args)
    assert res.exit_code == 0, res.output
    assert f"{len(FEATURES_BY_VERSION[4])} features" in res.output
    assert load_checkpoint(tuned)["fusion"]["version"] == 4

    tc = LMAECompleter.load(tuned, backend="torch", threads=1)
    assert tc.boundaries is not None and tc.fusion.needs_boundary
    assert "hole-aware pixel fusion, learned boundaries" in tc.describe()
    with pytest.raises(ValueError, match="hole features"):  # even where the step cost does not use the map
        LMAECompleter(replace(tc.cfg, geodesic_boundary_weight=0.0), list(tc.engines.values()), tc.settings)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)  # not the net's size: resized both ways
    partial = np.kron(rng.integers(0, 5, (7, 10)), np.ones((10, 10), np.int64)).astype(np.uint8)
    partial[rng.random(partial.shape) < 0.5] = 255
    res = tc.complete(image, partial.copy())
    hole = partial == 255
    assert (res.label[hole] != 255).all()
    tiled = tc.complete(image, partial.copy(), tile=True, tile_scale=0.5)  # windows crop the map
    assert tiled.tiles > 1 and (tiled.label[hole] != 255).all()
    try:
        from lmae_sdk.export import export_bundle
    except ImportError as e:
        pytest.skip(f"lmae_sdk.export is unavailable: {e}")
    out = tmp_path / "bundle"
    export_bundle([tuned], out, verify=False, lint=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["boundary"]["weights_sha256"] == weights_sha256(tk["boundary_net"]["state_dict"])
    assert manifest["boundary_graph"]["parity"]["passed"]
    oc = LMAECompleter.load(out, backend="onnxruntime", threads=1)
    assert oc.cfg.geodesic_boundary_power == tc.cfg.geodesic_boundary_power == 2
    res_ort = oc.complete(image, partial.copy())
    assert (res_ort.label[hole] == res.label[hole]).mean() > 0.999
    # a bundle whose boundary graph was swapped is refused
    (out / manifest["boundary_graph"]["file"]).write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="sha256"):
        read_manifest(out)
    torch.set_num_threads(1)


def test_an_interrupted_boundary_fit_continues_from_its_saved_state(tmp_path, synth_root, monkeypatch):
    """``resume_path``: a second call continues at the saved step with the saved net, instead
    of starting over (what ``lmae fit`` relies on after a kill)."""
    from lmae_sdk.checkpoint import load_checkpoint, load_state
    from lmae_sdk.training import boundary_fit
    from lmae_sdk.training.train import TrainConfig, train

    monkeypatch.setattr(boundary_fit, "RESUME_SAVE_EVERY_S", 0.0)  # save after every step
    base = train(TrainConfig(data=str(synth_root), out=str(tmp_path / "b.pt"), preset="tiny", image_size=(64, 96),
                             epochs=1, batch_size=4, workers=0, threads=1, progress=False, max_train_items=8))
    state, logs = tmp_path / "state.pt", []
    kw = dict(width=4, crop=48, batch_size=2, tune_images=2, threads=1, bf16=False, weight_grid=((300.0, 300.0),),
              resume_path=state, log=logs.append)
    boundary_fit.fit_boundaries(base, synth_root, tmp_path / "first.pt", max_steps=3, **kw)
    saved = load_state(state)["boundary_train_state"]
    assert saved["step"] == 3
    fit = boundary_fit.fit_boundaries(base, synth_root, tmp_path / "second.pt", max_steps=5, **kw)
    assert any("resumed from" in line and "at step 3" in line for line in logs)
    assert fit["steps"] == 5
    first = load_checkpoint(tmp_path / "first.pt")["boundary_net"]["state_dict"]
    second = load_checkpoint(tmp_path / "second.pt")["boundary_net"]["state_dict"]
    assert any((first[k] != second[k]).any() for k in first)  # two more steps from the saved net


def test_a_bundle_exported_without_flip_averaging_runs_the_single_map_and_says_so(tmp_path):
    """``lmae-export --no-boundary-flip``: the boundary graph runs the net once per image (half
    the work); the manifest says so, the map is the net's own, and a bundle of the other kind
    is not joined."""
    from click.testing import CliRunner
    from conftest import tiny_checkpoint

    from lmae_sdk import LMAECompleter
    from lmae_sdk.boundaries import boundary_input, boundary_probabilities, net_from_state
    from lmae_sdk.bundle import BundleError
    from lmae_sdk.checkpoint import load_checkpoint
    from lmae_sdk.export.api import export_bundle
    from lmae_sdk.export.cli import main as export_main

    ck_path = tiny_checkpoint(tmp_path / "whole.pt", whole_recipe=True)
    ck = load_checkpoint(ck_path)
    assert ck["boundary_net"]["flip_average"]
    out = tmp_path / "single"
    res = CliRunner().invoke(export_main, ["--ckpt", str(ck_path), "--out", str(out), "--mask-ratios", "0.5",
                                           "--no-verify", "--no-lint", "--no-boundary-flip", "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["boundary"]["version"] == 1 and "flip_average" not in manifest["boundary"]
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    spec = BoundarySpec.from_dict(ck["boundary_net"])
    net = net_from_state(spec, ck["boundary_net"]["state_dict"])
    x = torch.from_numpy(boundary_input(image, spec))[None]
    with torch.no_grad():
        single, averaged = (boundary_probabilities(net, x, flip)[0].numpy() for flip in (False, True))
    assert np.abs(single - averaged).max() > 1e-3  # the two maps differ: the test tells them apart
    completer = LMAECompleter.load(out, backend="onnxruntime", threads=1)
    np.testing.assert_allclose(completer.boundary_map(image), single, atol=1e-4)
    with pytest.raises(BundleError, match="boundary"):
        export_bundle([ck_path], out, mask_ratios=[0.75], verify=False, lint=False)  # as fitted: flip-averaged
