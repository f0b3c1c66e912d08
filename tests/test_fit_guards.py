"""``lmae fit`` never hands over what a stage did not make: a finishing rule no better than the
argmax is dropped at calibration, a training stage that ran no step (or lost to what it
received) keeps the previous stage's artifact, and a bundle that loses to nearest-label fill
is written with its card but fails the fit's final gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmae_sdk.checkpoint import load_checkpoint, save_checkpoint
from lmae_sdk.fusion import FUSION_FEATURES, PixelFusion

from conftest import tiny_checkpoint

KINDS = (("random", 0.5), ("objects", 0.5), ("bands", 0.3))


def _pass_through(feature: str, sign: float, out_sign: float) -> PixelFusion:
    """A fusion whose score is ``out_sign * relu(sign * feature)``."""
    hidden, i = 4, FUSION_FEATURES.index(feature)
    w1 = np.zeros((len(FUSION_FEATURES), hidden), np.float32)
    w1[i, 0] = sign
    w3 = np.zeros((hidden, 1), np.float32)
    w3[0, 0] = out_sign
    return PixelFusion([(w1, np.zeros(hidden)), (np.eye(hidden, dtype=np.float32), np.zeros(hidden)),
                        (w3, np.zeros(1))], np.zeros(5), {"steps": 0}, features=FUSION_FEATURES)


def _with_fusion(src: Path, fusion: PixelFusion, out: Path, blind: bool = False) -> Path:
    """``src`` with ``fusion``; ``blind``: a model whose logits are all zero (its argmax paints class 0)."""
    ck = load_checkpoint(src)
    ck["fusion"] = fusion.to_dict()
    if blind:
        for k, v in ck["state_dict"].items():
            if k == "prior_gain" or k.startswith(("decoder_pred.", "refine.out.")):
                ck["state_dict"][k] = torch.zeros_like(v)
    save_checkpoint(ck, out)
    return out


def test_calibration_drops_a_fusion_that_is_no_better_than_the_argmax(tmp_path, synth_root):
    """The fusion that reproduces the model's argmax (score = log-probability) ties with it, and a
    tie goes to the argmax: the simpler rule, no fusion in the bundle."""
    from lmae_sdk.training.calibrate import calibrate

    ck = _with_fusion(tiny_checkpoint(tmp_path / "t.pt"), _pass_through("log_prob", -1.0, -1.0), tmp_path / "f.pt")
    r = calibrate(ck, synth_root, thresholds=(0.5, 0.75), rule_settings=KINDS, rule_limit=4, limit=8,
                  log=lambda s: None)
    cal = load_checkpoint(ck)
    decision = cal["metrics"]["calibration"]["finishing_rule"]
    assert decision["chosen"] == "argmax" and r["finishing_rule"]["chosen"] == "argmax"
    assert not cal.get("fusion")
    assert decision["kinds"] == ["random:0.5", "objects:0.5", "bands:0.3"]
    means = decision["mean_pa_miou"]
    assert means["pixel fusion"] == pytest.approx(means["argmax"]) and "dropped" in decision["why"]
    assert decision["dropped_fusion_fit"] == {"steps": 0}
    torch.set_num_threads(1)


def test_calibration_drops_a_fusion_worse_than_the_argmax(tmp_path, synth_root):
    """A fusion that picks each pixel's least likely class (an untrained MLP can be as bad)."""
    from lmae_sdk.training.calibrate import calibrate

    ck = _with_fusion(tiny_checkpoint(tmp_path / "t.pt"), _pass_through("log_prob", -1.0, 1.0), tmp_path / "f.pt")
    calibrate(ck, synth_root, thresholds=(0.5,), rule_settings=KINDS, rule_limit=4, limit=8, log=lambda s: None)
    decision = load_checkpoint(ck)["metrics"]["calibration"]["finishing_rule"]
    assert decision["chosen"] == "argmax"
    assert decision["mean_pa_miou"]["argmax"] > decision["mean_pa_miou"]["pixel fusion"] + 10
    torch.set_num_threads(1)


