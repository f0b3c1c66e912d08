"""``lmae fit`` end to end on a small generated dataset (grey images, 4 classes, 256x256):
a budget below what this machine needs is refused up front with the smallest that works;
with that budget (at least 4 min), killed (SIGKILL) while its model trains and run again,
the fit continues inside the stage and finishes; the bundle carries a model card that
``lmae info`` prints and ``lmae complete`` names, and the fit's exit status is its final gate
(the completer against nearest-label fill), whichever way a loaded machine makes it go."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmae_sdk.degrade import degrade, rng_for_name
from lmae_sdk.labels import read_label, write_label
from lmae_sdk.synthetic import make_synthetic_dataset

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _lmae(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmae_sdk.cli", *args]


def _output(proc: subprocess.CompletedProcess) -> str:
    """A finished command's exit status and output, for a failed assertion's message."""
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and proc.name != str(os.getpid()):
            out.append(f"{proc.name}: {cmdline}")
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    data = make_synthetic_dataset(root / "data", n_train=24, n_val=8, size=(256, 256), classes=4, grey=True)
    work, out = root / "work", root / "bundle"
    small = subprocess.run(_lmae("fit", "--data", str(data), "--out", str(out), "--work", str(work), "--budget", "1m",
                                 "--preset", "tiny"), capture_output=True, text=True, timeout=300)
    assert small.returncode == 1 and "Traceback" not in small.stderr, small.stderr
    smallest = re.search(r"the smallest budget that works here is --budget (\d+)m", small.stderr)
    assert smallest, small.stderr
    assert not work.exists() and not out.exists()  # refused before anything ran
    budget = f"{max(4, int(smallest.group(1)))}m"
    for _ in range(3):  # a busy machine may measure itself slower the next time: then its own figure, plus 1
        cmd = _lmae("fit", "--data", str(data), "--out", str(out), "--work", str(work), "--budget", budget,
                    "--preset", "tiny")
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        # kill once the model stage has saved an epoch and has not finished (on a loaded machine its
        # budget may end with the first epoch: what the stage does after that is inside the stage too)
        while time.time() < deadline and first.poll() is None:
            if (work / "model.last.pt").is_file() and not (work / "model.result.json").is_file():
                first.kill()
                break
            time.sleep(0.05)
        first.wait()
        first_output = first.stdout.read()
        too_small = re.search(r"the smallest budget that works here is --budget (\d+)m", first_output)
        if first.returncode != 1 or not too_small:
            break
        budget = f"{int(too_small.group(1)) + 1}m"
    assert first.returncode == -9, first_output  # killed, not finished
    time.sleep(2)
    left = _processes_mentioning(str(work))
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return {"root": root, "data": data, "work": work, "out": out, "left": left, "second": second, "cmd": cmd,
            "budget": budget}


def test_a_killed_fit_leaves_no_stage_running_and_continues(fitted):
    assert fitted["left"] == []
    second = fitted["second"]
    passed = json.loads((fitted["out"] / "card.json").read_text())["gate"]["passed"]
    assert second.returncode == (0 if passed else 1), second.stdout + second.stderr
    if not passed:
        assert "does not beat nearest-label fill at random 0.5 holes" in second.stderr
    assert "Traceback" not in second.stderr
    assert "continuing the fit" in second.stdout
    model_log = (fitted["work"] / "logs" / "model.log").read_text()
    assert "resumed from" in model_log  # inside the stage, from its last checkpoint
    record = json.loads((fitted["work"] / "fit.json").read_text())
    assert all(entry["done"] for entry in record["stages"].values())
    assert set(record["stages"]) == {s["name"] for s in record["plan"]["stages"]}


def test_the_bundle_has_its_model_card(fitted):
    card = json.loads((fitted["out"] / "card.json").read_text())
    assert card["dataset"]["classes"] == ["background", "disc", "box", "bar"]
    assert (card["dataset"]["train"], card["dataset"]["val"]) == (24, 8)
    rows = {r["protocol"]: r for r in card["val"]["protocols"]}
    assert set(rows) == {"random 0.3", "random 0.5", "random 0.7", "blocks 0.5", "objects 0.5", "bands 0.3",
                         "bands 0.1"}
    gate = card["gate"]  # the fit's exit status says whether the completer beats nearest-label fill
    assert gate["passed"] == (rows["random 0.5"]["completer"] > rows["random 0.5"]["nearest"])
    assert (fitted["second"].returncode == 0) == gate["passed"]
    assert card["model"]["finishing_rule_why"]
    assert set(card["val"]["per_class_iou"]["classes"]) == set(card["dataset"]["classes"])
    assert card["speed"]["seconds_per_image"] > 0
    assert [s["name"] for s in card["fit"]["stages"]][:2] == ["model", "boundaries"]
    assert all(s["minutes"] > 0 for s in card["fit"]["stages"])
    info = subprocess.run(_lmae("info", str(fitted["out"])), capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "| random 0.5 |" in info.stdout and "| bands 0.3 |" in info.stdout


def test_the_bundle_completes_with_its_card_line(fitted):
    data, root = fitted["data"], fitted["root"]
    partial = root / "partial"
    partial.mkdir()
    for lab in sorted((data / "val" / "labels").glob("*.png"))[:3]:
        label, _ = read_label(lab)
        write_label(partial / lab.name, degrade(label, 0.5, "random", rng_for_name(0, lab.stem)))
    done = subprocess.run(_lmae("complete", "--model", str(fitted["out"]), "--images", str(data / "val" / "images"),
                                "--labels", str(partial), "--out", str(root / "completed")),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "model card: data, 4 classes; val PA-mIoU" in done.stderr
    for lab in sorted(partial.glob("*.png")):
        before, _ = read_label(lab)
        after, _ = read_label(root / "completed" / lab.name)
        known = before != 255
        assert (after[known] == before[known]).all() and (after != 255).all()


def test_a_stage_whose_artifact_is_gone_runs_again_with_the_stages_that_read_it(fitted, tmp_path):
    """A finished fit's work folder whose bundle was deleted: the rerun exports, verifies and
    scores again (the stages that read the export), trains nothing, and says so."""
    assert (fitted["work"] / "bundle").is_dir(), _output(fitted["second"])  # the finished fit this test starts from
    work = tmp_path / "work"
    shutil.copytree(fitted["work"], work)
    shutil.rmtree(work / "bundle")
    cmd = [str(work) if c == str(fitted["work"]) else str(tmp_path / "out") if c == str(fitted["out"]) else c
           for c in fitted["cmd"]]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in again.stderr, again.stderr
    card = tmp_path / "out" / "card.json"
    assert card.is_file(), _output(again)
    passed = json.loads(card.read_text())["gate"]["passed"]
    assert again.returncode == (0 if passed else 1), again.stdout + again.stderr
    assert f"{work / 'bundle'} is missing: export, verify and card run again" in again.stdout, again.stdout
    assert "[export] done" in again.stdout and "[card] done" in again.stdout, again.stdout
    assert "[model]" not in again.stdout and "[fusion]" not in again.stdout, again.stdout
    record = json.loads((work / "fit.json").read_text())
    assert all(entry["done"] for entry in record["stages"].values())


def test_a_changed_option_is_refused_unless_restarted(fitted):
    budget = int(fitted["budget"][:-1])
    cmd = [c if c != fitted["budget"] else f"{budget + 1}m" for c in fitted["cmd"]]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert f"options.budget_min: {budget:.1f} -> {budget + 1:.1f}" in refused.stderr and "--restart" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert np.isfinite(json.loads((fitted["out"] / "card.json").read_text())["val"]["images"])


def test_the_fits_bundle_runs_its_boundary_graph_in_int8_on_cpus(fitted):
    """The fit exports the boundary graph in int8 too (ONNX Runtime runs it on CPUs) when it
    stays within its tolerance; the fp32 graphs still match the checkpoint."""
    manifest = json.loads((fitted["out"] / "manifest.json").read_text())
    if not manifest.get("boundary"):
        pytest.skip("this fit kept no boundary net, so there is no boundary graph to quantize")
    export = json.loads((fitted["work"] / "export.result.json").read_text())
    int8 = manifest["boundary_graph"].get("int8")
    assert (int8 is not None) == (export["boundary_int8_mean_abs_diff"] is not None)
    if int8 is not None:
        assert int8["parity"]["passed"] and (fitted["out"] / int8["file"]).is_file()
    verify = json.loads((fitted["work"] / "verify.json").read_text())
    assert verify["label_agreement"] >= 0.999 and 0 < verify["label_agreement_as_run"] <= 1
