"""``lmae fit``'s parts that need no training: the budget rule, the work folder's record,
the budget option, the boundary-band holes and the model card."""
from __future__ import annotations

import json
import re

import click
import numpy as np
import pytest
from click.testing import CliRunner

from lmae_sdk.card import card_line, read_card, render_markdown, write_card
from lmae_sdk.cli import main
from lmae_sdk.cli.fit_info import parse_budget
from lmae_sdk.degrade import degrade, rng_for_name
from dataclasses import replace

from lmae_sdk.recipe.plan import DataFacts, FitOptions, PlanError, make_plan, model_size_for
from lmae_sdk.recipe.state import FitStateError, WorkFolder

from conftest import camvid_timings

CAMVID_LIKE = DataFacts(num_classes=11, train=367, val=101, image_size=(360, 480))
CAMVID_TIMINGS = camvid_timings()
TRAINING = ("model", "boundaries", "finetune")


@pytest.mark.parametrize("text, minutes", [("2h", 120), ("30m", 30), ("1h30m", 90), ("45", 45), ("1.5h", 90)])
def test_budget_parses(text, minutes):
    assert parse_budget(text) == minutes


@pytest.mark.parametrize("text", ["", "2x", "h", "0.5m", "-1h"])
def test_bad_budget_is_refused_with_the_reason(text):
    with pytest.raises(click.BadParameter):
        parse_budget(text)


def test_more_budget_trains_every_stage_longer_and_changes_nothing_else():
    small, large = (make_plan(FitOptions("d", budget_min=b), CAMVID_LIKE, CAMVID_TIMINGS, cores=2, spent_min=0.5)
                    for b in (20, 120))
    for name in TRAINING:
        assert large.stage(name).minutes > small.stage(name).minutes
    for name in ("calibrate", "export", "verify", "card"):
        assert large.stage(name).minutes == small.stage(name).minutes
    for plan, budget in ((small, 20), (large, 120)):
        total = sum(max(s.minutes for s in phase) for phase in plan.phases())
        assert total == pytest.approx(budget - 0.5)  # what checking and measuring spent is not planned again
        assert not plan.notes


def test_two_cores_train_the_model_and_the_boundary_net_side_by_side():
    two = make_plan(FitOptions("d", budget_min=30), CAMVID_LIKE, CAMVID_TIMINGS, cores=2)
    assert [s.name for s in two.phases()[0]] == ["model", "boundaries"]
    assert [s.threads for s in two.phases()[0]] == [1, 1]
    assert two.stage("finetune").threads == 2
    one = make_plan(FitOptions("d", budget_min=30), CAMVID_LIKE, CAMVID_TIMINGS, cores=1)
    assert all(len(phase) == 1 for phase in one.phases())
    assert "side by side" in two.describe() and "side by side" not in one.describe()


def test_pixel_fusion_has_time_to_sample_every_train_image_at_any_budget():
    every_image_min = CAMVID_LIKE.train * CAMVID_TIMINGS.collect_s / 60  # as measured on this machine
    for budget in (20, 30, 120, 600):
        fusion = make_plan(FitOptions("d", budget_min=budget), CAMVID_LIKE, CAMVID_TIMINGS, cores=2).stage("fusion")
        assert fusion.minutes >= 2 * every_image_min - 1e-9
        assert fusion.minutes >= 0.08 * budget - 1e-9
    plan = make_plan(FitOptions("d", budget_min=600), CAMVID_LIKE, CAMVID_TIMINGS, cores=2)
    assert plan.stage("fusion").minutes == pytest.approx(48)


def test_the_later_stages_get_what_this_machine_needs_for_them():
    slow = replace(CAMVID_TIMINGS, prepare_s=0.3, model_s=0.6, finish_s=3.5, features_s=0.25)
    fast_plan, slow_plan = (make_plan(FitOptions("d", budget_min=120), CAMVID_LIKE, t, cores=2)
                            for t in (CAMVID_TIMINGS, slow))
    for name in ("fusion", "calibrate", "verify", "card"):
        assert slow_plan.stage(name).minutes > fast_plan.stage(name).minutes
    assert slow_plan.stage("model").minutes < fast_plan.stage("model").minutes  # the budget stays the budget