def test_calibration_keeps_a_fusion_that_beats_the_argmax(tmp_path, synth_root):
    """A blind model's argmax paints one class; a fusion that copies nearest-label fill is far better."""
    from lmae_sdk.training.calibrate import calibrate

    ck = _with_fusion(tiny_checkpoint(tmp_path / "t.pt"), _pass_through("is_nearest", 1.0, 1.0), tmp_path / "f.pt",
                      blind=True)
    calibrate(ck, synth_root, thresholds=(0.5,), rule_settings=KINDS, rule_limit=4, limit=8, log=lambda s: None)
    cal = load_checkpoint(ck)
    decision = cal["metrics"]["calibration"]["finishing_rule"]
    assert decision["chosen"] == "pixel fusion" and cal["fusion"]
    assert decision["mean_pa_miou"]["pixel fusion"] > decision["mean_pa_miou"]["argmax"] + 10
    assert set(decision["pa_miou_by_kind"]["argmax"]) == {"random:0.5", "objects:0.5", "bands:0.3"}
    torch.set_num_threads(1)


# ---------------------------------------------------------------- the stages of lmae fit
def _work_folder(tmp_path: Path, data: Path, minutes: dict[str, float]):
    """A work folder whose plan gives each stage ``minutes`` (others 0), as a fit's runner leaves it."""
    from lmae_sdk.recipe.plan import FitOptions, make_plan
    from lmae_sdk.recipe.probe import Timings
    from lmae_sdk.recipe.runner import dataset_facts
    from lmae_sdk.recipe.state import WorkFolder

    options = FitOptions(str(data), budget_min=30, preset="tiny", threads=1)
    facts, fingerprint = dataset_facts(options)
    timings = Timings(train_step_s=0.1, prepare_s=0.01, boundary_s=0.01, model_s=0.01, finish_s=0.01, fill_s=0.01,
                      features_s=0.01)
    plan = make_plan(options, facts, timings, cores=1).to_dict()
    for s in plan["stages"]:
        s["minutes"] = minutes.get(s["name"], 0.0)
    work = WorkFolder(tmp_path / "work")
    work.open(options.recorded(), fingerprint, plan, restart=False)
    return work, plan


def _trained_model(work, plan, synth_root) -> Path:
    from lmae_sdk.training.train import TrainConfig, train

    best = train(TrainConfig(data=str(synth_root), out=str(work.artifact("model")), preset="tiny",
                             image_size=tuple(plan["model_size"]), mask_ratios=(0.25, 0.5, 0.75), epochs=1,
                             batch_size=4, workers=0, threads=1, progress=False, warmup_epochs=0.5, val_limit=4))
    torch.set_num_threads(1)
    return best


def test_a_fine_tune_that_ran_no_step_keeps_the_model_it_received(tmp_path, synth_root, capsys):
    from lmae_sdk.recipe.stages import run_stage

    work, plan = _work_folder(tmp_path, synth_root, {})  # the fine-tune's share: nothing
    model = _trained_model(work, plan, synth_root)
    work.finish("model", {})
    work.finish("boundaries", {"adopted": False, "why": "a test without a boundary net"})
    result = run_stage("finetune", work.path)
    assert result["adopted"] is False and "no training step" in result["why"] and result["steps"] == 0
    assert work.artifact("finetune").read_bytes() == model.read_bytes()
    assert "the fine-tune is not kept" in capsys.readouterr().out
    torch.set_num_threads(1)


