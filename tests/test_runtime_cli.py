"""``lmae complete`` / ``lmae visualize`` through click's CliRunner (torch backend, .pt)."""
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lmae_sdk.cli import main
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.synthetic import SYNTH_PALETTE


def _dataset(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    imgs, labs = root / "images", root / "labels"
    imgs.mkdir(parents=True)
    for i in range(n):
        h, w = int(rng.integers(40, 100)), int(rng.integers(40, 130))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(imgs / f"s{i}.png")
        lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
        lab[rng.random((h, w)) < 0.3] = 255
        lab[: h // 2, : w // 2] = 255
        write_label(labs / f"s{i}.png", lab, SYNTH_PALETTE if i % 2 else None)
    return imgs, labs


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _run(*args):
    return CliRunner().invoke(main, ["complete", *map(str, args), "--threads", "1", "--quiet"])


def test_complete_writes_one_png_per_label(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path)
    before = _digest(imgs), _digest(labs)
    out, conf = tmp_path / "out", tmp_path / "conf"
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out, "--confidence-dir", conf,
               "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "complete: 6 done, 0 skipped (already done), 0 failed" in res.output and "img/s" in res.output
    assert (_digest(imgs), _digest(labs)) == before  # inputs untouched
    rep = json.loads((out / "report.json").read_text())
    assert rep["images_completed"] == 6 and rep["images_failed"] == 0 and rep["pixels_filled"] > 0
    assert sum(rep["engine_use"].values()) == 6 and rep["backend"] == "torch"
    for i in range(6):
        part, _ = read_label(labs / f"s{i}.png")
        done, pal = read_label(out / f"s{i}.png")
        assert (done[part != 255] == part[part != 255]).all() and (done != 255).all()
        assert (pal is not None) == bool(i % 2)  # a palette PNG in, a palette PNG out
        if pal:
            assert pal[: len(SYNTH_PALETTE)] == SYNTH_PALETTE
        c, _ = read_label(conf / f"s{i}.png")
        assert c.shape == part.shape and (c[part != 255] == 255).all()


def test_auto_lanes_one_per_core_on_cpu_one_with_gpu(monkeypatch, tmp_path):
    import lmae_sdk.runtime.backends as backends
    import lmae_sdk.runtime.loading as loading
    from lmae_sdk.cli.complete import auto_lanes
    from lmae_sdk.cores import usable_cores

    cores = usable_cores()
    bundle, ckpt = tmp_path / "bundle", tmp_path / "m.pt"
    bundle.mkdir()
    ckpt.write_bytes(b"")
    for mod, name in ((backends, "ort_cuda_available"), (backends, "trt_available"), (loading, "cuda_available")):
        monkeypatch.setattr(mod, name, lambda: False)
    assert auto_lanes("auto", None, 0, bundle) == (cores, 1)
    assert auto_lanes("onnxruntime", "cpu", 1, bundle) == (cores, 1)
    assert auto_lanes("auto", None, 2 * cores, bundle) == (1, 2 * cores)
    assert auto_lanes("auto", "cuda:0", 0, bundle) == (1, 0)
    # torch's CUDA counts only where torch runs the model: a checkpoint, or --backend torch
    monkeypatch.setattr(loading, "cuda_available", lambda: True)
    assert auto_lanes("auto", None, 0, bundle) == (cores, 1)
    assert auto_lanes("auto", None, 0, ckpt) == (1, 0) and auto_lanes("torch", None, 0, bundle) == (1, 0)
    monkeypatch.setattr(loading, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "ort_cuda_available", lambda: True)
    assert auto_lanes("auto", None, 0, bundle) == (1, 0) and auto_lanes("torch", None, 0, ckpt) == (cores, 1)


def test_lanes_in_report_and_same_labels_as_one_lane(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path)
    outs = {}
    for lanes in (1, 3):
        out = tmp_path / f"out{lanes}"
        res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out, "--lanes", lanes,
                   "--batch-size", "2")
        assert res.exit_code == 0, res.output
        rep = json.loads((out / "report.json").read_text())
        assert rep["lanes"] == lanes and rep["images_completed"] == 6
        outs[lanes] = {i: read_label(out / f"s{i}.png")[0] for i in range(6)}
    for i in range(6):  # other batch mates: float noise at most
        assert (outs[1][i] == outs[3][i]).mean() > 0.999


def test_resume_after_interruption(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path)
    out = tmp_path / "out"
    assert _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out).exit_code == 0
    first = _digest(out)
    # an interrupted run: two outputs missing, a temp file left half-written
    (out / "s1.png").unlink()
    (out / "s4.png").unlink()
    (out / ".s1.png.k3j2l1.tmp").write_bytes(b"\x89PNG half")
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out)
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["images_completed"] == 2 and rep["images_skipped"] == 4 and rep["stray_temp_files_removed"] == 1
    assert not list(out.glob("*.tmp")) and [p.name for p in out.glob(".*")] == [".lmae-run.json"]
    after = _digest(out)
    assert {k: v for k, v in after.items() if k != "report.json"} == \
        {k: v for k, v in first.items() if k != "report.json"}  # deterministic redo
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out, "--overwrite")
    assert json.loads((out / "report.json").read_text())["images_completed"] == 6


