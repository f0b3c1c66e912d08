"""Bad inputs the commands refuse with a clear message, before any work where they can:
option values out of range, two images with one stem, output folders inside input folders,
degrade patches larger than the label, evaluations with nothing to score, and bundles whose
manifest contradicts itself (``lmae info``)."""
import json
import os
import shutil

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lmae_sdk.cli import main
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.synthetic import SYNTH_CLASSES, synth_pair


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _clean_exit(res):
    """No traceback: the command ended through click (a message and an exit code)."""
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output


def _dataset(root, stems=("a", "b"), seed=0):
    """Images, full labels and partial labels (about half unknown), 48x64."""
    rng = np.random.default_rng(seed)
    imgs, gt, part = root / "images", root / "gt", root / "partial"
    for d in (imgs, gt, part):
        d.mkdir(parents=True)
    for s in stems:
        img, lab = synth_pair(rng, (48, 64))
        Image.fromarray(img).save(imgs / f"{s}.png")
        write_label(gt / f"{s}.png", lab)
        hole = np.kron(rng.random((3, 4)) < 0.5, np.ones((16, 16), bool))
        hole[:16, :16] = True  # never without holes
        write_label(part / f"{s}.png", np.where(hole, 255, lab).astype(np.uint8))
    return imgs, gt, part


def _junk_model(tmp_path):
    """A model that fails to load, naming itself: an error that mentions it came from loading."""
    junk = tmp_path / "junkmodel.pt"
    junk.write_bytes(b"not a checkpoint")
    return junk


def _complete(model, imgs, labs, out, *extra):
    return _invoke("complete", "--model", model, "--images", imgs, "--labels", labs, "--out", out,
                   "--threads", 1, "--quiet", *extra)


# ------------------------------------------------------------------ complete: option values
@pytest.mark.parametrize("value", ["7", "-0.1", "nan"])
def test_complete_min_confidence_outside_0_1_is_an_option_error_before_the_model_loads(ckpt, tmp_path, value):
    imgs, _, part = _dataset(tmp_path)
    for model in (ckpt, _junk_model(tmp_path)):
        res = _complete(model, imgs, part, tmp_path / "out", "--min-confidence", value)
        _clean_exit(res)
        assert res.exit_code == 2 and "--min-confidence" in res.output, res.output
        assert "junkmodel" not in res.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["300", "256", "-1"])
def test_complete_unknown_index_outside_0_255_is_an_option_error_before_the_model_loads(tmp_path, value):
    imgs, _, part = _dataset(tmp_path)
    res = _complete(_junk_model(tmp_path), imgs, part, tmp_path / "out", "--unknown-index", value)
    _clean_exit(res)
    assert res.exit_code == 2 and "--unknown-index" in res.output and "0<=x<=255" in res.output, res.output
    assert "junkmodel" not in res.output and not (tmp_path / "out").exists()