def test_pixel_fusion_that_ran_no_step_is_not_stored(tmp_path, synth_root, capsys):
    """What a fit on a loaded machine shipped: the MLP's share ended at step 0, and the untrained
    MLP became the bundle's finishing rule."""
    from lmae_sdk.recipe.stages import run_stage

    work, plan = _work_folder(tmp_path, synth_root, {})  # the fusion's share: nothing
    model = _trained_model(work, plan, synth_root)
    work.artifact("finetune").write_bytes(model.read_bytes())
    for name in ("model", "boundaries", "finetune"):
        work.finish(name, {})
    result = run_stage("fusion", work.path)
    assert result["steps"] == 0 and result["adopted"] is False and "no training step" in result["why"]
    assert "fusion" not in load_checkpoint(work.artifact("fusion"))
    assert "pixel fusion is not stored" in capsys.readouterr().out
    torch.set_num_threads(1)


def test_guards_judge_training_runs():
    from lmae_sdk.recipe.guards import judge_boundaries, judge_fusion, judge_training

    ran = [{"epoch": 1, "steps": 12, "train_loss": 0.9}]
    assert judge_training(ran, 60.0).adopted
    assert not judge_training([{"epoch": 1, "steps": 0, "train_loss": float("nan")}], 60.0).adopted
    diverged = judge_training(ran + [{"epoch": 2, "steps": 12, "train_loss": float("nan")}], 60.0)
    assert not diverged.adopted and "not finite" in diverged.why
    worse = judge_training(ran, 55.0, baseline=58.0, baseline_name="model")
    assert not worse.adopted and "does not beat the model's 58.00" in worse.why
    assert judge_training(ran, 59.0, baseline=58.0, baseline_name="model").adopted
    assert not judge_boundaries({"steps": 0, "fill_colour_only": 60.0, "fill_with_boundaries": 61.0}).adopted
    assert not judge_boundaries({"steps": 9, "fill_colour_only": 60.0, "fill_with_boundaries": 59.0}).adopted
    assert judge_boundaries({"steps": 9, "fill_colour_only": 60.0, "fill_with_boundaries": 61.0}).adopted
    assert not judge_fusion({"steps": 10, "fit_loss": float("inf")}).adopted
    assert judge_fusion({"steps": 10, "fit_loss": 0.5}).adopted


# ---------------------------------------------------------------- the final gate
def _fake_fit(monkeypatch, tmp_path, synth_root, completer: float, nearest: float):
    """``lmae fit`` with its stages replaced by one that writes a bundle whose card scores
    ``completer`` and ``nearest`` at random 0.5 holes."""
    from lmae_sdk.card import write_card
    from lmae_sdk.recipe import runner
    from lmae_sdk.recipe.plan import make_plan
    from lmae_sdk.recipe.probe import Timings

    timings = Timings(train_step_s=0.1, prepare_s=0.01, boundary_s=0.01, model_s=0.01, finish_s=0.01, fill_s=0.01,
                      features_s=0.01)
    monkeypatch.setattr(runner, "measure_and_plan",
                        lambda options, facts, device, started, echo: make_plan(options, facts, timings, cores=1))

    def run_phase(phase, plan, work, echo):
        for stage in phase:
            if stage.name == "card":
                bundle = work.artifact("export")
                bundle.mkdir(parents=True, exist_ok=True)
                write_card(bundle, {
                    "created": "2026-12-06", "dataset": {"name": "synth", "root": str(synth_root), "layout": "folder",
                                                         "classes": ["a", "b"], "train": 24, "val": 8,
                                                         "image_size": [96, 128]},
                    "model": {"preset": "tiny", "parameters_m": 0.5, "input": [96, 128], "mask_ratios": [0.5],
                              "finishing_rule": "argmax", "unknown_threshold": 0.5},
                    "fit": {"budget_min": 30, "machine": "cpu", "cores": 1, "device": "cpu",
                            "stages": [{"name": "card", "planned_min": 1.0}]},
                    "val": {"images": 8, "protocols": [{"protocol": "random 0.5", "completer": completer,
                                                        "nearest": nearest, "geodesic": 40.0}]}})
            work.finish(stage.name, {})

    monkeypatch.setattr(runner, "run_phase", run_phase)
    return tmp_path / "bundle"