def test_bad_inputs_reported_per_file(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path, n=2)
    rng = np.random.default_rng(1)
    # label without image
    write_label(labs / "orphan.png", np.zeros((20, 20), np.uint8))
    # size mismatch
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / "size.png")
    write_label(labs / "size.png", np.zeros((31, 40), np.uint8))
    # class id >= N
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / "ids.png")
    bad = np.zeros((30, 40), np.uint8)
    bad[3, 3] = 9
    write_label(labs / "ids.png", bad)
    # RGB label, 16-bit label
    for stem in ("rgb", "deep", "trunc", "badimg"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / f"{stem}.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(labs / "rgb.png")
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(labs / "deep.png")
    # truncated label, truncated image
    write_label(labs / "trunc.png", np.zeros((30, 40), np.uint8))
    (labs / "trunc.png").write_bytes((labs / "trunc.png").read_bytes()[:50])
    write_label(labs / "badimg.png", np.zeros((30, 40), np.uint8))
    (imgs / "badimg.png").write_bytes((imgs / "badimg.png").read_bytes()[:100])
    out = tmp_path / "out"
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out)
    assert res.exit_code == 1
    rep = json.loads((out / "report.json").read_text())
    f = rep["failures"]
    assert set(f) == {"orphan.png", "size.png", "ids.png", "rgb.png", "deep.png", "trunc.png", "badimg.png"}
    assert "no image" in f["orphan.png"] and "differs" in f["size.png"] and "class ids [9]" in f["ids.png"]
    assert "RGB" in f["rgb.png"] and "16" in f["deep.png"] and "truncated" in f["trunc.png"]
    assert "truncated" in f["badimg.png"] and "badimg.png" in f["badimg.png"]
    assert rep["images_completed"] == 2 and (out / "s0.png").is_file() and (out / "s1.png").is_file()
    assert not (out / "size.png").exists()
    failed_lines = [line for line in res.output.splitlines() if line.lstrip().startswith("FAILED")]
    assert len(failed_lines) == 5 and any("size.png" in line for line in failed_lines)  # the first five
    assert "... and 1 more; see" in res.output and "1 label without an image" in res.output
    assert "orphan.png" in res.output


def test_min_confidence_and_unknown_index_options(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path, n=2)
    out = tmp_path / "out"
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out, "--min-confidence", "0.99")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["pixels_left_unknown"] > 0 and "left unknown" in res.output
    done, _ = read_label(out / "s0.png")
    assert (done == 255).sum() > 0
    # an unknown index colliding with the classes is refused
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", tmp_path / "o2", "--unknown-index", "3")
    assert res.exit_code != 0 and "collides" in res.output


def test_out_must_differ_from_inputs(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path, n=1)
    res = _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", labs)
    assert res.exit_code != 0 and "never modified" in res.output


def test_visualize(ckpt, tmp_path):
    imgs, labs = _dataset(tmp_path, n=3)
    out, conf = tmp_path / "out", tmp_path / "conf"
    assert _run("--model", ckpt, "--images", imgs, "--labels", labs, "--out", out,
                "--confidence-dir", conf).exit_code == 0
    viz = tmp_path / "viz"
    res = CliRunner().invoke(main, ["visualize", "--images", str(imgs), "--partial", str(labs), "--completed", str(out),
                                    "--confidence", str(conf), "--out", str(viz)])
    assert res.exit_code == 0, res.output
    html = (viz / "index.html").read_text()
    for i in range(3):
        assert f"s{i}.png" in html
        im = np.asarray(Image.open(viz / f"s{i}.png"))
        w = read_label(labs / f"s{i}.png")[0].shape[1]
        assert im.shape[1] == 4 * w + 3 * 4  # image | partial | completed | confidence
    assert "confidence" in html


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    pytest.importorskip("lmae_sdk.export.api")
    res = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "d"), "--epochs", "1", "--train-images", "8",
                                    "--val-images", "3", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "L-MAE (ONNX Runtime)" in res.output and "nearest known label" in res.output
    assert len(list((tmp_path / "d" / "completed").glob("*.png"))) == 3


def test_train_mask_ratio_syntax():
    import click

    from lmae_sdk.cli.options import parse_ratios

    assert parse_ratios("0.5,0.7") == [(0.5,), (0.7,)]  # one model each
    assert parse_ratios("0.4:0.6") == [(0.4, 0.5, 0.6)]  # one range model, step 0.1
    assert parse_ratios("0.25:0.75:0.25") == [(0.25, 0.5, 0.75)]
    assert all(type(v) is float for v in parse_ratios("0.25:0.75:0.25")[0])  # not numpy: checkpoints hold them
    for bad in ("0.8:0.4", "0.2:0.6:0", "a", "0.5:1.2"):
        with pytest.raises(click.BadParameter):
            parse_ratios(bad)