def test_a_budget_too_small_is_refused_naming_the_smallest_that_works():
    with pytest.raises(PlanError, match=r"the smallest budget that works here is --budget (\d+)m") as refused:
        make_plan(FitOptions("d", budget_min=5), CAMVID_LIKE, CAMVID_TIMINGS, cores=2, spent_min=0.4)
    smallest = int(re.search(r"--budget (\d+)m", str(refused.value)).group(1))
    plan = make_plan(FitOptions("d", budget_min=smallest), CAMVID_LIKE, CAMVID_TIMINGS, cores=2, spent_min=0.4)
    assert plan.stage("model").minutes * 60 / CAMVID_TIMINGS.train_step_s >= 100  # the steps the minimum buys
    with pytest.raises(PlanError):
        make_plan(FitOptions("d", budget_min=smallest - 1), CAMVID_LIKE, CAMVID_TIMINGS, cores=2, spent_min=0.4)
    # a machine twice as slow to train needs a larger budget
    slower = replace(CAMVID_TIMINGS, train_step_s=2 * CAMVID_TIMINGS.train_step_s)
    with pytest.raises(PlanError, match="--budget") as refused_slow:
        make_plan(FitOptions("d", budget_min=smallest), CAMVID_LIKE, slower, cores=2, spent_min=0.4)
    assert int(re.search(r"--budget (\d+)m", str(refused_slow.value)).group(1)) > smallest


@pytest.mark.parametrize("image, model", [((360, 480), (224, 288)), ((256, 256), (256, 256)), ((64, 96), (64, 96)),
                                          ((1024, 2048), (176, 352))])
def test_model_input_keeps_the_aspect_ratio_in_multiples_of_16(image, model):
    assert model_size_for(image) == model


def test_work_folder_refuses_other_options_or_data_unless_restarted(tmp_path):
    opts = FitOptions("data", budget_min=30).recorded()
    work = WorkFolder(tmp_path / "w")
    assert work.open(opts, "sha-a", {"stages": []}, restart=False) is False
    assert WorkFolder(tmp_path / "w").open(opts, "sha-a", {"stages": []}, restart=False) is True  # nothing done yet
    work.finish("model", {"best_epoch": 3})
    again = WorkFolder(tmp_path / "w")
    assert again.open(opts, "sha-a", {"stages": []}, restart=False) is True  # continues
    assert again.done("model") and not again.done("boundaries")
    with pytest.raises(FitStateError, match=r"options.budget_min: 30(.0)? -> 120(.0)?.*--restart"):
        WorkFolder(tmp_path / "w").open(FitOptions("data", budget_min=120).recorded(), "sha-a", {}, restart=False)
    with pytest.raises(FitStateError, match="dataset's files changed"):
        WorkFolder(tmp_path / "w").open(opts, "sha-b", {}, restart=False)
    fresh = WorkFolder(tmp_path / "w")
    assert fresh.open(opts, "sha-b", {"stages": []}, restart=True) is False
    assert not fresh.done("model")
    # threads and the device are not part of the record
    assert "threads" not in opts and "device" not in opts


def test_a_finished_stage_whose_artifact_is_gone_is_reopened_with_the_stages_that_read_it(tmp_path):
    from lmae_sdk.recipe.definition import RECIPE

    work = WorkFolder(tmp_path / "w")
    work.open(FitOptions("data", budget_min=30).recorded(), "sha-a", {"stages": []}, restart=False)
    for d in RECIPE:
        path = work.artifact(d.name)
        if d.name == "export":
            path.mkdir()
        else:
            path.write_text("x")
        (work.path / f"{d.name}.result.json").write_text("{}")
        work.add_time(d.name, 1.5)
        work.finish(d.name, {"kept": True})
    assert work.reopen_missing() == ([], [])  # everything there: nothing runs again

    (work.path / "calibrated.pt").unlink()
    missing, reopened = work.reopen_missing()
    assert missing == [work.path / "calibrated.pt"]
    assert reopened == ["calibrate", "export", "verify", "card"]  # through the export, the card reads it too
    again = WorkFolder(tmp_path / "w").load()  # saved: the record is what a later run reads
    assert [d.name for d in RECIPE if again.done(d.name)] == ["model", "boundaries", "finetune", "fusion"]
    assert again.spent("export") == 0.0 and again.spent("fusion") == 1.5 and again.result("fusion") == {"kept": True}
    assert not (work.path / "export.result.json").exists() and (work.path / "fusion.result.json").exists()