def test_a_bundle_that_loses_to_nearest_fill_is_written_marked_and_fails_the_fit(monkeypatch, tmp_path, synth_root):
    from click.testing import CliRunner

    from lmae_sdk.card import read_card
    from lmae_sdk.cli import main

    out = _fake_fit(monkeypatch, tmp_path, synth_root, completer=12.21, nearest=48.02)
    result = CliRunner().invoke(main, ["fit", "--data", str(synth_root), "--out", str(out), "--budget", "30m"])
    assert result.exit_code == 1, result.output
    assert "does not beat nearest-label fill at random 0.5 holes on val: 12.21 against 48.02 PA-mIoU (-35.81)" \
        in result.output
    assert "--budget 60m or more" in result.output and "Traceback" not in result.output
    card = read_card(out)  # written all the same, and marked
    assert card["gate"] == {"protocol": "random 0.5", "completer": 12.21, "nearest": 48.02, "margin": -35.81,
                            "passed": False, "behind_nearest_fill": ["random 0.5"]}
    assert "does not beat nearest-label fill" in (out / "card.md").read_text()


def test_a_bundle_that_beats_nearest_fill_passes_the_gate(monkeypatch, tmp_path, synth_root):
    from click.testing import CliRunner

    from lmae_sdk.card import card_warning, read_card
    from lmae_sdk.cli import main

    out = _fake_fit(monkeypatch, tmp_path, synth_root, completer=60.0, nearest=48.02)
    result = CliRunner().invoke(main, ["fit", "--data", str(synth_root), "--out", str(out), "--budget", "30m"])
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card["gate"]["passed"] is True and card_warning(card) is None


def test_fit_refuses_an_out_folder_inside_its_data(tmp_path, synth_root):
    from click.testing import CliRunner

    from lmae_sdk.cli import main

    result = CliRunner().invoke(main, ["fit", "--data", str(synth_root), "--out", str(synth_root / "bundle")])
    assert result.exit_code == 2 and "inside the --data folder" in result.output
    assert not (synth_root / "bundle").exists() and not (synth_root / "bundle.work").exists()


def test_complete_warns_when_its_bundle_failed_the_gate(onnx_bundle, tmp_path, synth_root):
    import shutil

    from click.testing import CliRunner

    from lmae_sdk.card import write_card
    from lmae_sdk.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, bundle)
    card = {"created": "2026-12-06", "dataset": {"name": "synth", "root": "/d", "layout": "folder",
                                                 "classes": list("abcde"), "train": 24, "val": 8,
                                                 "image_size": [96, 128]},
            "model": {"preset": "tiny", "parameters_m": 0.5, "input": [64, 96], "mask_ratios": [0.5],
                      "finishing_rule": "argmax", "unknown_threshold": 0.5},
            "val": {"images": 8, "protocols": [{"protocol": "random 0.5", "completer": 20.0, "nearest": 48.0,
                                                "geodesic": 40.0}]}}
    args = ["complete", "--model", str(bundle), "--images", str(synth_root / "val" / "images"),
            "--labels", str(synth_root / "val" / "labels")]
    for gate, warned in (({"protocol": "random 0.5", "completer": 20.0, "nearest": 48.0, "margin": -28.0,
                           "passed": False}, True), (None, False)):
        write_card(bundle, {**card, **({"gate": gate} if gate else {})})
        out = tmp_path / f"out_{warned}"
        result = CliRunner().invoke(main, args + ["--out", str(out)])
        assert result.exit_code == 0, result.output
        assert ("does not beat nearest-label fill at random 0.5 holes on its val split (20.00 against 48.00"
                in result.output) == warned


def test_a_card_without_a_score_fails_the_gate_saying_why():
    from lmae_sdk.recipe.runner import final_gate

    card = {"val": {"protocols": [{"protocol": "random 0.5", "completer": float("nan"), "nearest": float("nan")}]}}
    gate = final_gate(card)
    assert gate["passed"] is False and "no val pixel could be scored" in gate["why"]
