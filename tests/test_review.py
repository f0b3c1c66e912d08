"""The review queue: scoring and ranking (lmae_sdk/review.py), ``lmae complete --review``
(written, sorted, resumed) and ``lmae visualize --review``."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lmae_sdk.cli import main
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.review import (QueueEntry, QueueSettings, ReviewError, queue_csv, queue_json, rank, read_queue,
                             score_image, top_share_entropy)

U = 255


# ------------------------------------------------------------------ scoring
def test_entropy_of_uniform_is_log_n_and_of_certain_is_zero():
    for n in (2, 5, 12):
        assert top_share_entropy(np.float32(1 / n), n) == pytest.approx(math.log(n))
        assert top_share_entropy(np.ones(3, np.float32), n) == pytest.approx(np.zeros(3))
    h = top_share_entropy(np.linspace(0.2, 1, 50), 5)
    assert (np.diff(h) < 0).all()  # less confident, more entropy


def test_entropy_is_that_of_the_flattest_distribution_with_this_top_share():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.dirichlet(np.ones(6))
        true = -(p * np.log(p)).sum()
        assert true <= top_share_entropy(p.max(), 6) + 1e-9
        flat = np.full(6, (1 - p.max()) / 5)
        flat[0] = p.max()
        assert top_share_entropy(p.max(), 6) == pytest.approx(-(flat * np.log(flat)).sum())


def test_score_counts_filled_pixels_uncertain_share_and_per_class_shares():
    partial = np.full((4, 5), U, np.uint8)
    partial[0] = 0  # a known row: never counted
    label = np.array([[0] * 5, [1, 1, 1, 1, 2], [1, 1, 2, 2, 2], [2, 2, 2, U, U]], np.uint8)
    conf = np.ones((4, 5), np.float32)
    conf[0] = 0.1  # known pixels, whatever their value
    conf[1, :2] = 0.3  # two of class 1's six below 0.5
    conf[2, 2] = 0.45  # one of class 2's six
    conf[3, 0] = 0.5  # at the level: not below
    s = score_image(partial, label, conf, num_classes=3, level=0.5)
    assert (s.filled, s.uncertain, s.left_unknown) == (13, 3, 2)
    assert s.uncertain_share == pytest.approx(3 / 13)
    assert s.class_filled == [0, 6, 7] and s.class_uncertain == [0, 2, 1]
    assert s.class_shares == [None, pytest.approx(2 / 6), pytest.approx(1 / 7)]
    expected = top_share_entropy(conf[(partial == U) & (label != U)], 3).mean()
    assert s.mean_entropy == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ"):
        score_image(partial, label[:3], conf, 3, 0.5)


def _entry(name, partial, label, conf, n=3, level=0.5):
    return QueueEntry(f"{name}.jpg", f"{name}.png", score_image(partial, label, conf, n, level))


def test_many_uncertain_pixels_rank_above_a_confident_image():
    rng = np.random.default_rng(1)
    partial = np.full((8, 8), U, np.uint8)
    partial[:, :2] = 0
    label = np.where(partial == U, rng.integers(0, 3, (8, 8)), 0).astype(np.uint8)
    confident = _entry("confident", partial, label, np.full((8, 8), 0.95, np.float32))
    unsure = _entry("unsure", partial, label, np.where(rng.random((8, 8)) < 0.7, 0.4, 0.9).astype(np.float32))
    some = _entry("some", partial, label, np.where(rng.random((8, 8)) < 0.2, 0.4, 0.9).astype(np.float32))
    nothing_filled = _entry("nothing", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8),
                            np.ones((8, 8), np.float32))
    # no pixel below the level in either: the higher entropy first
    flat = _entry("flat", partial, label, np.full((8, 8), 0.6, np.float32))
    ranked = rank([nothing_filled, confident, flat, some, unsure])
    assert [e.image for e in ranked] == ["unsure.jpg", "some.jpg", "flat.jpg", "confident.jpg", "nothing.jpg"]


def test_queue_files_columns_rows_and_settings(tmp_path):
    partial = np.full((3, 3), U, np.uint8)
    label = np.array([[0, 0, 1]] * 3, np.uint8)
    a = _entry("a", partial, label, np.full((3, 3), 0.3, np.float32), n=2)
    b = _entry("b", partial, label, np.full((3, 3), 0.9, np.float32), n=2)
    settings = QueueSettings(0.5, ["road", "car"], None, "bundle/", "abc", {"images": "I", "labels": "L", "out": "O",
                                                                          "confidence_dir": None})
    ranked = rank([b, a])
    rows = list(csv.reader(queue_csv(ranked, settings.class_names).decode().splitlines()))
    assert rows[0] == ["rank", "image", "label_file", "filled_pixels", "uncertain_share", "mean_entropy",
                       "uncertain:road", "uncertain:car"]
    assert rows[1][:4] == ["1", "a.jpg", "a.png", "9"] and float(rows[1][4]) == 1.0 and rows[2][1] == "b.jpg"
    path = tmp_path / "review.json"
    path.write_bytes(queue_json(ranked, settings, {"c.png": "not completed"}))
    data = read_queue(path)
    assert data["settings"]["level"] == 0.5 and data["settings"]["classes"] == ["road", "car"]
    assert data["settings"]["model"] == "bundle/" and "uncertain_share" in data["settings"]["sort_key"]
    assert [e["image"] for e in data["images"]] == ["a.jpg", "b.jpg"]
    assert data["not_scored"] == {"c.png": "not completed"}
    assert data["images"][0]["class_uncertain_share"] == {"road": 1.0, "car": 1.0}
    path.write_text('{"format": "something else"}')
    with pytest.raises(ReviewError, match="not a review queue"):
        read_queue(path)


def test_records_are_read_back_only_for_their_run_and_level(tmp_path):
    from lmae_sdk.review import ReviewRecords

    def records(run, level):
        return ReviewRecords(tmp_path, run, QueueSettings(level, ["x", "y"], None, "m", None, {}))

    partial = np.full((2, 2), U, np.uint8)
    label, conf = np.array([[0, 1], [1, 1]], np.uint8), np.array([[0.2, 0.9], [0.9, 0.4]], np.float32)
    score = records("run1", 0.5).add("a", partial, label, conf)
    assert records("run1", 0.5).read("a") == score and score.class_uncertain == [1, 1]
    assert records("run2", 0.5).read("a") is None and records("run1", 0.6).read("a") is None
    assert records("run1", 0.5).read("missing") is None
    (tmp_path / ".lmae-review" / "a.json").write_text("{half")
    assert records("run1", 0.5).read("a") is None


def test_review_module_needs_no_torch():
    code = ("import sys\nclass No:\n def find_spec(self, name, path=None, target=None):\n"
            "  if name.split('.')[0] == 'torch': raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, No())\nimport lmae_sdk.review, lmae_sdk.cli.visualize\n"
            "assert 'torch' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ the commands
def _dataset(root, n=5, seed=0):
    rng = np.random.default_rng(seed)
    imgs, labs = root / "images", root / "labels"
    imgs.mkdir(parents=True)
    for i in range(n):
        h, w = int(rng.integers(40, 80)), int(rng.integers(50, 100))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(imgs / f"s{i}.jpg")
        lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
        lab[rng.random((h, w)) < 0.2 + 0.1 * i] = U
        write_label(labs / f"s{i}.png", lab)
    return imgs, labs


def _complete(bundle, imgs, labs, out, *extra):
    args = ["complete", "--model", bundle, "--images", imgs, "--labels", labs, "--out", out, "--threads", "1",
            "--quiet", *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def _queue(out):
    return json.loads((out / "review.json").read_text())


def test_complete_review_writes_a_sorted_queue_of_every_image(onnx_bundle, tmp_path):
    imgs, labs = _dataset(tmp_path)
    out, conf = tmp_path / "out", tmp_path / "conf"
    res = _complete(onnx_bundle, imgs, labs, out, "--confidence-dir", conf, "--review", "--review-below", "0.6")
    assert res.exit_code == 0, res.output
    assert "review queue: 5 images" in res.output
    data = _queue(out)
    assert data["settings"]["level"] == 0.6 and data["settings"]["classes"] == list("abcde")
    assert data["settings"]["model"] == str(Path(onnx_bundle).resolve()) and data["settings"]["out"] == str(out)
    images = data["images"]
    assert sorted(e["image"] for e in images) == [f"s{i}.jpg" for i in range(5)] and data["not_scored"] == {}
    assert [e["rank"] for e in images] == [1, 2, 3, 4, 5]
    keys = [(-e["uncertain_share"], -e["mean_entropy"], e["image"]) for e in images]
    assert keys == sorted(keys)
    for e in images:  # the counts are those of the files written
        stem = e["label_file"][:-4]
        partial, done = read_label(labs / f"{stem}.png")[0], read_label(out / e["label_file"])[0]
        assert e["filled_pixels"] == np.count_nonzero(partial == U) and 0 <= e["uncertain_share"] <= 1
        assert 0 <= e["mean_entropy"] <= math.log(5) + 1e-6
        c8 = read_label(conf / f"{stem}.png")[0][partial == U]
        assert abs(e["uncertain_share"] - (c8 / 255 < 0.6).mean()) < 0.05  # the 8-bit map rounds
        assert sum(e["class_filled_pixels"].values()) == e["filled_pixels"]
        assert e["class_filled_pixels"]["a"] == np.count_nonzero(done[partial == U] == 0)
    rows = list(csv.DictReader((out / "review.csv").read_text().splitlines()))
    assert [r["image"] for r in rows] == [e["image"] for e in images]
    assert list(rows[0])[:6] == ["rank", "image", "label_file", "filled_pixels", "uncertain_share", "mean_entropy"]
    assert [k for k in rows[0] if k.startswith("uncertain:")] == [f"uncertain:{c}" for c in "abcde"]
    assert json.loads((out / "report.json").read_text())["review"] == str(out / "review.json")
    # the records and the queue are bookkeeping: an evaluation or a visualization sees only labels
    assert sorted(p.name for p in out.glob("*.png")) == [f"s{i}.png" for i in range(5)]


def test_bad_review_level_refused_before_the_model_loads(onnx_bundle, tmp_path, monkeypatch):
    import lmae_sdk.runtime as runtime

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runtime.LMAECompleter, "load", no_load)
    imgs, labs = _dataset(tmp_path, n=1)
    for bad in ("1.5", "-0.1", "nan"):
        res = _complete(onnx_bundle, imgs, labs, tmp_path / "out", "--review", "--review-below", bad)
        assert res.exit_code == 2 and "--review-below" in res.output and "[0, 1]" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_resumed_runs_give_the_queue_of_every_image(onnx_bundle, tmp_path):
    imgs, labs = _dataset(tmp_path)
    full, out = tmp_path / "full", tmp_path / "out"
    assert _complete(onnx_bundle, imgs, labs, full, "--review").exit_code == 0
    # a run without --review: its images have no records and are completed again with --review
    assert _complete(onnx_bundle, imgs, labs, out).exit_code == 0
    res = _complete(onnx_bundle, imgs, labs, out, "--review")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["images_completed"] == 5
    # an interrupted --review run: two images left to do; the queue still covers all five
    for stem in ("s1", "s3"):
        (out / f"{stem}.png").unlink()
    (out / ".lmae-review" / "s3.json").unlink()
    (out / ".lmae-review" / ".s3.json.k3j2.tmp").write_text("{half")
    res = _complete(onnx_bundle, imgs, labs, out, "--review")
    assert res.exit_code == 0, res.output
    assert not list((out / ".lmae-review").glob("*.tmp"))
    rep = json.loads((out / "report.json").read_text())
    assert rep["images_completed"] == 2 and rep["images_skipped"] == 3
    assert [e["image"] for e in _queue(out)["images"]] == [e["image"] for e in _queue(full)["images"]]
    got = {e["image"]: e for e in _queue(out)["images"]}
    for e in _queue(full)["images"]:
        assert got[e["image"]]["filled_pixels"] == e["filled_pixels"]
        assert got[e["image"]]["uncertain_share"] == pytest.approx(e["uncertain_share"], abs=1e-3)
    # another level: the records do not fit it, the images are completed again and scored at it
    res = _complete(onnx_bundle, imgs, labs, out, "--review", "--review-below", "0.9")
    assert res.exit_code == 0 and json.loads((out / "report.json").read_text())["images_completed"] == 5
    assert _queue(out)["settings"]["level"] == 0.9
    assert all(e["uncertain_share"] >= got[e["image"]]["uncertain_share"] - 1e-9 for e in _queue(out)["images"])


def test_visualize_review_renders_the_top_of_the_queue_in_order(onnx_bundle, tmp_path):
    imgs, labs = _dataset(tmp_path)
    out, conf, viz = tmp_path / "out", tmp_path / "conf", tmp_path / "viz"
    assert _complete(onnx_bundle, imgs, labs, out, "--confidence-dir", conf, "--review").exit_code == 0
    queue = _queue(out)["images"]
    res = CliRunner().invoke(main, ["visualize", "--review", str(out / "review.json"), "--top", "3",
                                    "--out", str(viz)])
    assert res.exit_code == 0, res.output
    page = (viz / "index.html").read_text()
    top = [e["image"] for e in queue[:3]]
    assert sorted(p.name for p in viz.glob("*.png")) == sorted(f"{n[:-4]}.png" for n in top)
    positions = [page.index(f"<h3>{n}</h3>") for n in top]
    assert positions == sorted(positions) and f"<h3>{queue[3]['image']}</h3>" not in page
    assert "#1: uncertain share" in page and "uncertain: confidence &lt; 0.5" in page
    assert all(f">{c}</span>" in page for c in "abcde")  # the legend: the bundle's class names
    for n in top:  # image | partial | completed | confidence | uncertain
        stem = n[:-4]
        partial, done = read_label(labs / f"{stem}.png")[0], read_label(out / f"{stem}.png")[0]
        c8 = read_label(conf / f"{stem}.png")[0]
        w = partial.shape[1]
        strip = np.asarray(Image.open(viz / f"{stem}.png"))
        assert strip.shape[1] == 5 * w + 4 * 4
        magenta = (strip[:, -w:] == (255, 0, 255)).all(2)
        assert (magenta == ((partial == U) & (done != U) & (c8 < 127.5))).all()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    res = CliRunner().invoke(main, ["visualize", "--review", str(bad), "--out", str(viz)])
    assert res.exit_code == 1 and "not a review queue" in res.output
    res = CliRunner().invoke(main, ["visualize", "--out", str(viz)])
    assert res.exit_code == 2 and "--images is required" in res.output
