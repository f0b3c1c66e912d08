"""The int8 boundary graph: ``lmae-export --boundary-int8``, the manifest entry, and where the
runtime runs it."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_checkpoint


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, synth_root):
    from lmae_sdk.export.cli import main as export_main

    tmp = tmp_path_factory.mktemp("int8")
    ck_path = tiny_checkpoint(tmp / "whole.pt", whole_recipe=True)
    out = tmp / "bundle"
    res = CliRunner().invoke(export_main, ["--ckpt", str(ck_path), "--out", str(out), "--mask-ratios", "0.5",
                                           "--no-verify", "--no-lint", "--boundary-int8", "--data", str(synth_root)])
    assert res.exit_code == 0, res.output
    return ck_path, out, res.output


def _torch_map(ck_path, image):
    from lmae_sdk.boundaries import BoundarySpec, boundary_input, boundary_probabilities, net_from_state
    from lmae_sdk.checkpoint import load_checkpoint

    ck = load_checkpoint(ck_path)
    spec = BoundarySpec.from_dict(ck["boundary_net"])
    net = net_from_state(spec, ck["boundary_net"]["state_dict"])
    with torch.no_grad():
        return boundary_probabilities(net, torch.from_numpy(boundary_input(image, spec))[None],
                                      spec.flip_average)[0].numpy()


def test_the_int8_boundary_graph_is_quantized_checked_and_listed_beside_the_fp32_one(int8_bundle):
    from lmae_sdk.export.onnx_export import op_list

    _, out, output = int8_bundle
    graph = json.loads((out / "manifest.json").read_text())["boundary_graph"]
    int8 = graph["int8"]
    assert int8["file"] == "boundary_int8.onnx" and graph["file"] == "boundary_fp32.onnx"
    assert int8["fp32_sha256"] == graph["sha256"]  # made from the fp32 graph beside it
    assert int8["parity"]["passed"] and 0 < int8["parity"]["mean_abs_diff"] <= int8["parity"]["tolerance"]
    assert int8["calibration"]["images"] > 0 and int8["readiness"]["ok"]
    ops = set(op_list(out / int8["file"]))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "boundary_int8.onnx (int8" in output


def test_the_cpu_runs_the_int8_graph_unless_fp32_is_asked_for(int8_bundle):
    from lmae_sdk import LMAECompleter

    ck_path, out, _ = int8_bundle
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), np.uint8)
    want = _torch_map(ck_path, image)
    as_run = LMAECompleter.load(out, backend="onnxruntime", threads=1).boundary_map(image)
    fp32 = LMAECompleter.load(out, backend="onnxruntime", threads=1, precision="fp32").boundary_map(image)
    np.testing.assert_allclose(fp32, want, atol=1e-5)
    # int8: close to the net's map, and not the fp32 graph's (which departs by ~1e-7)
    assert 1e-4 < np.abs(as_run - want).mean() < 0.01


def test_an_int8_graph_that_fails_its_sha256_is_refused(int8_bundle, tmp_path):
    import shutil

    from lmae_sdk import LMAECompleter
    from lmae_sdk.bundle import BundleError

    _, out, _ = int8_bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "boundary_int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="int8 boundary graph"):
        LMAECompleter.load(copy, backend="onnxruntime", threads=1)


def test_boundary_int8_without_data_is_a_clear_error_before_anything_is_written(tmp_path):
    from lmae_sdk.export.cli import main as export_main

    ck_path = tiny_checkpoint(tmp_path / "whole.pt", whole_recipe=True)
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export_main, ["--ckpt", str(ck_path), "--out", str(out), "--no-verify", "--no-lint",
                                           "--boundary-int8"])
    assert res.exit_code == 2
    assert "--data" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_an_int8_graph_beyond_its_tolerance_is_refused_and_not_left_in_the_bundle(tmp_path, synth_root,
                                                                                  monkeypatch):
    from lmae_sdk.export import quantize
    from lmae_sdk.export.cli import main as export_main

    real = quantize.int8_parity
    monkeypatch.setattr(quantize, "int8_parity", lambda *a, **k: real(*a, **{**k, "tolerance": 0.0}))
    ck_path = tiny_checkpoint(tmp_path / "whole.pt", whole_recipe=True)
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export_main, ["--ckpt", str(ck_path), "--out", str(out), "--mask-ratios", "0.5",
                                           "--no-verify", "--no-lint", "--boundary-int8", "--data", str(synth_root)])
    assert res.exit_code == 2 and "boundary_int8.onnx" in res.output and "mean abs diff" in res.output
    assert "Traceback" not in res.output
    assert not (out / "boundary_int8.onnx").exists()
    assert "int8" not in json.loads((out / "manifest.json").read_text())["boundary_graph"]
