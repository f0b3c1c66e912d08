"""``lmae fit``: check the data, measure this machine, plan; run the plan's stages in order
(side by side where the plan says so), each in its own process, with progress and an ETA;
copy the finished bundle to ``--out``; then the final gate: a bundle whose completer does not
beat nearest-label fill on its card's headline kind of hole is written, marked on its card,
and the fit fails with what to do.

A stage's process dies with the runner (Linux: the parent-death signal), so a killed fit
leaves no stage running; the next run continues after the last finished stage.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from lmae_sdk.card import HEADLINE_PROTOCOL, read_card, write_card
from lmae_sdk.datasets import load_dataset
from lmae_sdk.recipe.data_check import check_dataset
from lmae_sdk.recipe.plan import DataFacts, FitOptions, Plan, PlanError, Stage, make_plan, stage_threads, train_batch
from lmae_sdk.recipe.probe import ProbeError, ProbeRequest, run_probe
from lmae_sdk.recipe.guards import STAGE_FAILED
from lmae_sdk.recipe.state import FitStateError, WorkFolder, data_fingerprint

PROGRESS_EVERY_S = 60.0


class FitError(RuntimeError):
    """A stage failed; the message names it and its log."""


class FitGateError(RuntimeError):
    """The bundle was written but loses to nearest-label fill; the message says by how much and what to do."""


def dataset_facts(options: FitOptions) -> tuple[DataFacts, str]:
    """The plan's facts and the dataset's fingerprint, after the data check (every pair of both
    splits; a DatasetError lists every problem found, before anything trains)."""
    info = load_dataset(options.data, ("train", "val"), options.layout)
    report = check_dataset(info)
    return report.facts(), data_fingerprint(info.pairs, info.root)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _stage_command(stage: Stage, work: Path, device: str) -> list[str]:
    gpus = 0
    if device == "cuda" and stage.name in ("model", "finetune"):
        import torch

        gpus = torch.cuda.device_count()
    if gpus > 1:  # DistributedDataParallel, one process per GPU (lmae train under torchrun)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "lmae_sdk.recipe.stages", stage.name, str(work)]
    return [sys.executable, "-m", "lmae_sdk.recipe.stages", stage.name, str(work)]


class _Running:
    def __init__(self, stage: Stage, work: WorkFolder, device: str, echo: Callable[[str], None]) -> None:
        self.stage, self.work, self.started, self.counted = stage, work, time.time(), time.time()
        logs = work.path / "logs"
        logs.mkdir(exist_ok=True)
        self.log_path = logs / f"{stage.name}.log"
        command = _stage_command(stage, work.path, device)
        env = {**os.environ, "OMP_NUM_THREADS": str(stage.threads), "PYTHONUNBUFFERED": "1"}
        if "torch.distributed.run" not in command:  # the stage dies with this process (stages.die_with_parent)
            env["LMAE_FIT_RUNNER"] = str(os.getpid())
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.last_line = ""
        self.reader = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self.reader.start()

    def _pump(self, echo: Callable[[str], None]) -> None:
        with open(self.log_path, "a") as log:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                if line.strip():
                    self.last_line = line.strip()
                if line.strip() and not line.startswith(" " * 4):
                    echo(f"[{self.stage.name}] {line.rstrip()}")

    def count_time(self) -> None:
        now = time.time()
        self.work.add_time(self.stage.name, (now - self.counted) / 60)
        self.counted = now


def _remaining(plan: Plan, work: WorkFolder) -> float:
    """Minutes of the plan left: each unfinished phase's longest stage, less what it has run."""
    return sum(max(max(0.0, s.minutes - work.spent(s.name)) for s in phase)
               for phase in plan.phases() if not all(work.done(s.name) for s in phase))