def test_a_result_file_finishes_a_stage_only_beside_its_artifact(tmp_path):
    from lmae_sdk.recipe.runner import publish

    work = WorkFolder(tmp_path / "w")
    work.open(FitOptions("data", budget_min=30).recorded(), "sha-a", {"stages": []}, restart=False)
    (work.path / "export.result.json").write_text('{"onnx": 6}')
    assert not work.finish_from_result_file("export") and not work.done("export")  # no bundle: stale, runs again
    (work.path / "bundle").mkdir()
    assert work.finish_from_result_file("export") and work.result("export") == {"onnx": 6}
    assert not work.finish_from_result_file("export")  # recorded already
    with pytest.raises(FitStateError, match="bundle is missing.*--restart"):  # a message, not a traceback
        publish(tmp_path / "nowhere" / "bundle", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_work_folder_never_empties_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for restart in (False, True):
        with pytest.raises(FitStateError, match="no fit.json"):
            WorkFolder(tmp_path / "mine").open({}, "x", {}, restart=restart)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_boundary_bands_follow_the_class_edges_and_vary_in_width():
    lab = np.zeros((120, 160), np.uint8)
    lab[:, 80:] = 1
    lab[30:50, 20:40] = 2
    lab[100:104, 140:144] = 3  # a small object: lost inside its band
    out = degrade(lab, 0.3, "bands", rng_for_name(0, "x"))
    hole = out == 255
    assert 0.27 < hole.mean() < 0.33
    assert ((out == lab) | hole).all()
    assert hole[:, 79:81].all()  # every pixel on the class edge is unknown
    assert not hole[60:90, 0:10].any()  # far from every edge: kept
    assert (out[100:104, 140:144] == 255).all()
    widths = hole[:, 60:100].sum(axis=1)[55:95]  # the band across the vertical edge, row by row
    assert widths.max() - widths.min() >= 4


def test_card_renders_and_reads_back(tmp_path):
    card = {"created": "2026-12-03T10:00:00+0000",
            "dataset": {"name": "toy", "root": "/d", "layout": "folder", "classes": ["a", "b"], "train": 24,
                        "val": 8, "image_size": [256, 256]},
            "model": {"preset": "tiny", "parameters_m": 0.59, "input": [256, 256], "mask_ratios": [0.25, 0.5],
                      "finishing_rule": "pixel fusion", "unknown_threshold": 0.75},
            "fit": {"budget_min": 30, "machine": "cpu", "cores": 2, "device": "cpu", "total_min": 29.5,
                    "stages": [{"name": "model", "planned_min": 10.0, "minutes": 9.8}]},
            "val": {"images": 8, "protocols": [{"protocol": "random 0.5", "completer": 80.0, "nearest": 60.0,
                                                "geodesic": 70.0},
                                               {"protocol": "bands 0.1", "completer": 69.0, "nearest": 75.0,
                                                "geodesic": 67.0}],
                    "per_class_iou": {"protocol": "random 0.5", "classes": {"a": {"completer": 90.0, "nearest": None}}}},
            "speed": {"seconds_per_image": 0.08, "setting": "2 lanes"}}
    write_card(tmp_path, card)
    back = read_card(tmp_path)
    assert back["dataset"]["name"] == "toy" and back["format"] == "lmae-card"
    line = card_line(back)
    assert "toy, 2 classes" in line and "80.00 at random 0.5" in line and "nearest fill 60.00" in line
    md = (tmp_path / "card.md").read_text()
    assert md == render_markdown(back) and "| random 0.5 | **80.00** | 60.00 | 70.00 |" in md
    assert "| bands 0.1 | 69.00 | **75.00** | 67.00 |" in md  # the best method in bold, not always the completer
    result = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert result.exit_code == 0 and "| model | 10.0 | 9.80 |" in result.output
    as_json = CliRunner().invoke(main, ["info", str(tmp_path), "--json"])
    assert json.loads(as_json.output)["val"]["images"] == 8
    (tmp_path / "card.json").write_text("{broken")
    bad = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert bad.exit_code == 1 and "unreadable model card" in bad.output and "Traceback" not in bad.output


def test_pixel_fusion_is_fitted_on_every_kind_of_hole_the_card_scores():
    from lmae_sdk.recipe.card_eval import CARD_PROTOCOLS
    from lmae_sdk.training.fusion_fit import DEFAULT_FIT_SETTINGS

    assert set(CARD_PROTOCOLS) <= set(DEFAULT_FIT_SETTINGS)
