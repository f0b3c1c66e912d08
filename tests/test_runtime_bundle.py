"""The runtime on an exported ONNX bundle: auto backend, torch vs ONNX Runtime, CLI."""
import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmae_sdk import LMAE, make_config
from lmae_sdk.bundle import BundleError
from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.runtime.backends import BackendError

RATIOS = [0.5, 0.75]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    m = LMAE(make_config("tiny", 5, img_size=(64, 96)))
    save_checkpoint(make_checkpoint(m, class_names=list("abcde"), palette=None, mask_ratios=[0.5],
                                    label_resize="soft", unknown_threshold=0.5), path)
    return path


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory):
    try:
        from lmae_sdk.export import export_bundle
    except ImportError as e:
        pytest.skip(f"lmae_sdk.export is unavailable: {e}")
    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle([ckpt], out, mask_ratios=RATIOS, verify=False, lint=False)
    return out


@pytest.fixture(scope="module")
def ort_completer(bundle):
    from lmae_sdk import LMAECompleter

    return LMAECompleter.load(bundle, backend="auto", threads=1)


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 160))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
        lab[: int([0.2, 0.6, 0.9][i % 3] * h)] = 255
        out.append((img, lab))
    return out


def test_auto_picks_onnxruntime_cpu_and_logs(bundle, caplog):
    from lmae_sdk import LMAECompleter

    with caplog.at_level(logging.INFO, logger="lmae_sdk.runtime"):
        c = LMAECompleter.load(bundle, threads=1)
    assert c.backend_name == "onnxruntime" and c.mask_ratios == RATIOS
    assert c.providers == ["CPUExecutionProvider"]
    assert "auto backend: onnxruntime" in caplog.text


def test_engines_feed_exactly_the_manifest_inputs(bundle, ort_completer):
    from lmae_sdk.bundle import read_manifest

    man = read_manifest(bundle)
    for e in man.engines:
        be = ort_completer.engines[e["mask_ratio"]].backend
        assert be.input_names == e["inputs"]
        for part in ("encoder", "decoder"):
            assert [i.name for i in be.sessions[part].get_inputs()] == e["inputs"][part]
            assert be.sessions[part].get_session_options().intra_op_num_threads == 1


def test_torch_and_onnxruntime_agree(ckpt, ort_completer):
    from lmae_sdk import LMAECompleter

    tc = LMAECompleter.load(ckpt, backend="torch", mask_ratios=RATIOS, threads=1)
    pairs = _pairs(6)
    a = list(tc.complete_batch(pairs, batch_size=4))
    b = list(ort_completer.complete_batch(pairs, batch_size=4))
    lanes = list(ort_completer.complete_batch(pairs, batch_size=2, lanes=2))  # one ORT session, two threads
    for rb, rl in zip(b, lanes):
        assert rb.mask_ratio == rl.mask_ratio and (rb.label == rl.label).mean() > 0.999
    assert len({r.mask_ratio for r in b}) == 2
    for (img, lab), ra, rb in zip(pairs, a, b):
        hole = lab == 255
        assert ra.mask_ratio == rb.mask_ratio and ra.passes == rb.passes
        assert (ra.label[hole] == rb.label[hole]).mean() > 0.999
        np.testing.assert_allclose(ra.confidence, rb.confidence, atol=1e-3)


