"""``lmae degrade`` / ``complete`` / ``evaluate`` as batch jobs: run records, resume or refuse,
exit codes, one summary, clear messages for bad inputs and unwritable output folders."""
import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import tiny_checkpoint
from lmae_sdk.cli import main
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.synthetic import SYNTH_CLASSES, synth_pair

RECORD = ".lmae-run.json"
CAMVID_LIKE = [f"0016E5_0{i:04d}" for i in range(7959, 8000, 10)]  # all start with "0016E5_0"


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """A second random-weight tiny checkpoint: another model, same classes and engines."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ck_other") / "other.pt", seed=1)


def _labels(folder, stems, size=(64, 96), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in stems:
        write_label(folder / f"{s}.png", synth_pair(rng, size)[1])
    return folder


def _dataset(root, stems=("s0", "s1", "s2", "s3"), seed=0):
    """Images, full labels and partial labels (about half unknown)."""
    rng = np.random.default_rng(seed)
    imgs, gt, part = root / "images", root / "gt", root / "partial"
    for d in (imgs, gt, part):
        d.mkdir(parents=True)
    for s in stems:
        img, lab = synth_pair(rng, (48, 64))
        Image.fromarray(img).save(imgs / f"{s}.png")
        write_label(gt / f"{s}.png", lab)
        hole = np.kron(rng.random((3, 4)) < 0.5, np.ones((16, 16), bool))
        write_label(part / f"{s}.png", np.where(hole, 255, lab).astype(np.uint8))
    return imgs, gt, part


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _degrade(labels, out, *extra):
    return _invoke("degrade", "--labels", labels, "--out", out, "--patch", 16, *extra)


def _complete(model, imgs, labs, out, *extra):
    return _invoke("complete", "--model", model, "--images", imgs, "--labels", labs, "--out", out,
                   "--backend", "torch", "--threads", 1, "--quiet", *extra)


def _clean_exit(res):
    """No traceback: the command ended through click (a message and an exit code)."""
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output


def _unwritable(tmp_path):
    """A folder no one can create, root included: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a folder")
    return blocker / "out"


# ------------------------------------------------------------------------------ degrade
@pytest.mark.parametrize("stems", [CAMVID_LIKE, [f"aachen_0000{i:02d}_000019_gtFine_labelIds" for i in range(5)]])
def test_degrade_gives_files_with_a_common_name_prefix_different_holes(tmp_path, stems):
    src = tmp_path / "labels"
    src.mkdir()
    for s in stems:  # identical labels: only the seed can make the holes differ
        write_label(src / f"{s}.png", np.zeros((64, 96), np.uint8))
    res = _degrade(src, tmp_path / "out")
    assert res.exit_code == 0, res.output
    holes = {s: (read_label(tmp_path / "out" / f"{s}.png")[0] == 255).tobytes() for s in stems}
    assert len(set(holes.values())) == len(stems)


def test_rng_for_name_uses_the_whole_name():
    from lmae_sdk.degrade import rng_for_name

    a, b = rng_for_name(0, "0016E5_07959"), rng_for_name(0, "0016E5_08000")
    assert a.random() != b.random()
    assert rng_for_name(0, "x").random() == rng_for_name(0, "x").random()
    assert rng_for_name(0, "x").random() != rng_for_name(1, "x").random()


@pytest.mark.parametrize("change", [("--ratio", "0.3"), ("--strategy", "blocks"), ("--seed", "1")])
def test_degrade_with_other_options_into_the_same_folder_is_refused(tmp_path, change):
    src, out = _labels(tmp_path / "labels", CAMVID_LIKE[:3]), tmp_path / "out"
    assert _degrade(src, out).exit_code == 0
    before = _digest(out)
    res = _degrade(src, out, *change)
    _clean_exit(res)
    assert res.exit_code != 0 and "--overwrite" in res.output and change[0].lstrip("-") in res.output
    assert _digest(out) == before  # nothing mixed in
    res = _degrade(src, out, *change, "--overwrite")
    assert res.exit_code == 0, res.output
    assert "3 done" in res.output
    rec = json.loads((out / RECORD).read_text())
    assert str(rec["options"][change[0].lstrip("-")]) == change[1]
    assert {k: v for k, v in _digest(out).items() if k != RECORD} != \
        {k: v for k, v in before.items() if k != RECORD}


