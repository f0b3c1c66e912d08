"""The TensorRT path end to end: ``lmae-export --trt`` -> bundle -> ``lmae complete
--backend tensorrt``, which must give the ONNX Runtime backend's labels exactly.

Every test here runs against the CPU double of TensorRT 10 (``tests/trt_double.py``: the
ONNX graph on ONNX Runtime, host memory for device buffers), so none of them skips on a
machine without a GPU.  ``tests/test_tensorrt_real.py`` runs the end-to-end test again on
the real ``tensorrt`` where it imports and a CUDA device is visible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import trt_double
from conftest import tiny_checkpoint
from lmae_sdk import bundle as B
from lmae_sdk import trt_engine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@pytest.fixture
def trt(monkeypatch, tmp_path):
    """The double, installed for this test."""
    monkeypatch.setenv("LMAE_TRT_CACHE", str(tmp_path / "trt_cache"))  # no timing cache in ~/.cache
    trt_double.install(monkeypatch)
    return "double"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Every graph a bundle holds: encoder, decoder, boundary net, fusion scoring."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", mask_ratios=[0.5], whole_recipe=True)


def _inputs(root: Path, n: int = 6) -> tuple[Path, Path]:
    """Synthetic scenes (not the model size: resizing runs) with partial labels."""
    import cv2

    from lmae_sdk.degrade import degrade
    from lmae_sdk.labels import write_label
    from lmae_sdk.synthetic import synth_pair

    imgs, labs = root / "images", root / "labels"
    imgs.mkdir(parents=True)
    labs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img, lab = synth_pair(rng, (72, 104))
        cv2.imwrite(str(imgs / f"s{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        write_label(labs / f"s{i}.png", degrade(lab, 0.5, "random", np.random.default_rng(i), patch=16))
    return imgs, labs


def _export_cmd(trt: str, args: list[str]) -> list[str]:
    if trt == "double":
        return [sys.executable, str(HERE / "trt_double.py"), "lmae-export", *args]
    return [sys.executable, "-m", "lmae_sdk.export.cli", *args]


def test_export_trt_then_complete_matches_onnxruntime(trt, tiny_ckpt, tmp_path):
    export_then_complete(trt, tiny_ckpt, tmp_path)


def export_then_complete(trt: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    """``lmae-export --trt`` with ``trt`` ("double" or "real"), then ``lmae complete`` on both backends."""
    out = tmp_path / "bundle"
    # lmae-export in its own process: its real stdout / stderr are what a user sees
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    res = subprocess.run(_export_cmd(trt, ["--ckpt", str(tiny_ckpt), "--out", str(out), "--trt", "--no-lint",
                                           "--max-batch", "4"]),
                         capture_output=True, text=True, env=env, timeout=600)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert not [ln for ln in output.splitlines() if "torchvision" in ln], output  # the exporter's noise is silenced
    man = B.read_manifest(out, verify_files=True)
    assert sorted(e["name"] for e in man.engines) == ["m0.5_fp32_onnxruntime", "m0.5_fp32_tensorrt"]
    e = man.find(backend="tensorrt")[0]
    assert (e["encoder"]["file"], e["decoder"]["file"]) == ("encoder_m0.5_fp32.engine", "decoder_m0.5_fp32.engine")
    assert e["max_batch"] == 4 and e["parity"]["verified"] and e["parity"]["passed"], e["parity"]
    assert (out / "encoder_m0.5_fp32.engine.json").is_file() and (out / "decoder_m0.5_fp32.engine.json").is_file()
    if trt == "double":
        assert e["producer"]["tensorrt"] == trt_double.__version__ and e["producer"]["gpu"] == trt_double.DEVICE_NAME
        assert e["parity"]["max_abs_diff"] < 1e-5  # the double runs the same fp32 graph on ONNX Runtime
    assert not list(out.glob(".tmp-export-*"))
    for key, engine in (("boundary_graph", "boundary_fp32.engine"), ("fusion_graph", "fusion_fp32.engine")):
        built = man.data[key]["tensorrt"]  # the boundary and fusion graphs run on TensorRT too
        assert built["file"] == engine and (out / engine).is_file() and built["parity"]["passed"], built
        assert built["onnx_sha256"] == man.data[key]["sha256"]
    if trt == "double":
        from lmae_sdk import LMAECompleter
        from lmae_sdk.runtime.backends import TrtBoundaries, TrtFusionScorer

        c = LMAECompleter.load(out, backend="tensorrt", precision="fp32")
        assert isinstance(c.boundaries, TrtBoundaries) and isinstance(c.fusion_scorer, TrtFusionScorer)
        assert c.fusion is not None and c.fusion.needs_boundary

    from lmae_sdk.cli import main as lmae

    imgs, labs = _inputs(tmp_path / "in")
    labels = {}
    for backend in ("onnxruntime", "tensorrt"):
        dst = tmp_path / f"out_{backend}"
        # batch 4 over 6 images: the engines see batches of 4 and 2 (buffers reused and re-shaped)
        r = CliRunner().invoke(lmae, ["complete", "--model", str(out), "--images", str(imgs), "--labels", str(labs),
                                      "--out", str(dst), "--backend", backend, "--precision", "fp32",
                                      "--batch-size", "4", "--threads", "1", "--lanes", "1", "--workers", "1",
                                      "--quiet"])
        assert r.exit_code == 0, r.output
        report = json.loads((dst / "report.json").read_text())
        assert report["backend"] == backend and report["images_completed"] == 6 and not report["failures"]
        labels[backend] = {p.name: (dst / p.name).read_bytes() for p in sorted(labs.iterdir())}
    if trt == "double":  # the double runs the same fp32 graphs on ONNX Runtime: the same labels
        assert labels["tensorrt"] == labels["onnxruntime"]
        return
    import cv2  # the real TensorRT computes in its own order (and TF32): nearly every pixel agrees

    same = total = 0
    for name in labels["onnxruntime"]:
        a, b = (cv2.imdecode(np.frombuffer(labels[k][name], np.uint8), cv2.IMREAD_UNCHANGED)
                for k in ("onnxruntime", "tensorrt"))
        same, total = same + int((a == b).sum()), total + a.size
    assert same / total > 0.995, f"TensorRT and ONNX Runtime labels agree on {same / total:.4%} of pixels"


# --------------------------------------------------------------------------------------
# the runner, the builder and the backend on the double
# --------------------------------------------------------------------------------------
def _graph(path: Path) -> Path:
    """y = x @ w + take(ids): a float input and an int64 index input, batch dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    table = numpy_helper.from_array(np.arange(5, dtype=np.float32) * 100, "table")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Gather", ["table", "ids"], ["t"]),
             helper.make_node("Add", ["xw", "t"], ["y"]),
             helper.make_node("LayerNormalization", ["y"], ["y_norm"], axis=-1, name="norm0")]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
           helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("y_norm", TensorProto.FLOAT, ["batch", 3])]
    ln_scale = numpy_helper.from_array(np.ones(3, np.float32), "ln_scale")
    nodes[-1].input.append("ln_scale")
    g = helper.make_graph(nodes, "g", ins, outs, initializer=[w, table, ln_scale])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_runner_on_the_double(monkeypatch, tmp_path):
    trt_double.install(monkeypatch)
    from lmae_sdk.export.tensorrt_build import build_engine

    meta = build_engine(_graph(tmp_path / "g.onnx"), tmp_path / "g.engine", max_batch=4, cache_dir=tmp_path)
    assert meta["max_batch"] == 4 and meta["outputs"] == ["y", "y_norm"] and meta["gpu"] == trt_double.DEVICE_NAME
    assert (tmp_path / "g.engine.json").is_file() and list(tmp_path.glob("timing_*.cache"))
    before = trt_double.live_allocations()
    eng = trt_engine.TrtEngine(tmp_path / "g.engine", trt_engine.device_memory())
    assert eng.input_names == ["x", "ids"] and eng.output_names == ["y", "y_norm"] and eng.max_batch == 4
    assert eng.dtypes["ids"] == np.int64
    rng = np.random.default_rng(0)
    for b in (3, 1, 4):  # buffers grow once and are reused for smaller batches
        x = rng.standard_normal((b, 4)).astype(np.float64)  # cast to the engine's float32
        ids = rng.integers(0, 5, (b, 3)).astype(np.int32)  # cast to int64
        out = eng.run({"x": x, "ids": ids})
        want = x.astype(np.float32) @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) + ids * 100.0
        np.testing.assert_allclose(out["y"], want, rtol=1e-6)
        assert out["y"].dtype == np.float32 and out["y_norm"].shape == (b, 3)
    assert trt_double.live_allocations() == before + 4  # one buffer per I/O tensor
    with pytest.raises(ValueError, match="g.engine: batch 5 is outside the engine's profile"):
        eng.run({"x": np.zeros((5, 4)), "ids": np.zeros((5, 3))})
    with pytest.raises(ValueError, match=r"missing inputs \['ids'\]"):
        eng.run({"x": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="batch size"):
        eng.run({"x": np.zeros((2, 4)), "ids": np.zeros((1, 3))})
    eng.close()
    assert trt_double.live_allocations() == before


def test_fp16_build_pins_normalization_to_fp32(monkeypatch, tmp_path):
    trt_double.install(monkeypatch)
    from lmae_sdk.export.tensorrt_build import build_engine

    meta = build_engine(_graph(tmp_path / "g.onnx"), tmp_path / "g16.engine", fp16=True, max_batch=2,
                        cache_dir=tmp_path)
    assert meta["precision"] == "fp16" and meta["fp32_pinned_layers"] == 1


def test_engine_errors_name_the_file(monkeypatch, tmp_path):
    trt_double.install(monkeypatch)
    from lmae_sdk.runtime.backends import BackendError, TrtBackend, trt_available

    assert trt_available()
    bad = tmp_path / "encoder.engine"
    bad.write_bytes(b"not an engine")
    with pytest.raises(trt_engine.TrtEngineError, match="encoder.engine: cannot deserialize"):
        trt_engine.TrtEngine(bad, trt_engine.device_memory())
    with pytest.raises(BackendError, match="encoder.engine: cannot deserialize"):
        TrtBackend(bad, bad, 0.5, 12, {"encoder": ["x"], "decoder": ["x"]})
    from lmae_sdk.export.tensorrt_build import build_engine

    build_engine(_graph(tmp_path / "g.onnx"), tmp_path / "g.engine", max_batch=2, cache_dir=tmp_path)
    with pytest.raises(BackendError, match=r"g.engine: engine inputs \['ids', 'x'\] differ from the manifest's"):
        TrtBackend(tmp_path / "g.engine", tmp_path / "g.engine", 0.5, 12, {"encoder": ["x"], "decoder": ["x"]})


def test_without_tensorrt_or_gpu_the_errors_say_what_to_install(monkeypatch):
    from lmae_sdk.runtime.backends import BackendError, TrtBackend, trt_available

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert not trt_available()
    with pytest.raises(BackendError, match=r"pip install lmae-sdk\[trt\]"):
        TrtBackend("e.engine", "d.engine", 0.5, 12, {"encoder": [], "decoder": []})
    # the double's tensorrt, but no device memory: where neither cuda-python nor torch sees a GPU
    from lmae_sdk.runtime.backends.trt_backend import device_memory

    try:
        device_memory()
        return  # a CUDA machine: nothing to refuse
    except trt_engine.TensorRTUnavailable:
        pass
    monkeypatch.setitem(sys.modules, "tensorrt", trt_double)
    assert not trt_available()
    with pytest.raises(trt_engine.TensorRTUnavailable, match="no CUDA device memory"):
        trt_engine.device_memory()