def run_phase(phase: list[Stage], plan: Plan, work: WorkFolder, echo: Callable[[str], None]) -> None:
    for s in phase:  # a stage that wrote its artifact and its result just before a kill is not run again
        work.finish_from_result_file(s.name)
    running = [_Running(s, work, plan.device, echo) for s in phase if not work.done(s.name)]
    last_note = time.time()
    try:
        while running:
            time.sleep(1.0)
            for r in list(running):
                if r.proc.poll() is None:
                    continue
                r.reader.join()
                r.count_time()
                running.remove(r)
                if r.proc.returncode == STAGE_FAILED:
                    raise FitError(f"{r.last_line.removeprefix('stage failed: ')} (stage {r.stage.name}; its log: "
                                   f"{r.log_path})")
                if r.proc.returncode != 0:
                    raise FitError(f"stage {r.stage.name} failed (exit {r.proc.returncode}); its log: {r.log_path}")
                result_path = work.path / f"{r.stage.name}.result.json"
                work.finish(r.stage.name, json.loads(result_path.read_text()))
                echo(f"[{r.stage.name}] done in {work.spent(r.stage.name):.1f} min (planned {r.stage.minutes:.1f})")
            if running and time.time() - last_note >= PROGRESS_EVERY_S:
                last_note = time.time()
                for r in running:
                    r.count_time()
                echo("progress: " + ", ".join(
                    f"{r.stage.name} {work.spent(r.stage.name):.1f} of {r.stage.minutes:.1f} min (ETA "
                    f"{max(0.0, r.stage.minutes - work.spent(r.stage.name)):.1f} min)" for r in running)
                     + f"; the fit: about {_remaining(plan, work):.0f} min left")
    finally:
        for r in running:  # a failure (or Ctrl-C) of one stage stops the others
            r.proc.kill()
            r.proc.wait()
            r.count_time()


def _names(names: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def publish(bundle: Path, out: Path) -> None:
    """Copy the bundle to ``out``: into a temporary sibling first, then renamed into place.
    An existing ``out`` is replaced only when it is a bundle with a model card (an earlier fit's)."""
    if not bundle.is_dir():
        raise FitStateError(f"{bundle}: the work folder's bundle is missing, though its fit.json says it was "
                            f"exported; run lmae fit again with --restart, or with another --work folder")
    if out.exists():
        if not out.is_dir() or read_card(out) is None:
            raise FitStateError(f"--out {out}: exists and is not a bundle written by lmae fit; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    shutil.copytree(bundle, tmp, dirs_exist_ok=True)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def measure_and_plan(options: FitOptions, facts: DataFacts, device: str, started: float,
                     echo: Callable[[str], None]) -> Plan:
    """Measure what the work costs here (:mod:`lmae_sdk.recipe.probe`), then plan the budget
    that is left; a budget too small is a :class:`PlanError` naming the smallest that works."""
    from lmae_sdk.cores import usable_cores
    from lmae_sdk.recipe.plan import model_size_for

    cores = options.threads or usable_cores()
    _, model_threads = stage_threads(cores, device)
    echo(f"measuring this machine: {model_threads}-thread training steps and one image's completion ...")
    request = ProbeRequest(options.data, options.layout, options.preset, model_size_for(facts.image_size),
                           train_batch(facts), model_threads, device)
    try:
        timings = run_probe(request, env={**os.environ, "OMP_NUM_THREADS": str(model_threads)})
    except ProbeError as e:
        raise FitError(str(e)) from None
    spent = (time.time() - started) / 60 + PUBLISH_MIN
    return make_plan(options, facts, timings, cores=cores, device=device, spent_min=spent)


PUBLISH_MIN = 0.1  # copying the bundle to --out, the runner's own start and end


def final_gate(card: dict) -> dict:
    """Whether the completer beats nearest-label fill at the card's headline kind of hole."""
    row = next((r for r in card.get("val", {}).get("protocols", []) if r["protocol"] == HEADLINE_PROTOCOL), None)
    if row is None:
        return {"protocol": HEADLINE_PROTOCOL, "passed": False, "why": "the card has no score at this kind of hole"}
    if not all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in ("completer", "nearest")):
        return {"protocol": HEADLINE_PROTOCOL, "passed": False,
                "why": "no val pixel could be scored at this kind of hole (PA-mIoU is not a number)"}
    margin = row["completer"] - row["nearest"]
    behind = [r["protocol"] for r in card["val"]["protocols"] if r["completer"] <= r["nearest"]]
    return {"protocol": HEADLINE_PROTOCOL, "completer": row["completer"], "nearest": row["nearest"],
            "margin": round(margin, 2), "passed": bool(margin > 0), "behind_nearest_fill": behind}