def test_degrade_ratio_0_3_after_0_5_with_overwrite_has_the_new_ratio(tmp_path):
    src, out = _labels(tmp_path / "labels", CAMVID_LIKE), tmp_path / "out"
    assert _degrade(src, out, "--ratio", "0.5").exit_code == 0
    assert _degrade(src, out, "--ratio", "0.3", "--overwrite").exit_code == 0
    share = np.mean([(read_label(out / f"{s}.png")[0] == 255).mean() for s in CAMVID_LIKE])
    assert 0.2 < share < 0.4


def test_degrade_resumes_its_own_run_and_a_finished_rerun_succeeds(tmp_path):
    src, out = _labels(tmp_path / "labels", CAMVID_LIKE), tmp_path / "out"
    assert _degrade(src, out).exit_code == 0
    first = _digest(out)
    (out / f"{CAMVID_LIKE[1]}.png").unlink()
    (out / f"{CAMVID_LIKE[3]}.png").unlink()
    res = _degrade(src, out)
    assert res.exit_code == 0, res.output
    assert "2 done, 3 skipped (already done), 0 failed" in res.output
    assert _digest(out) == first  # the same holes as the first run
    res = _degrade(src, out, "--patch", "16")  # nothing left: success
    assert res.exit_code == 0 and "0 done, 5 skipped (already done)" in res.output


def test_degrade_refuses_a_non_empty_folder_without_a_run_record(tmp_path):
    src = _labels(tmp_path / "labels", CAMVID_LIKE[:3])
    gt_copy = _labels(tmp_path / "gt", CAMVID_LIKE[:3])  # e.g. the ground truth by mistake
    before = _digest(gt_copy)
    res = _degrade(src, gt_copy)
    _clean_exit(res)
    assert res.exit_code != 0 and "no run record" in res.output and str(gt_copy) in res.output
    assert _digest(gt_copy) == before


