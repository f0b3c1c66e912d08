"""A train split that mixes complete and partial labels: the data check finds the complete
ones, and the boundary net's step cost is tuned on those only."""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from lmae_sdk.degrade import complete_boundaries, degrade, unlabelled_boundary_pixels
from lmae_sdk.labels import UNKNOWN, read_label, write_label
from lmae_sdk.recipe import plan as plan_module
from lmae_sdk.recipe.plan import DataFacts, FitOptions, Plan, make_plan

from conftest import camvid_timings

TIMINGS = camvid_timings()


def _scene() -> np.ndarray:
    lab = np.zeros((120, 160), np.uint8)
    lab[:, 80:] = 1
    lab[30:90, 20:60] = 2
    lab[70:110, 100:150] = 3
    return lab


def test_a_label_is_complete_when_its_class_boundaries_are_known():
    lab = _scene()
    void_strips = lab.copy()  # CamVid-like: a thin strip of void between some classes
    void_strips[:, 79:81] = UNKNOWN
    assert complete_boundaries(unlabelled_boundary_pixels(lab))
    assert complete_boundaries(unlabelled_boundary_pixels(void_strips))
    rng = np.random.default_rng(0)
    for strategy, ratio in (("bands", 0.3), ("random", 0.5)):
        assert not complete_boundaries(unlabelled_boundary_pixels(degrade(lab, ratio, strategy, rng, patch=16)))
    assert not complete_boundaries(unlabelled_boundary_pixels(np.zeros((50, 50), np.uint8)))  # no boundary to know


def _mixed_copy(synth_root, tmp_path, complete: list[int]):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    for i, path in enumerate(sorted((data / "train" / "labels").glob("*.png"))):
        if i not in complete:
            lab, palette = read_label(path)
            write_label(path, degrade(lab, 0.3, "bands", np.random.default_rng(i)), palette)
    return data


def test_the_data_check_lists_the_complete_labels_and_the_plan_names_a_mix(synth_root, tmp_path, monkeypatch):
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.recipe.data_check import inspect_dataset

    complete = [0, 3, 4, 9, 15, 20]
    report = inspect_dataset(load_dataset(_mixed_copy(synth_root, tmp_path, complete)))
    assert report.complete_labels["train"] == complete
    assert len(report.complete_labels["val"]) == report.val  # the val labels were left complete
    facts = report.facts()
    assert facts.complete_of_mix() == []  # fewer than MIX_MIN_COMPLETE: every label is used as before
    monkeypatch.setattr(plan_module, "MIX_MIN_COMPLETE", 4)
    assert facts.complete_of_mix() == complete
    whole = replace(facts, complete_labels={"train": list(range(facts.train))})
    assert whole.complete_of_mix() == []  # all complete: not a mix
    plan = make_plan(FitOptions("d", budget_min=30), facts, TIMINGS, cores=2)
    assert f"complete labels: train {len(complete)} of {facts.train}" in plan.describe()
    assert Plan.from_dict(plan.to_dict()).facts.complete_of_mix() == complete  # the work folder keeps them


def test_the_step_cost_is_tuned_on_the_given_images(tmp_path, synth_root, monkeypatch):
    from conftest import tiny_checkpoint
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.training import boundary_fit
    from lmae_sdk.training.data import load_pairs

    tuned_on = []
    real = boundary_fit.fill_score

    def recording(pairs, *args, **kwargs):
        tuned_on.append([lab for _, lab in pairs])
        return real(pairs, *args, **kwargs)

    monkeypatch.setattr(boundary_fit, "fill_score", recording)
    base = tiny_checkpoint(tmp_path / "base.pt")
    fit = boundary_fit.fit_boundaries(base, synth_root, tmp_path / "b.pt", max_steps=1, width=4, tune_images=3,
                                      tune_on=[5, 7, 9, 11], weight_grid=((300.0, 0.0),), log=lambda s: None)
    want = [lab for _, lab in load_pairs([load_dataset(synth_root).pairs["train"][i] for i in (5, 7, 9)], 5)]
    assert fit["tune_images"] == 3 and fit["tune_on_given"]
    assert tuned_on and all(len(labels) == 3 for labels in tuned_on)
    for labels in tuned_on:
        for got, expected in zip(labels, want):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mixed", [True, False])
def test_the_boundary_stage_of_a_mix_tunes_on_its_complete_labels(tmp_path, monkeypatch, mixed):
    from types import SimpleNamespace

    from lmae_sdk.recipe import stages
    from lmae_sdk.recipe.state import WorkFolder
    from lmae_sdk.training import boundary_fit

    complete = list(range(0, 367, 5)) if mixed else []
    facts = DataFacts(num_classes=11, train=367, val=101, image_size=(360, 480), known_share={"train": 0.7},
                      complete_labels={"train": complete})
    plan = make_plan(FitOptions("d", budget_min=30), facts, TIMINGS, cores=2)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "boundaries.stub.pt").write_bytes(b"")  # the stage makes none when one is there
    calls = []

    def fake_fit(*args, **kwargs):
        calls.append(kwargs)
        return {"steps": 1, "train_seconds": 1.0, "fill_colour_only": 60.0, "fill_with_boundaries": 62.0}

    monkeypatch.setattr(boundary_fit, "fit_boundaries", fake_fit)
    monkeypatch.setattr(stages, "judge_boundaries", lambda fit: stages.Verdict(True, "fine"))
    ctx = SimpleNamespace(work=WorkFolder(tmp_path / "work"), plan=plan.to_dict(), facts=plan.to_dict()["facts"],
                          started=0.0, timings=plan.timings, stage=plan.stage("boundaries"),
                          options=FitOptions(data="d", budget_min=30))
    result = stages._boundaries(ctx)
    (kwargs,) = calls
    assert result["tuned_on_complete_labels"] is mixed
    if mixed:
        assert kwargs["tune_on"] == complete and kwargs["tune_images"] == min(stages.TUNE_IMAGES, len(complete))
    else:
        assert kwargs["tune_on"] is None and kwargs["tune_images"] == stages.TUNE_IMAGES