def test_ort_batches_in_calls_of_a_few_images_give_the_whole_batch_result(bundle, ort_completer):
    from lmae_sdk.runtime.backends.ort_backend import OrtBackend

    be = ort_completer.engines[0.5].backend
    assert be.images_per_call == 1  # the CPU default
    cfg = ort_completer.cfg
    rng = np.random.default_rng(2)
    b, (h, w), L = 5, cfg.img_size, cfg.num_patches
    plans = [rng.permutation(L) for _ in range(b)]
    K = be.num_visible
    keep = np.sort(np.stack([p[:K] for p in plans]), 1)
    mask = np.sort(np.stack([p[K:] for p in plans]), 1)
    feed = {"image": rng.standard_normal((b, 3, h, w)).astype(np.float32),
            "label_planes": rng.random((b, cfg.num_classes, h, w)).astype(np.float32),
            "prior": rng.random((b, cfg.prior_channels, h, w)).astype(np.float32),
            "ids_keep": keep, "ids_mask": mask, "ids_restore": np.argsort(np.concatenate([keep, mask], 1), 1)}
    files = [bundle / f"{part}_m0.5_fp32.onnx" for part in ("encoder", "decoder")]
    whole = OrtBackend(*files, 0.5, K, be.input_names, threads=1, images_per_call=0).run(feed)
    assert whole.shape == (b, cfg.num_classes, h, w)
    for k in (1, 3):
        part = OrtBackend(*files, 0.5, K, be.input_names, threads=1, images_per_call=k)
        np.testing.assert_allclose(part.run(feed), whole, rtol=1e-5, atol=1e-5)
        per_image = {n: list(v) if n in ("image", "label_planes", "prior") else v for n, v in feed.items()}
        got = part.run_images(per_image)
        assert len(got) == b
        np.testing.assert_allclose(np.stack(got), whole, rtol=1e-5, atol=1e-5)


def test_results_without_confidence(ort_completer):
    pairs = _pairs(3)
    a = list(ort_completer.complete_batch(pairs, batch_size=2))
    b = list(ort_completer.complete_batch(pairs, batch_size=2, lanes=2, confidence=False))
    for ra, rb in zip(a, b):
        assert ra.confidence is not None and rb.confidence is None
        np.testing.assert_array_equal(ra.label, rb.label)


def test_backend_choice_errors(ckpt, bundle):
    from lmae_sdk import LMAECompleter

    with pytest.raises(BackendError, match="no tensorrt engines"):
        LMAECompleter.load(bundle, backend="tensorrt")
    with pytest.raises(BackendError, match="checkpoint"):
        LMAECompleter.load(bundle, backend="torch")
    with pytest.raises(BackendError, match="torch backend"):
        LMAECompleter.load(ckpt, backend="onnxruntime")
    with pytest.raises(ValueError, match="unknown backend"):
        LMAECompleter.load(bundle, backend="tvm")


def test_cli_complete_with_bundle(bundle, tmp_path):
    from lmae_sdk.cli import main

    imgs, labs, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    imgs.mkdir()
    for i, (img, lab) in enumerate(_pairs(4, seed=1)):
        from PIL import Image

        Image.fromarray(img).save(imgs / f"f{i}.jpg" if i % 2 else imgs / f"f{i}.png")
        write_label(labs / f"f{i}.png", lab)
    res = CliRunner().invoke(main, ["complete", "--model", str(bundle), "--images", str(imgs), "--labels", str(labs),
                                    "--out", str(out), "--backend", "onnxruntime", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["backend"] == "onnxruntime" and rep["images_completed"] == 4 and not rep["failures"]
    for i in range(4):
        done, _ = read_label(out / f"f{i}.png")
        part, _ = read_label(labs / f"f{i}.png")
        assert (done != 255).all() and (done[part != 255] == part[part != 255]).all()


def test_manifest_states_the_prior_mode_and_older_bundles_still_load(bundle, tmp_path):
    import shutil

    from lmae_sdk import LMAECompleter

    data = json.loads((bundle / "manifest.json").read_text())
    assert data["prior_mode"] == "geodesic"  # pre-processing is readable from the manifest alone
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    del data["prior_mode"]  # a bundle written before the key existed
    (copy / "manifest.json").write_text(json.dumps(data))
    assert LMAECompleter.load(copy, backend="onnxruntime", threads=1).cfg.prior_mode == "geodesic"
    data["prior_mode"] = "euclidean"  # contradicts the engines
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="manifest prior_mode 'euclidean' contradicts engine .*'geodesic'"):
        LMAECompleter.load(copy, backend="onnxruntime", threads=1)
