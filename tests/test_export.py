"""Export: tiny checkpoint -> ONNX bundle, parity, TensorRT readiness, CLI.

Kept light (one thread, a 64x96 tiny model); the TensorRT build tests skip where
``tensorrt`` is not importable.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from lmae_sdk import bundle as B
from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
from lmae_sdk.model import LMAE, make_config

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from lmae_sdk.export import api  # noqa: E402
from lmae_sdk.export.cli import main as export_cli  # noqa: E402
from lmae_sdk.export.readiness import READY_OPS, TRT10_SUPPORTED_OPS, check_trt_readiness  # noqa: E402
from lmae_sdk.export.verify import ort_runners, verify_engine  # noqa: E402

CLASSES = ["background", "disc", "box", "bar", "blob"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = LMAE(make_config("tiny", 5, img_size=(64, 96)))
    p = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(make_checkpoint(m, class_names=CLASSES, palette=None, mask_ratios=[0.5], label_resize="soft",
                                    unknown_threshold=0.5, background_index=0), p)
    return p


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle"
    api.export_bundle([ckpt], out, mask_ratios=[0.5, 0.7])
    return out


def _model(ckpt):
    from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint
    return model_from_checkpoint(load_checkpoint(ckpt))


def test_manifest_two_ratios(bundle):
    man = B.read_manifest(bundle, verify_files=True)  # sha256 checked
    assert [e["name"] for e in man.engines] == ["m0.5_fp32_onnxruntime", "m0.7_fp32_onnxruntime"]
    for k in B.SHARED_KEYS:
        assert k in man.data
    assert man.data["num_patches"] == 24 and man.data["image_size"] == [64, 96]
    ks = {e["mask_ratio"]: e["num_visible"] for e in man.engines}
    assert ks == {0.5: 12, 0.7: 7}  # K = L - round(m L)
    for e in man.engines:
        assert all(k in e for k in B.ENGINE_KEYS)
        assert e["inputs"] == {"encoder": ["image", "label_planes", "prior", "ids_keep"],
                               "decoder": ["latent", "image", "ids_mask", "ids_restore", "label_planes", "prior"]}
        assert e["outputs"] == {"encoder": ["latent"], "decoder": ["logits"]}
        assert e["producer"]["exporter"] == "dynamo" and e["producer"]["opset"] == 18
        assert e["producer"]["tensorrt"] is None and e["source_checkpoint"] == "tiny.pt"
        assert e["encoder"]["file"] == f"encoder_m{e['mask_ratio']:g}_fp32.onnx"
        p = e["parity"]
        assert p["verified"] and p["passed"] and p["argmax_agreement"] == 1.0 and p["max_abs_diff"] < 1e-4
    assert not list(bundle.glob(".tmp-*"))


def test_graph_contract(bundle):
    man = B.read_manifest(bundle)
    e = man.find(mask_ratio=0.7)[0]
    enc = onnx.load(str(bundle / e["encoder"]["file"]))
    dec = onnx.load(str(bundle / e["decoder"]["file"]))
    assert [i.name for i in enc.graph.input] == e["inputs"]["encoder"]
    assert [i.name for i in dec.graph.input] == e["inputs"]["decoder"]
    for g in (enc, dec):
        assert g.opset_import[0].version == 18
        for vi in list(g.graph.input) + list(g.graph.output):
            dims = vi.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch"
            assert all(d.HasField("dim_value") for d in dims[1:])
        ops = {n.op_type for n in g.graph.node}
        assert not ops & {"ArgMax", "TopK", "NonZero", "ScatterElements", "ScatterND", "Unique"}
        meta = {p.key: p.value for p in g.metadata_props}
        assert meta["lmae.num_visible"] == "7" and json.loads(meta["lmae.class_names"]) == CLASSES
        assert json.loads(meta["lmae.model_config"])["num_classes"] == 5
    assert [d.dim_value for d in enc.graph.input[3].type.tensor_type.shape.dim[1:]] == [7]
    assert enc.graph.input[3].type.tensor_type.elem_type == TensorProto.INT64
    assert "GatherElements" in {n.op_type for n in dec.graph.node}  # IPS: static gather


def test_ort_parity_other_batch(bundle, ckpt):
    """Batch 3 (not the traced 2) runs and agrees exactly in argmax."""
    model = _model(ckpt)
    e = B.read_manifest(bundle).find(mask_ratio=0.5)[0]
    enc, dec = ort_runners(bundle / e["encoder"]["file"], bundle / e["decoder"]["file"])
    from lmae_sdk.export.verify import compare, random_cases
    res = compare(model, random_cases(model, 0.5, n=3, seed=7, batch=3), enc, dec)
    assert res["argmax_agreement"] == 1.0 and res["max_abs_diff"] < 1e-4


def test_gelu_regrouped_so_onnx_runtime_fuses_it(bundle, tmp_path):
    """torch writes GELU as x * (0.5 * (1 + erf(x / sqrt 2))), which ONNX Runtime does not
    fuse; export regroups it, same outputs, and ORT's optimized graph keeps no Erf."""
    import math

    import numpy as np
    import onnxruntime as ort

    from lmae_sdk.export.onnx_passes import gelu_for_fusion

    def optimized_ops(model: onnx.ModelProto) -> list[str]:
        src, dst = tmp_path / "in.onnx", tmp_path / "opt.onnx"
        onnx.save(model, str(src))
        o = ort.SessionOptions()
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        o.optimized_model_filepath = str(dst)
        sess = ort.InferenceSession(str(src), o, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(dst)).graph.node], sess

    const = lambda name, v: helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [v]))  # noqa: E731
    nodes = [const("sqrt2", math.sqrt(2)), const("one", 1.0), const("half", 0.5),
             helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["m"]),
             helper.make_node("Mul", ["x", "m"], ["y"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 8])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "gelu", [vi("x")], [vi("y")]),
                              opset_imports=[helper.make_opsetid("", 18)])
    x = np.linspace(-4, 4, 16, dtype=np.float32).reshape(2, 8)
    ops, sess = optimized_ops(model)
    before = sess.run(None, {"x": x})[0]
    assert "Erf" in ops  # as torch writes it: not fused
    assert gelu_for_fusion(model) == 1
    onnx.checker.check_model(model)
    ops, sess = optimized_ops(model)
    assert "Erf" not in ops and "Gelu" in ops
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], before, rtol=1e-6, atol=1e-6)
    # the exported graphs come regrouped: nothing left to rewrite, and ORT fuses every GELU
    for part in ("encoder", "decoder"):
        proto = onnx.load(str(bundle / f"{part}_m0.5_fp32.onnx"))
        assert "Erf" in [n.op_type for n in proto.graph.node]
        assert gelu_for_fusion(proto) == 0
        assert "Erf" not in optimized_ops(proto)[0]