def test_complete_unknown_index_that_is_a_class_id_is_refused_once_the_manifest_is_read(onnx_bundle, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    res = _complete(onnx_bundle, imgs, part, tmp_path / "o1", "--unknown-index", 2)
    _clean_exit(res)
    assert res.exit_code == 2 and "--unknown-index" in res.output and "class id" in res.output, res.output
    assert "0..4" in res.output and "5..255" in res.output and not list((tmp_path / "o1").glob("*.png"))
    # checked before the engines load: a broken engine file is not reached
    broken = tmp_path / "broken"
    shutil.copytree(onnx_bundle, broken)
    enc = next(broken.glob("encoder_*.onnx"))
    enc.write_bytes(enc.read_bytes() + b"x")
    res = _complete(broken, imgs, part, tmp_path / "o2", "--unknown-index", 2)
    _clean_exit(res)
    assert res.exit_code == 2 and "--unknown-index" in res.output and "sha256" not in res.output, res.output


def test_complete_unknown_index_colliding_with_a_checkpoints_classes_is_refused_before_any_file(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    res = _complete(ckpt, imgs, part, tmp_path / "out", "--unknown-index", 3)
    _clean_exit(res)
    assert res.exit_code != 0 and "collides" in res.output and "done" not in res.output, res.output


# ------------------------------------------------------------------ two images, one stem
def test_complete_two_images_with_one_stem_fail_that_label_naming_both(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    Image.open(imgs / "a.png").convert("RGB").save(imgs / "a.jpg")
    out = tmp_path / "out"
    res = _complete(ckpt, imgs, part, out, "--backend", "torch")
    _clean_exit(res)
    assert res.exit_code == 1, res.output
    assert "1 done" in res.output and "1 failed" in res.output
    why = json.loads((out / "report.json").read_text())["failures"]["a.png"]
    assert str(imgs.resolve() / "a.jpg") in why and str(imgs.resolve() / "a.png") in why, why
    assert "a.jpg" in res.output and not (out / "a.png").exists() and (out / "b.png").is_file()


def test_pair_folder_refuses_two_images_with_one_stem(tmp_path):
    from lmae_sdk.datasets import DatasetError, pair_folder

    imgs, _, part = _dataset(tmp_path)
    Image.open(imgs / "b.png").convert("RGB").save(imgs / "b.jpeg")
    with pytest.raises(DatasetError) as err:
        pair_folder(imgs, part)
    assert "b.jpeg" in str(err.value) and "b.png" in str(err.value)


def test_files_by_stem_names_every_file_of_a_shared_stem(tmp_path):
    from lmae_sdk.inputs import ambiguous_stems

    for name in ("a.png", "a.jpg", "b.png", ".a.tif", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    found = ambiguous_stems(tmp_path)
    assert list(found) == ["a"] and [p.name for p in found["a"]] == ["a.jpg", "a.png"]


# ------------------------------------------------------------------ --out inside an input folder
def test_refuse_out_inside_names_both_folders(tmp_path):
    from lmae_sdk.cli.options import refuse_out_inside

    labels = tmp_path / "labels"
    labels.mkdir()
    for out in (labels, labels / "sub", labels / "a" / "b"):
        with pytest.raises(click.BadParameter) as err:
            refuse_out_inside(out, {"--labels": labels})
        assert str(labels) in err.value.format_message() and str(out) in err.value.format_message()
        assert err.value.param_hint == "--out"
    refuse_out_inside(tmp_path / "labels2", {"--labels": labels})  # a sibling with a common prefix
    refuse_out_inside(tmp_path, {"--labels": labels})  # a parent folder is not inside
    (tmp_path / "link").symlink_to(labels)
    with pytest.raises(click.BadParameter, match="inside"):
        refuse_out_inside(tmp_path / "link" / "x", {"--labels": labels}, option="--confidence-dir")


def test_complete_out_inside_an_input_folder_is_refused(tmp_path):
    imgs, _, part = _dataset(tmp_path)
    junk = _junk_model(tmp_path)
    for option, folder, inside in (("--out", part, part / "completed"), ("--out", imgs, imgs / "x" / "y"),
                                   ("--confidence-dir", imgs, imgs / "conf")):
        out = inside if option == "--out" else tmp_path / "out"
        extra = ("--confidence-dir", inside) if option == "--confidence-dir" else ()
        res = _complete(junk, imgs, part, out, *extra)
        _clean_exit(res)
        assert res.exit_code == 2 and option in res.output, res.output
        assert str(folder.resolve()) in res.output and str(inside.resolve()) in res.output
        assert "never modified" in res.output and not inside.exists() and "junkmodel" not in res.output


def test_degrade_out_inside_the_labels_folder_is_refused(tmp_path):
    _, gt, _ = _dataset(tmp_path)
    for out in (gt / "partial", gt):
        res = _invoke("degrade", "--labels", gt, "--out", out)
        _clean_exit(res)
        assert res.exit_code == 2 and "--out" in res.output and str(gt.resolve()) in res.output, res.output
    assert not (gt / "partial").exists()


# ------------------------------------------------------------------ degrade --patch
@pytest.mark.parametrize("strategy", ["random", "background", "label", "blocks"])
def test_degrade_patch_larger_than_a_label_fails_that_file_and_the_job_goes_on(tmp_path, strategy):
    src = tmp_path / "labels"
    rng = np.random.default_rng(0)
    write_label(src / "big.png", synth_pair(rng, (64, 96))[1])
    write_label(src / "small.png", synth_pair(rng, (20, 30))[1])
    out = tmp_path / "out"
    res = _invoke("degrade", "--labels", src, "--out", out, "--patch", 32, "--strategy", strategy)
    _clean_exit(res)
    assert res.exit_code == 1, res.output
    assert "1 done, 0 skipped (already done), 1 failed" in res.output
    line = next(x for x in res.output.splitlines() if "FAILED" in x)
    assert "small.png" in line and "patch 32" in line and "20x30" in line, line
    assert (out / "big.png").is_file() and not (out / "small.png").exists()


def test_degrade_a_huge_patch_fails_every_file_at_once(tmp_path):
    src = tmp_path / "labels"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_label(src / f"l{i}.png", synth_pair(rng, (64, 96))[1])
    res = _invoke("degrade", "--labels", src, "--out", tmp_path / "out", "--patch", 100000)
    _clean_exit(res)
    assert res.exit_code == 1 and "0 done, 0 skipped (already done), 3 failed" in res.output, res.output
    assert "patch 100000" in res.output
    res = _invoke("degrade", "--labels", src, "--out", tmp_path / "o2", "--patch", 0)
    _clean_exit(res)
    assert res.exit_code == 2 and "--patch" in res.output


def test_degrade_patch_checks_and_a_huge_patch_costs_no_more_than_the_pixels():
    from lmae_sdk.degrade import DegradeError, check_patch, degrade

    lab = np.zeros((40, 50), np.uint8)
    for patch in (41, 10**9):
        with pytest.raises(DegradeError, match=f"patch {patch} px is larger than the label"):
            check_patch(patch, lab.shape)
    assert check_patch(40, lab.shape) == 40
    for patch in (0, -3, 2.5, True):
        with pytest.raises(DegradeError, match="patch"):
            degrade(lab, 0.5, "random", patch=patch)
    lab[:, 25:] = 1
    for strategy in ("random", "background", "label", "blocks"):  # one cell: was O(patch ** 2) memory
        out = degrade(lab, 0.6, strategy, np.random.default_rng(0), patch=10**9)
        assert out.shape == lab.shape and ((out == lab) | (out == 255)).all()
    assert (degrade(lab, 0.5, "objects", patch=10**9) == 255).any()  # objects and bands have no patches


# ------------------------------------------------------------------ evaluate with nothing to score
def _evaluate(pred, gt, part, *extra):
    return _invoke("evaluate", "--pred", pred, "--gt", gt, "--partial", part, "--num-classes", len(SYNTH_CLASSES),
                   *extra)


def test_evaluate_partial_labels_without_unknown_pixels_say_why_there_is_no_score(tmp_path):
    _, gt, _ = _dataset(tmp_path)
    scores = tmp_path / "scores.json"
    res = _evaluate(gt, gt, gt, "--json-out", scores)  # the "partial" labels are complete
    _clean_exit(res)
    assert res.exit_code == 1, res.output
    assert "nan" not in res.output.lower() and "no unknown pixels in the partial labels" in res.output
    assert "PA-mIoU is undefined" in res.output and not scores.exists()


def test_evaluate_ground_truth_void_at_every_hole_says_why_there_is_no_score(tmp_path):
    _, gt, part = _dataset(tmp_path)
    void_gt = tmp_path / "void_gt"
    void_gt.mkdir()
    for f in gt.iterdir():
        truth, p = read_label(f)[0], read_label(part / f.name)[0]
        write_label(void_gt / f.name, np.where(p == 255, 255, truth).astype(np.uint8))
    res = _evaluate(gt, void_gt, part)
    _clean_exit(res)
    assert res.exit_code == 1, res.output
    assert "nan" not in res.output.lower() and "void" in res.output and "PA-mIoU is undefined" in res.output


def test_completion_meter_names_why_it_is_empty():
    from lmae_sdk.metrics import CompletionMeter

    m = CompletionMeter(3)
    assert "no images" in m.empty_reason()
    lab = np.array([[0, 1], [2, 0]], np.uint8)
    m.update(lab, lab, lab)
    assert "no unknown pixels" in m.empty_reason()
    m.update(lab, np.full_like(lab, 255), np.full_like(lab, 255))
    assert "void" in m.empty_reason()
    m.update(lab, lab, np.full_like(lab, 255))
    assert m.empty_reason() is None and m.summary()["pa_miou"] == 100.0


# ------------------------------------------------------------------ lmae info on a broken bundle
CARD = {"created": "2026-12-03T10:00:00+0000",
        "dataset": {"name": "toy", "root": "/d", "layout": "folder", "classes": list("abcde"), "train": 24, "val": 8,
                    "image_size": [64, 96]},
        "model": {"preset": "tiny", "parameters_m": 0.59, "input": [64, 96], "mask_ratios": [0.5],
                  "finishing_rule": "argmax", "unknown_threshold": 0.5}}


def _bundle_copy(onnx_bundle, tmp_path, card=True):
    from lmae_sdk.card import write_card

    copy = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, copy)
    if card:
        write_card(copy, CARD)
    return copy


def _edit_manifest(bundle, edit):
    data = json.loads((bundle / "manifest.json").read_text())
    edit(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


def test_info_prints_a_sound_bundle(onnx_bundle, tmp_path):
    res = _invoke("info", _bundle_copy(onnx_bundle, tmp_path))
    assert res.exit_code == 0 and "Model card: toy" in res.output, res.output
    res = _invoke("info", onnx_bundle)
    assert res.exit_code == 0 and "without a model card" in res.output, res.output


def _missing_engine_file(b):
    next(b.glob("decoder_*.onnx")).unlink()


def _sha256_mismatch(b):
    f = next(b.glob("encoder_*.onnx"))
    f.write_bytes(f.read_bytes() + b"\0")


def _six_classes(b):
    _edit_manifest(b, lambda d: d.__setitem__("class_names", list("abcdef")))


def _duplicate_ratio(b):
    def edit(d):
        twin = json.loads(json.dumps(d["engines"][0]))
        twin["name"] = twin["name"] + "_copy"
        d["engines"].append(twin)
    _edit_manifest(b, edit)


def _graph_disagrees(b):
    def edit(d):  # top level and entries edited alike: only the ONNX graphs still say 5 classes
        d["class_names"] = list("abcdef")
        for e in d["engines"]:
            e["model_config"]["num_classes"] = 6
    _edit_manifest(b, edit)


def _unknown_index_collides(b):
    _edit_manifest(b, lambda d: d.__setitem__("unknown_index", 2))


BROKEN = {"missing engine file": (_missing_engine_file, r"decoder file decoder_m0\.5_fp32\.onnx is missing"),
          "sha256 mismatch": (_sha256_mismatch, r"encoder file encoder_m0\.5_fp32\.onnx fails its sha256 check"),
          "classes count": (_six_classes, r"class_names \(6 names\) contradicts .*num_classes is 5"),
          "duplicate ratio": (_duplicate_ratio, r"engines .* and .* both .*mask ratio 0\.5"),
          "graph": (_graph_disagrees, r"encoder_m0\.5_fp32\.onnx was exported with model_config num_classes 5"),
          "unknown index": (_unknown_index_collides, "unknown_index 2 collides")}


@pytest.mark.parametrize("card", [True, False], ids=["with card", "without card"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_info_refuses_a_manifest_that_contradicts_itself(onnx_bundle, tmp_path, case, card):
    import re

    breaking, message = BROKEN[case]
    bundle = _bundle_copy(onnx_bundle, tmp_path, card=card)
    breaking(bundle)
    for extra in ((), ("--json",)):
        res = _invoke("info", bundle, *extra)
        _clean_exit(res)
        assert res.exit_code == 1, res.output
        assert re.search(message, res.output), res.output
        assert "Model card" not in res.output and '"dataset"' not in res.output


def test_the_loader_refuses_a_duplicate_ratio_too(onnx_bundle, tmp_path):
    from lmae_sdk import LMAECompleter
    from lmae_sdk.bundle import BundleError

    bundle = _bundle_copy(onnx_bundle, tmp_path, card=False)
    _duplicate_ratio(bundle)
    with pytest.raises(BundleError, match=BROKEN["duplicate ratio"][1]):
        LMAECompleter.load(bundle, backend="onnxruntime", threads=1)


def test_onnx_graph_header_reads_metadata_and_inputs_without_onnx(onnx_bundle):
    onnx = pytest.importorskip("onnx")
    from lmae_sdk.bundle import onnx_graph_header

    for f in sorted(onnx_bundle.glob("*.onnx")):
        model = onnx.load(os.fspath(f), load_external_data=False)
        metadata, inputs = onnx_graph_header(f)
        assert metadata == {p.key: p.value for p in model.metadata_props}
        init = {i.name for i in model.graph.initializer}
        assert inputs == [i.name for i in model.graph.input if i.name not in init]
