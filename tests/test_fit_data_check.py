"""``lmae fit`` checks its data before any training: every problem is one line naming its
file, the fit stops with exit 1 before the plan, and no stage runs."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from lmae_sdk.cli import main
from lmae_sdk.datasets import DatasetError, load_dataset
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.recipe import runner
from lmae_sdk.recipe.data_check import MAX_LISTED_PROBLEMS, check_dataset, inspect_dataset
from lmae_sdk.recipe.plan import FitOptions
from lmae_sdk.synthetic import make_synthetic_dataset

SIZE = (32, 48)


class StageRan(Exception):
    pass


@pytest.fixture
def stages(monkeypatch):
    """Records the phases the fit would run; the first one stops the fit (nothing trains)."""
    ran: list[list[str]] = []

    def fake_run_phase(phase, plan, work, echo):
        ran.append([s.name for s in phase])
        raise StageRan()

    monkeypatch.setattr(runner, "run_phase", fake_run_phase)
    return ran


@pytest.fixture
def data(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=SIZE)


def fit_cli(data: Path, tmp_path: Path):
    return CliRunner().invoke(main, ["fit", "--data", str(data), "--out", str(tmp_path / "out"), "--budget", "20m",
                                     "--device", "cpu"])


def assert_refused(result, tmp_path: Path, stages: list, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, StageRan)
    for text in expected:
        assert text in result.output, (text, result.output)
    assert "plan:" not in result.output  # refused before the plan
    assert not stages
    assert not (tmp_path / "out.work").exists() and not (tmp_path / "out").exists()


def test_a_good_dataset_passes_with_its_known_shares(data, tmp_path, stages):
    lab = data / "val" / "labels" / "val_0000.png"
    label = read_label(lab)[0].copy()
    label[:, : SIZE[1] // 2] = 255  # half of one of the two val labels unknown
    write_label(lab, label)
    report = check_dataset(load_dataset(data))
    assert report.problems == [] and report.warnings == []
    assert (report.num_classes, report.train, report.val, report.image_size) == (5, 4, 2, SIZE)
    assert report.known_share["train"] == 1.0
    assert report.known_share["val"] == pytest.approx(0.75)
    assert len(report.classes_in_train) >= 2
    facts, fingerprint = runner.dataset_facts(FitOptions(str(data)))
    assert facts == report.facts() and len(fingerprint) == 64
    result = fit_cli(data, tmp_path)
    assert "plan: 4 train / 2 val images, 5 classes, images 32x48" in result.output
    # past the check: the first phase was started (with the boundaries beside the model where two cores are usable)
    assert len(stages) == 1 and stages[0][0] == "model"


def test_labels_whose_class_boundaries_are_unlabelled_are_named_in_the_plan_and_the_card(data, tmp_path, stages):
    """Coarse polygon annotation leaves every class boundary unknown: the card's boundary
    bands then lie away from the boundaries, and the plan and the card say so."""
    from lmae_sdk.card import card_warning, render_markdown
    from lmae_sdk.degrade import degrade

    complete = check_dataset(load_dataset(data))
    assert max(complete.boundaries_unknown.values()) < 0.9
    assert "class boundaries unlabelled" not in fit_cli(data, tmp_path / "complete").output
    for path in sorted(data.glob("*/labels/*.png")):
        label = read_label(path)[0]
        write_label(path, degrade(label, 0.3, "bands", np.random.default_rng(0)))
    report = check_dataset(load_dataset(data))
    assert min(report.boundaries_unknown.values()) > 0.9
    result = fit_cli(data, tmp_path / "bands")
    assert "class boundaries unlabelled: train 100.0%" in result.output
    card = {"dataset": {"name": "d", "root": str(data), "layout": "folder", "classes": ["a", "b"], "train": 4,
                        "val": 2, "image_size": list(SIZE), "known_share": report.known_share,
                        "boundaries_unknown": report.boundaries_unknown},
            "model": {"preset": "small", "parameters_m": 1.0, "input": [32, 48], "mask_ratios": [0.5],
                      "finishing_rule": "argmax", "unknown_threshold": 0.5}}
    assert "class boundaries unlabelled (train 100.0%" in render_markdown(card)
    # lmae complete prints the card's warning: the card's figures do not cover the boundaries
    warning = card_warning(card)
    assert warning and "class boundaries" in warning and "lmae visualize" in warning
    card["dataset"]["boundaries_unknown"] = complete.boundaries_unknown
    assert card_warning(card) is None


def test_class_ids_beyond_the_class_list_are_named(data, tmp_path, stages):
    lab = data / "train" / "labels" / "train_0001.png"
    label = read_label(lab)[0].copy()
    label[0, :3] = [7, 9, 255]  # 255 is unknown and fine
    write_label(lab, label)
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "train_0001.png: class ids 7, 9 beyond the 5 classes of",
                   "classes.json")
    assert "255," not in result.output


def test_a_one_class_dataset_is_refused(data, tmp_path, stages):
    meta = json.loads((data / "classes.json").read_text())
    (data / "classes.json").write_text(json.dumps({**meta, "classes": ["background"], "palette": [[0, 0, 0]]}))
    for lab in (data / "train" / "labels").glob("*.png"):
        write_label(lab, np.zeros(SIZE, np.uint8))
    for lab in (data / "val" / "labels").glob("*.png"):
        write_label(lab, np.zeros(SIZE, np.uint8))
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "classes.json: lists 1 class", "at least 2")


def test_train_labels_with_a_single_class_are_refused(data, tmp_path, stages):
    for lab in (data / "train" / "labels").glob("*.png"):
        label = np.zeros(SIZE, np.uint8)
        label[:4] = 255
        write_label(lab, label)
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "(train split): the labels hold 1 of the 5 classes",
                   "(background)", "at least 2 classes present")


def test_an_image_whose_size_differs_from_its_label_is_named(data, tmp_path, stages):
    img = data / "val" / "images" / "val_0001.png"
    cv2.imwrite(str(img), np.zeros((SIZE[0] + 8, SIZE[1], 3), np.uint8))
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "val_0001.png: image size 48x40 (w x h) differs from its label's 48x32")


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_rgb_label_is_named(data, tmp_path, stages, split):
    lab = data / split / "labels" / f"{split}_0001.png"
    cv2.imwrite(str(lab), np.zeros((*SIZE, 3), np.uint8))
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, f"{split}_0001.png: RGB colour label")


def test_a_broken_classes_json_is_named_with_the_json_problem(data, tmp_path, stages):
    (data / "classes.json").write_text('{"classes": ["a", "b",]}')
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "classes.json: not valid JSON", "line 1 column")
    with pytest.raises(DatasetError, match=r"classes\.json: not valid JSON"):
        load_dataset(data)  # every command reads classes.json through load_dataset


@pytest.mark.parametrize("content, problem", [('["a", "b"]', "expected a JSON object"),
                                              ('{"classes": "ab"}', "'classes' must be a list of class names"),
                                              ('{"palette": [[0, 0, 0]]}', "no 'classes' list"),
                                              ('{"classes": ["a", "b"], "palette": [[0, 0]]}', "'palette' must be")])
def test_a_classes_json_of_the_wrong_shape_is_named(data, content, problem):
    (data / "classes.json").write_text(content)
    with pytest.raises(DatasetError, match="classes.json: " + problem.replace("(", r"\(")):
        load_dataset(data)


def test_corrupt_and_truncated_images_are_named(data, tmp_path, stages):
    (data / "train" / "images" / "train_0000.png").write_bytes(b"not an image at all")
    truncated = data / "train" / "images" / "train_0002.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "train_0000.png: unreadable image", "train_0002.png: unreadable or "
                   "truncated image", "2 problems")


def test_an_image_with_data_after_its_end_marker_is_fine(data):
    img = data / "train" / "images" / "train_0000.png"
    img.write_bytes(img.read_bytes() + b"\0" * 200)
    assert check_dataset(load_dataset(data)).problems == []


def test_every_problem_is_collected_and_the_listing_is_capped(tmp_path, stages):
    data = make_synthetic_dataset(tmp_path / "data", n_train=24, n_val=2, size=SIZE)
    for lab in (data / "train" / "labels").glob("*.png"):
        label = read_label(lab)[0].copy()
        label[0, 0] = 200
        write_label(lab, label)
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "24 problems", f"... and {24 - MAX_LISTED_PROBLEMS} more")
    assert result.output.count("beyond the 5 classes") == MAX_LISTED_PROBLEMS
    assert len(inspect_dataset(load_dataset(data)).problems) == 24


def test_unknown_only_labels_warn_and_an_unknown_only_split_is_refused(data, tmp_path, stages):
    write_label(data / "val" / "labels" / "val_0000.png", np.full(SIZE, 255, np.uint8))
    report = check_dataset(load_dataset(data))
    assert len(report.warnings) == 1 and "val_0000.png: no known pixel" in report.warnings[0]
    write_label(data / "val" / "labels" / "val_0001.png", np.full(SIZE, 255, np.uint8))
    result = fit_cli(data, tmp_path)
    assert_refused(result, tmp_path, stages, "(val split): no label holds a known pixel")