def test_degrade_empty_folder_and_unwritable_out_fail_with_a_message(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _degrade(empty, tmp_path / "out")
    _clean_exit(res)
    assert res.exit_code != 0 and "no label PNGs" in res.output and str(empty) in res.output
    src = _labels(tmp_path / "labels", CAMVID_LIKE[:2])
    bad = _unwritable(tmp_path)
    res = _degrade(src, bad)
    _clean_exit(res)
    assert res.exit_code != 0 and "cannot write" in res.output and str(bad) in res.output


def test_degrade_keeps_going_past_a_bad_file_and_reports_it_once(tmp_path):
    src, out = _labels(tmp_path / "labels", CAMVID_LIKE[:3]), tmp_path / "out"
    (src / "broken.png").write_bytes(b"")
    res = _degrade(src, out)
    _clean_exit(res)
    assert res.exit_code == 1
    assert "3 done, 0 skipped (already done), 1 failed" in res.output
    assert sum("broken.png" in line for line in res.output.splitlines()) == 1
    assert len(list(out.glob("0016E5_*.png"))) == 3


def test_degrade_run_record(tmp_path):
    src, out = _labels(tmp_path / "labels", CAMVID_LIKE[:2]), tmp_path / "out"
    assert _degrade(src, out, "--ratio", "0.4", "--strategy", "objects").exit_code == 0
    rec = json.loads((out / RECORD).read_text())
    assert rec["command"] == "degrade" and rec["inputs"] == {"labels": str(src.resolve())}
    assert rec["options"]["ratio"] == 0.4 and rec["options"]["strategy"] == "objects"
    assert rec["options"]["patch"] == 16 and rec["options"]["seed"] == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_degrade_bad_ratio_is_an_option_error(tmp_path):
    src = _labels(tmp_path / "labels", CAMVID_LIKE[:1])
    res = _degrade(src, tmp_path / "out", "--ratio", "1.5")
    _clean_exit(res)
    assert res.exit_code == 2 and "--ratio" in res.output


# ------------------------------------------------------------------------------ complete
def test_complete_refuses_to_resume_another_models_outputs(ckpt, other_ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    out = tmp_path / "out"
    assert _complete(ckpt, imgs, part, out).exit_code == 0
    (out / "s2.png").unlink()  # an interrupted run
    before = _digest(out)
    res = _complete(other_ckpt, imgs, part, out)
    _clean_exit(res)
    assert res.exit_code != 0 and "--overwrite" in res.output and "model" in res.output
    assert _digest(out) == before
    assert json.loads((out / "report.json").read_text())["model"] == str(ckpt.resolve())
    res = _complete(other_ckpt, imgs, part, out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert "4 done, 0 skipped" in res.output
    rec = json.loads((out / RECORD).read_text())
    assert rec["model"]["sha256"] == hashlib.sha256(other_ckpt.read_bytes()).hexdigest()
    assert json.loads((out / "report.json").read_text())["model"] == str(other_ckpt.resolve())


def test_complete_refuses_a_folder_holding_the_ground_truth(ckpt, tmp_path):
    imgs, gt, part = _dataset(tmp_path)
    before = _digest(gt)
    res = _complete(ckpt, imgs, part, gt)
    _clean_exit(res)
    assert res.exit_code != 0 and "no run record" in res.output and "already done" not in res.output
    assert _digest(gt) == before


def test_complete_option_changes_refused_speed_options_resume(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    out = tmp_path / "out"
    assert _complete(ckpt, imgs, part, out).exit_code == 0
    first = _digest(out)
    res = _complete(ckpt, imgs, part, out, "--min-confidence", "0.5")
    assert res.exit_code != 0 and "min_confidence" in res.output
    (out / "s0.png").unlink()
    res = _complete(ckpt, imgs, part, out, "--batch-size", "3", "--lanes", "2", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert "1 done, 3 skipped (already done), 0 failed" in res.output
    assert _digest(out)["s0.png"] == first["s0.png"]
    res = _complete(ckpt, imgs, part, out)
    assert res.exit_code == 0 and "0 done, 4 skipped (already done)" in res.output


def test_complete_run_record(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path, stems=("a",))
    out, conf = tmp_path / "out", tmp_path / "conf"
    assert _complete(ckpt, imgs, part, out, "--confidence-dir", conf, "--lanes", "1").exit_code == 0
    rec = json.loads((out / RECORD).read_text())
    assert rec["command"] == "complete"
    assert rec["inputs"] == {"images": str(imgs.resolve()), "labels": str(part.resolve())}
    assert rec["model"] == {"path": str(ckpt.resolve()), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert rec["options"]["backend"] == "torch" and rec["options"]["confidence_dir"] == str(conf.resolve())
    assert not {"threads", "lanes", "batch_size", "workers", "quiet"} & set(rec["options"])
    assert json.loads((conf / RECORD).read_text()) == rec
    assert json.loads((out / "report.json").read_text())["run"]["model"]["sha256"] == rec["model"]["sha256"]


def test_complete_empty_or_wrong_labels_folder_fails(ckpt, tmp_path):
    imgs, gt, part = _dataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _complete(ckpt, imgs, empty, tmp_path / "o1")
    _clean_exit(res)
    assert res.exit_code != 0 and "no partial labels" in res.output and str(empty) in res.output
    wrong = _labels(tmp_path / "wrong", [f"other{i}" for i in range(7)], size=(48, 64))
    res = _complete(ckpt, imgs, wrong, tmp_path / "o2")
    _clean_exit(res)
    assert res.exit_code != 0
    assert "0 done, 0 skipped (already done), 7 failed" in res.output
    assert "7 labels without an image" in res.output and "other0.png" in res.output
    assert "4 images without a partial label" in res.output and "s0.png" in res.output


def test_complete_reports_images_without_a_label(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(imgs / "extra.jpg")
    res = _complete(ckpt, imgs, part, tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "1 image without a partial label" in res.output and "extra.jpg" in res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["images_without_label"] == ["extra.jpg"]


def test_complete_unwritable_out_is_found_before_the_model_loads(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path, stems=("a",))
    bad = _unwritable(tmp_path)
    res = _complete(ckpt, imgs, part, bad)
    _clean_exit(res)
    assert res.exit_code != 0 and "cannot write" in res.output and str(bad) in res.output
    junk = tmp_path / "junk.pt"  # a model that would fail to load: the folder is checked first
    junk.write_bytes(b"not a checkpoint")
    res = _complete(junk, imgs, part, bad)
    assert res.exit_code != 0 and "cannot write" in res.output and "junk.pt" not in res.output
    (tmp_path / "c").mkdir()
    res = _complete(ckpt, imgs, part, tmp_path / "ok", "--confidence-dir", _unwritable(tmp_path / "c"))
    _clean_exit(res)
    assert res.exit_code != 0 and "cannot write" in res.output


def test_complete_prints_each_failure_once(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(imgs / "trunc.png")
    write_label(part / "trunc.png", np.zeros((48, 64), np.uint8))
    (part / "trunc.png").write_bytes((part / "trunc.png").read_bytes()[:50])
    res = CliRunner().invoke(main, ["complete", "--model", str(ckpt), "--images", str(imgs), "--labels", str(part),
                                    "--out", str(tmp_path / "out"), "--backend", "torch", "--threads", "1"])
    assert res.exit_code == 1
    assert sum("trunc.png" in line for line in res.output.splitlines()) == 1, res.output
    assert "4 done, 0 skipped (already done), 1 failed" in res.output


def test_complete_lists_the_first_five_failures(ckpt, tmp_path):
    imgs, _, part = _dataset(tmp_path, stems=("ok",))
    for i in range(8):
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(imgs / f"bad{i}.png")
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(part / f"bad{i}.png")  # RGB label
    res = _complete(ckpt, imgs, part, tmp_path / "out")
    assert res.exit_code == 1
    assert sum(f"bad{i}.png" in res.output for i in range(8)) == 5
    assert "... and 3 more; see" in res.output and "report.json" in res.output
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())["failures"]) == 8


# ------------------------------------------------------------------------------ evaluate
def _evaluate(pred, gt, part, *extra):
    return _invoke("evaluate", "--pred", pred, "--gt", gt, "--partial", part, "--num-classes", len(SYNTH_CLASSES),
                   *extra)


def test_evaluate_empty_gt_folder_fails(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _evaluate(empty, empty, empty)
    _clean_exit(res)
    assert res.exit_code != 0 and "nan" not in res.output and "no ground-truth labels" in res.output


def test_evaluate_empty_prediction_folder_fails_with_one_message(tmp_path):
    _, gt, part = _dataset(tmp_path, stems=("a", "b"))
    pred = tmp_path / "pred"
    pred.mkdir()
    res = _evaluate(pred, gt, part)
    _clean_exit(res)
    assert res.exit_code != 0 and "nan" not in res.output
    assert f"no predictions (*.png) in {pred.resolve()}" in res.output and "FAILED" not in res.output


def test_evaluate_bad_predictions_are_reported_per_file(tmp_path):
    _, gt, part = _dataset(tmp_path, stems=("a", "b", "c", "d"))
    pred = tmp_path / "pred"
    pred.mkdir()
    for s in ("a", "b"):
        (pred / f"{s}.png").write_bytes((gt / f"{s}.png").read_bytes())
    write_label(pred / "c.png", np.zeros((30, 30), np.uint8))  # the wrong size
    (pred / "d.png").write_bytes(b"")  # zero bytes
    res = _evaluate(pred, gt, part, "--json-out", tmp_path / "scores.json")
    _clean_exit(res)
    assert res.exit_code == 1
    assert "images 2" in res.output and "PA-mIoU 100.00" in res.output
    assert "c.png" in res.output and "30x30" in res.output and "48x64" in res.output
    assert "d.png" in res.output and "truncated" in res.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["failures"]) == {"c.png", "d.png"} and scores["images"] == 2


def test_evaluate_missing_prediction_is_a_failure(tmp_path):
    _, gt, part = _dataset(tmp_path, stems=("a", "b"))
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "a.png").write_bytes((gt / "a.png").read_bytes())
    res = _evaluate(pred, gt, part)
    assert res.exit_code == 1 and "b.png" in res.output and "images 1" in res.output


def test_evaluate_json_out_holds_the_run_and_is_not_overwritten_by_another_run(tmp_path):
    _, gt, part = _dataset(tmp_path, stems=("a", "b"))
    pred, scores = tmp_path / "pred", tmp_path / "scores.json"
    pred.mkdir()
    for s in ("a", "b"):
        (pred / f"{s}.png").write_bytes((gt / f"{s}.png").read_bytes())
    assert _evaluate(pred, gt, part, "--json-out", scores).exit_code == 0
    run = json.loads(scores.read_text())["run"]
    assert run["command"] == "evaluate" and run["inputs"]["pred"] == str(pred.resolve())
    assert run["options"]["num_classes"] == len(SYNTH_CLASSES)
    assert _evaluate(pred, gt, part, "--json-out", scores).exit_code == 0  # the same run: rewritten
    other_partial = tmp_path / "partial2"  # other inputs: the same partial labels in another folder
    shutil.copytree(part, other_partial)
    res = _evaluate(pred, gt, other_partial, "--json-out", scores)
    _clean_exit(res)
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert json.loads(scores.read_text())["run"]["inputs"]["partial"] == str(part.resolve())
    assert _evaluate(pred, gt, other_partial, "--json-out", scores, "--overwrite").exit_code == 0
    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    res = _evaluate(pred, gt, part, "--json-out", other)
    assert res.exit_code != 0 and json.loads(other.read_text()) == {"mine": 1}
    res = _evaluate(pred, gt, part, "--json-out", _unwritable(tmp_path) / "s.json")
    _clean_exit(res)
    assert res.exit_code != 0 and "cannot write" in res.output