def fit(options: FitOptions, out: str | os.PathLike, work: str | os.PathLike | None = None, restart: bool = False,
        echo: Callable[[str], None] = print) -> Path:
    """Run (or continue) the fit; returns the bundle's path (``out``).  A bundle that fails the
    final gate is written all the same, then :class:`FitGateError` says so."""
    out = Path(out)
    work_folder = WorkFolder(Path(work) if work else out.with_name(f"{out.name}.work"))
    t0 = time.time()
    facts, fingerprint = dataset_facts(options)
    device = resolve_device(options.device)
    try:  # a new fit measures and plans; one that continues keeps the plan it started with
        resumed = work_folder.open(options.recorded(), fingerprint,
                                   lambda: measure_and_plan(options, facts, device, t0, echo).to_dict(), restart)
    except PlanError as e:
        raise FitStateError(str(e)) from None
    plan = Plan.from_dict(work_folder.plan)
    if resumed:
        missing, reopened = work_folder.reopen_missing()
        if reopened:
            echo(f"{_names([str(m) for m in missing])} {'is' if len(missing) == 1 else 'are'} missing: "
                 f"{_names(reopened)} run again")
        done = [s.name for s in plan.stages if work_folder.done(s.name)]
        echo(f"continuing the fit in {work_folder.path}: finished {', '.join(done) or 'nothing yet'}")
    echo(plan.describe())
    echo(f"work folder: {work_folder.path} (logs in {work_folder.path / 'logs'})")
    for phase in plan.phases():
        if all(work_folder.done(s.name) for s in phase):
            continue
        run_phase(phase, plan, work_folder, echo)
    bundle = work_folder.artifact("export")
    card = read_card(bundle)
    gate = None
    if card is not None:  # the card stage's own minutes, the total, the final gate
        card["fit"]["stages"] = [{**s, "minutes": work_folder.spent(s["name"])} for s in card["fit"]["stages"]]
        card["fit"]["total_min"] = round(plan.span(lambda s: work_folder.spent(s.name)), 2)
        card["fit"]["wall_min_this_run"] = round((time.time() - t0) / 60, 2)
        card["fit"]["stage_verdicts"] = {
            s.name: f"{'kept' if r['adopted'] else 'not used'}: {r['why']}" for s in plan.stages
            if "why" in (r := work_folder.result(s.name))}
        gate = card["gate"] = final_gate(card)
        write_card(bundle, card)
    publish(bundle, out)
    echo(f"bundle: {out} (model card: {out / 'card.md'}); this run took {(time.time() - t0) / 60:.1f} min")
    if gate is not None and gate.get("behind_nearest_fill"):
        echo(f"note: on {', '.join(gate['behind_nearest_fill'])} holes the completer does not beat nearest-label "
             f"fill on val (the card's table); a larger --budget trains it longer")
    if gate is not None and not gate["passed"]:
        lost = (f"{gate['completer']:.2f} against {gate['nearest']:.2f} PA-mIoU ({gate['margin']:+.2f})"
                if "margin" in gate else gate["why"])
        raise FitGateError(f"the completer does not beat nearest-label fill at {gate['protocol']} holes on val: "
                           f"{lost}; the bundle in {out} is marked so on its card. Refit with a larger budget "
                           f"(--budget {2 * options.budget_min:g}m or more, --restart)")
    return out
