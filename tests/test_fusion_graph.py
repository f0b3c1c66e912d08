"""The bundle's fusion graph: pixel fusion's row scoring exported as ONNX, checked like the
other graphs, run by the runtime, and tied to the manifest's fusion by a fingerprint."""
import json
import shutil

import numpy as np
import pytest
import torch

from lmae_sdk.bundle import BundleError, fusion_sha256
from lmae_sdk.fusion import FUSION_FEATURES, PixelFusion
from lmae_sdk.synthetic import synth_pair


def _random_fusion(seed: int = 0, classes: int = 5) -> PixelFusion:
    rng = np.random.default_rng(seed)
    f, h = len(FUSION_FEATURES), 16
    return PixelFusion([(rng.normal(0, 1, (f, h)), rng.normal(0, 0.1, h)),
                        (rng.normal(0, 0.4, (h, h)), rng.normal(0, 0.1, h)),
                        (rng.normal(0, 1, (h, 1)), np.zeros(1))], rng.normal(0, 0.3, classes))


@pytest.fixture(scope="module")
def fused_bundle(tmp_path_factory):
    """(bundle, checkpoint): a tiny 5-class model with a random pixel fusion, exported."""
    try:
        from lmae_sdk.export import export_bundle
    except ImportError as e:
        pytest.skip(f"lmae_sdk.export is unavailable: {e}")
    from lmae_sdk import LMAE, make_config
    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fusion_graph")
    ck = make_checkpoint(LMAE(make_config("tiny", 5, img_size=(64, 96))), class_names=list("abcde"), palette=None,
                         mask_ratios=[0.5], label_resize="soft", unknown_threshold=0.5)
    ck["fusion"] = _random_fusion().to_dict()
    save_checkpoint(ck, root / "fused.pt")
    out = root / "b"
    export_bundle([root / "fused.pt"], out, verify=False, lint=False)
    return out, root / "fused.pt"


def _scenes(n=4):
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        image, label = synth_pair(rng, (72, 104), 5)
        partial = label.copy()
        partial[rng.random(label.shape) < 0.5] = 255
        partial[10:40, 20:60] = 255
        out.append((image, partial))
    return out


def _copy(bundle, tmp_path, edit):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(copy, data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def test_export_writes_a_ready_checked_fusion_graph(fused_bundle):
    import onnx

    bundle, _ = fused_bundle
    data = json.loads((bundle / "manifest.json").read_text())
    entry = data["fusion_graph"]
    assert entry["inputs"] == ["features", "classes"] and entry["outputs"] == ["scores"]
    assert entry["readiness"]["ok"], entry["readiness"]
    assert entry["parity"]["passed"] and entry["parity"]["max_abs_diff"] <= entry["parity"]["tolerance"]
    assert entry["fusion_sha256"] == fusion_sha256(data["fusion"])
    model = onnx.load(str(bundle / entry["file"]))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= {"Gemm", "Relu", "Reshape", "Gather", "Add"}  # static ops only: no selection in the graph
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["rows", len(FUSION_FEATURES)]


def test_graph_and_host_give_the_same_completion(fused_bundle, tmp_path):
    from lmae_sdk import LMAECompleter

    bundle, _ = fused_bundle
    graph = LMAECompleter.load(bundle, backend="onnxruntime", threads=1)
    host = LMAECompleter.load(_copy(bundle, tmp_path, lambda root, d: d.pop("fusion_graph")),
                              backend="onnxruntime", threads=1)
    assert graph.fusion_scorer is not None and host.fusion_scorer is None
    assert "rows scored by the fusion graph" in graph.describe() and "rows scored on the host" in host.describe()
    calls = []
    run = graph.fusion_scorer.__call__
    graph.fusion_scorer = lambda f, c: calls.append(len(f)) or run(f, c)
    for image, partial in _scenes():
        a, b = graph.complete(image, partial.copy()), host.complete(image, partial.copy())
        hole = partial == 255
        np.testing.assert_array_equal(a.label[~hole], partial[~hole])  # known pixels never change
        assert (a.label[hole] == b.label[hole]).mean() > 0.999
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
    assert calls and sum(calls) > 0


def test_a_graph_of_another_fusion_or_a_missing_graph_is_refused(fused_bundle, tmp_path):
    from lmae_sdk import LMAECompleter

    bundle, _ = fused_bundle

    def other_fusion(root, d):
        d["fusion"]["class_bias"][0] += 1.0

    with pytest.raises(BundleError, match="another pixel fusion"):
        LMAECompleter.load(_copy(bundle, tmp_path / "a", other_fusion), backend="onnxruntime")

    def missing(root, d):
        (root / d["fusion_graph"]["file"]).unlink()

    with pytest.raises(BundleError, match="fusion graph file .* is missing"):
        LMAECompleter.load(_copy(bundle, tmp_path / "b", missing), backend="onnxruntime")


def test_re_export_adds_the_graph_to_a_bundle_exported_without_one(fused_bundle, tmp_path):
    from lmae_sdk.export import export_bundle

    bundle, ckpt = fused_bundle

    def without_graph(root, d):
        (root / d.pop("fusion_graph")["file"]).unlink()

    old = _copy(bundle, tmp_path, without_graph)
    export_bundle([ckpt], old, verify=False, lint=False)
    data = json.loads((old / "manifest.json").read_text())
    assert (old / data["fusion_graph"]["file"]).is_file()
    assert data["fusion_graph"]["fusion_sha256"] == fusion_sha256(data["fusion"])