def test_readiness_passes_on_exported(bundle):
    for e in B.read_manifest(bundle).engines:
        for part in ("encoder", "decoder"):
            rep = check_trt_readiness(bundle / e[part]["file"], lint=False)
            assert rep.ok, str(rep)
            assert set(rep.ops) <= READY_OPS  # parser-supported and not data-dependent
            assert e["readiness"][part]["ok"]
            assert e["readiness"][part]["lint"] == "clean" or e["readiness"][part]["lint"].startswith("skipped")


def _tiny_graph(op: str, out_shape, in_shape=(None, 4)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    node = helper.make_node(op, ["x"], ["y"]) if op != "Unique" else helper.make_node("Unique", ["x"], ["y"], sorted=1)
    g = helper.make_graph([node], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x.type.tensor_type.shape.dim[0].dim_param = "batch"
    return m


def test_readiness_fails_on_forbidden_op():
    m = _tiny_graph("Unique", out_shape=[None])
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    rep = check_trt_readiness(m, lint=False)
    assert not rep.ok and rep.unsupported_ops == ["Unique"]
    assert any("Unique" in p for p in rep.problems)
    ok = check_trt_readiness(_tiny_graph("Relu", out_shape=["batch", 4]), lint=False)
    assert ok.ok, str(ok)


@pytest.mark.parametrize("op", ["NonZero", "TopK", "Loop", "If", "ScatterND", "NonMaxSuppression", "Scan"])
def test_readiness_fails_on_data_dependent_op(op):
    """The parser imports these, but the static-gather design excludes them."""
    assert op in TRT10_SUPPORTED_OPS and op not in READY_OPS
    rep = check_trt_readiness(_tiny_graph(op, out_shape=["batch", 4]), lint=False)
    assert not rep.ok and not rep.unsupported_ops
    assert [p for p in rep.problems if op in p and "data-dependent" in p], rep.problems


def test_readiness_fails_on_dynamic_non_batch_dim():
    m = _tiny_graph("Relu", out_shape=["batch", "width"], in_shape=("batch", "width"))
    rep = check_trt_readiness(m, lint=False)
    assert not rep.ok and not rep.unsupported_ops
    assert any("axis 1" in d for d in rep.dynamic_dims)


def test_readiness_fails_on_int64_out_of_range():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4])
    c = helper.make_tensor("c", TensorProto.INT64, [1], [2**40])
    g = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y], initializer=[c])
    rep = check_trt_readiness(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), lint=False)
    assert not rep.ok
    assert any("outside int32" in p for p in rep.int64_problems)
    assert any("no declared range" in p for p in rep.int64_problems)


def test_trt_missing_fails_before_writing(ckpt, tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    out = tmp_path / "trt_bundle"
    res = CliRunner().invoke(export_cli, ["--ckpt", str(ckpt), "--out", str(out), "--trt"])
    assert res.exit_code != 0
    assert "TensorRT" in res.output and "pip install lmae-sdk[trt]" in res.output and "GPU" in res.output
    assert not out.exists()


def test_fp16_and_reexport_replaces_entry(ckpt, tmp_path):
    out = tmp_path / "b16"
    api.export_bundle([ckpt], out, mask_ratios=[0.5], verify=False, lint=False, legacy=True)  # fast first pass
    before = B.read_manifest(out).find(mask_ratio=0.5, precision="fp32")[0]
    assert before["producer"]["exporter"] == "legacy"
    man = api.export_bundle([ckpt], out, mask_ratios=[0.5], fp16=True, lint=False)  # re-export + fp16
    names = [e["name"] for e in man.engines]
    assert sorted(names) == ["m0.5_fp16_onnxruntime", "m0.5_fp32_onnxruntime"]  # replaced, not duplicated
    after = man.find(mask_ratio=0.5, precision="fp32")[0]
    assert before["parity"] == {"verified": False} and after["parity"]["verified"]
    assert after["producer"]["exporter"] == "dynamo" and after["encoder"]["sha256"] != before["encoder"]["sha256"]
    e16 = man.find(precision="fp16")[0]
    assert e16["encoder"]["file"] == "encoder_m0.5_fp16.onnx"
    assert e16["parity"]["argmax_agreement"] >= 0.99 and e16["parity"]["passed"]
    # the fp16 graph keeps float32 I/O
    dec = onnx.load(str(out / e16["decoder"]["file"]))
    assert dec.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "encoder_m0.5_fp32.onnx", "decoder_m0.5_fp32.onnx", "encoder_m0.5_fp16.onnx",
         "decoder_m0.5_fp16.onnx"])


def test_refuses_incompatible_checkpoint(ckpt, tmp_path):
    torch.manual_seed(1)
    other = LMAE(make_config("tiny", 5, img_size=(64, 96)))
    p = tmp_path / "other.pt"
    save_checkpoint(make_checkpoint(other, class_names=["a", "b", "c", "d", "e"], palette=None, mask_ratios=[0.6],
                                    label_resize="soft", unknown_threshold=0.5), p)
    with pytest.raises(B.BundleError, match="class_names"):
        api.export_bundle([ckpt, p], tmp_path / "mixed", verify=False, lint=False)
    assert not (tmp_path / "mixed").exists()


def test_cli_runs(ckpt, tmp_path):
    out = tmp_path / "cli_bundle"
    res = CliRunner().invoke(export_cli, ["--ckpt", str(ckpt), "--out", str(out), "--mask-ratios", "0.6",
                                          "--no-verify", "--no-lint", "--show-ops", "-q"])
    assert res.exit_code == 0, res.output
    assert "m0.6_fp32_onnxruntime" in res.output and "encoder ops:" in res.output and "GatherElements" in res.output
    man = B.read_manifest(out)
    assert man.engines[0]["num_visible"] == 24 - round(0.6 * 24)
    bad = CliRunner().invoke(export_cli, ["--ckpt", str(ckpt), "--mask-ratios", "1.5"])
    assert bad.exit_code != 0


def test_legacy_exporter(ckpt, tmp_path):
    man = api.export_bundle([ckpt], tmp_path / "leg", mask_ratios=[0.5], legacy=True, lint=False)
    e = man.engines[0]
    assert e["producer"]["exporter"] == "legacy"
    assert e["parity"]["argmax_agreement"] == 1.0 and e["parity"]["max_abs_diff"] < 1e-4
    assert e["readiness"]["encoder"]["ok"] and e["readiness"]["decoder"]["ok"], e["readiness"]


def test_require_tensorrt_message():
    from lmae_sdk.export.tensorrt_build import TensorRTUnavailable, require_tensorrt
    try:
        require_tensorrt()
    except TensorRTUnavailable as err:
        assert "pip install lmae-sdk[trt]" in str(err) and "CUDA GPU" in str(err)
    else:
        assert torch.cuda.is_available()


def test_trt_build_and_parity(ckpt, bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT 10 is not installed (needs NVIDIA's wheels and a CUDA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from lmae_sdk.export.tensorrt_build import build_engine, engine_device_memory
    from lmae_sdk.export.verify import trt_runners
    from lmae_sdk.trt_engine import TrtEngine
    e = B.read_manifest(bundle).find(mask_ratio=0.5)[0]
    paths = {}
    for part in ("encoder", "decoder"):
        paths[part] = tmp_path / f"{part}.engine"
        build_engine(bundle / e[part]["file"], paths[part], fp16=False, max_batch=4, workspace_gb=1,
                     cache_dir=tmp_path)
        assert (tmp_path / f"{part}.engine.json").is_file()
    eng = TrtEngine(paths["encoder"], engine_device_memory())
    assert eng.input_names == e["inputs"]["encoder"] and eng.max_batch == 4
    par = verify_engine(_model(ckpt), 0.5, *trt_runners(paths["encoder"], paths["decoder"]), "fp32")
    assert par["passed"], par
