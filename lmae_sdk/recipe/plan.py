"""The plan of ``lmae fit``: its options, its stages, and how the time budget is split.

The budget is the wall time of the whole command.  The rule (the README's "Fit a completer"
points here):

1. Before planning, the fit measures on this machine and this dataset what its work costs
   (:mod:`lmae_sdk.recipe.probe`: a training step of the model, one image's completion part
   by part, the card's fills).  The stages after training get what that work needs: pixel
   fusion samples every train image (at most 400) and fits its MLP as long again, and gets at
   least 8% of the budget; calibration scores its val images (at most 100, 40 for the kinds
   of hole only the finishing rule is chosen on) at two thresholds; export a fixed
   ``EXPORT_MIN``; the bundle check 8 images three times (the fp32 graphs, the graphs as a CPU
   runs them, the checkpoint); the card every val image (at most 200)
   at each of its kinds.
2. The rest trains, split among the training stages as :data:`lmae_sdk.recipe.definition.RECIPE`
   says: with two or more CPU cores (or a GPU) the model and, side by side on its own core,
   the boundary net (it needs only images and labels), then the fine-tune on the
   boundary-aware prior with every core; one core, the three one after another.
3. A budget whose training time buys fewer than ``MIN_MODEL_STEPS`` model steps or
   ``MIN_FINETUNE_STEPS`` fine-tune steps is refused before anything runs, naming the
   smallest budget that buys them.
4. A training stage stops at its share (inside an epoch if need be), keeping the best of its
   checkpoints on val; pixel fusion samples pixels for at most half its share and trains its
   MLP for the rest (at most 20000 steps).  The fine-tune and pixel fusion also take what the
   stages before them left unspent (or give back what they overran), so the fit ends on its
   budget.  So a larger budget trains every stage longer and changes nothing else.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from lmae_sdk.card import unlabelled_boundaries
from lmae_sdk.cores import usable_cores
from lmae_sdk.recipe.card_eval import CARD_PROTOCOLS
from lmae_sdk.recipe.definition import RECIPE, Shares, definition
from lmae_sdk.recipe.probe import Timings

FUSION_MAX_SAMPLED_IMAGES = 400
MIX_MIN_COMPLETE = 32  # a split with fewer complete labels tunes the step cost on its first labels
MIX_MAX_COMPLETE_SHARE = 0.9  # a split with this share of complete labels or more counts as complete
# the fusion MLP trains for the rest of its share, up to this many steps (about 15 min of 2 cores)
FUSION_MAX_MLP_STEPS = 20000
FUSION_MIN_SHARE = 0.08
# calibration: its thresholds, the val images it scores them on, and the images that score the
# kinds of hole only the finishing rule is chosen on
CALIBRATE_THRESHOLDS = (0.5, 0.75)
CALIBRATE_IMAGES = 100
CALIBRATE_KINDS = 2  # training/calibrate.py's default settings
RULE_IMAGES = 40
CARD_KINDS = len(CARD_PROTOCOLS)
CARD_MAX_IMAGES = 200
VERIFY_IMAGES = 8
EXPORT_MIN = 0.8  # three engines traced, exported and checked against torch (0.6 min in three 30m CamVid fits),
# and the boundary graph quantized to int8 and checked (10 s)
# the probe's fusion has untrained weights and skips no pixel; a fitted one skips where model,
# propagation and nearest fill agree: about half its pixels (0.18 against 0.35 s on CamVid)
FITTED_FUSION_COST = 0.5
VAL_IMAGES_WHILE_TRAINING = 40  # model selection during training; the card scores all of val
VAL_PROTOCOLS = 3  # random, background-first and objects holes
MIN_MODEL_STEPS = 100
MIN_FINETUNE_STEPS = 30
MODEL_PIXELS = 224 * 288  # the model input's area: the default preset's, at CamVid's aspect ratio


class PlanError(ValueError):
    """A budget this fit cannot keep; the message names the smallest that works."""


@dataclass(frozen=True)
class FitOptions:
    """What ``lmae fit`` is asked for.  Every field but ``threads`` and ``device`` is part of
    the work folder's record: changing one refuses the folder unless ``restart``."""

    data: str
    budget_min: float = 120.0
    preset: str = "small"
    layout: str = "auto"
    seed: int = 0
    threads: int = 0  # 0 = every core this process may use
    device: str = "auto"  # auto | cpu | cuda

    def recorded(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("threads", "device")}


@dataclass(frozen=True)
class Stage:
    name: str
    minutes: float
    threads: int
    what: str
    lane: int = 0  # stages with the same ``phase`` run side by side, one per lane
    phase: int = 0


@dataclass
class DataFacts:
    """What the plan needs to know about the dataset."""

    num_classes: int
    train: int
    val: int
    image_size: tuple[int, int]  # the train split's commonest (h, w)
    known_share: dict[str, float] = field(default_factory=dict)  # split -> share of label pixels not unknown
    # split -> share of the class-boundary pixels (degrade.unlabelled_boundary_pixels) that are unknown
    boundaries_unknown: dict[str, float] = field(default_factory=dict)
    # split -> the indices (in the dataset's order) of its complete labels (degrade.complete_boundaries)
    complete_labels: dict[str, list[int]] = field(default_factory=dict)

    def complete_of_mix(self, split: str = "train") -> list[int]:
        """The indices of ``split``'s complete labels when it mixes complete and partial ones
        (at least :data:`MIX_MIN_COMPLETE` complete, fewer than :data:`MIX_MAX_COMPLETE_SHARE`
        of it); else empty.  The boundary net's step cost is tuned on these: a partial label's
        known pixels keep away from the unknown boundaries, so it cannot show which step cost
        places them best (benchmarks/RESULTS.md, section 1)."""
        complete = self.complete_labels.get(split, [])
        images = self.train if split == "train" else self.val
        if len(complete) < MIX_MIN_COMPLETE or len(complete) >= MIX_MAX_COMPLETE_SHARE * images:
            return []
        return list(complete)


@dataclass
class Plan:
    stages: list[Stage]
    model_size: tuple[int, int]
    cores: int
    device: str
    facts: DataFacts
    timings: Timings
    budget_min: float
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def phases(self) -> list[list[Stage]]:
        out: dict[int, list[Stage]] = {}
        for s in self.stages:
            out.setdefault(s.phase, []).append(s)
        return [out[k] for k in sorted(out)]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [asdict(s) for s in self.stages], "model_size": list(self.model_size), "cores": self.cores,
                "device": self.device, "facts": asdict(self.facts), "timings": asdict(self.timings),
                "budget_min": self.budget_min, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        facts = dict(d["facts"], image_size=tuple(d["facts"]["image_size"]))
        return cls([Stage(**s) for s in d["stages"]], tuple(d["model_size"]), d["cores"], d["device"],
                   DataFacts(**facts), Timings(**d["timings"]), float(d["budget_min"]), list(d["notes"]))

    def span(self, minutes: Callable[[Stage], float]) -> float:
        """Wall minutes of the phases one after another, the stages of a phase side by side."""
        return sum(max(minutes(s) for s in phase) for phase in self.phases())

    def describe(self) -> str:
        f = self.facts
        known = "; known pixels " + ", ".join(f"{split} {100 * share:.1f}%" for split, share in f.known_share.items()) \
            if f.known_share else ""
        if unlabelled_boundaries(f.boundaries_unknown):
            known += f"; class boundaries unlabelled: {unlabelled_boundaries(f.boundaries_unknown)}"
        complete = f.complete_of_mix()
        if complete:
            known += f"; complete labels: train {len(complete)} of {f.train}"
        lines = [f"plan: {f.train} train / {f.val} val images, {f.num_classes} classes, images {f.image_size[0]}x"
                 f"{f.image_size[1]} -> model input {self.model_size[0]}x{self.model_size[1]}{known}; {self.cores} CPU "
                 f"core(s), device {self.device}", f"  {self.timings.describe()}"]
        for phase in self.phases():
            side = " (side by side)" if len(phase) > 1 else ""
            for s in phase:
                lines.append(f"  {s.name:<11} {s.minutes:6.1f} min  {s.threads} thread(s){side}  {s.what}")
        lines.append(f"  {'total':<11} {self.span(lambda s: s.minutes):6.1f} min of the {self.budget_min:g}-min "
                     f"budget (the rest: checking the data and measuring this machine)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def model_size_for(image_size: tuple[int, int], area: int = MODEL_PIXELS) -> tuple[int, int]:
    """The model input: the images' aspect ratio at about ``area`` pixels (never larger than
    the images), each side a multiple of 16 (at least 32)."""
    h, w = image_size
    scale = min(1.0, math.sqrt(area / (h * w)))
    return tuple(max(32, 16 * round(side * scale / 16)) for side in (h, w))  # type: ignore[return-value]


def train_batch(facts: DataFacts) -> int:
    """The training stages' batch size."""
    return max(1, min(8, facts.train))


def stage_threads(cores: int, device: str) -> tuple[bool, int]:
    """(whether the model and the boundary net train side by side, the model's threads then)."""
    side_by_side = cores >= 2 or device == "cuda"
    return side_by_side, max(1, cores - 1) if side_by_side else cores


def tail_minutes(facts: DataFacts, t: Timings, lanes: int) -> dict[str, float]:
    """The minutes the stages after training need, from the measured timings (one core each,
    ``lanes`` of them where a stage runs lanes)."""
    fused = t.finish_s * FITTED_FUSION_COST
    sampled = min(facts.train, FUSION_MAX_SAMPLED_IMAGES)
    collect = sampled * t.collect_s
    val = min(facts.val, CALIBRATE_IMAGES)
    rule_val = min(facts.val, RULE_IMAGES)
    calibrate = (val * (t.boundary_s + CALIBRATE_KINDS * t.prepare_s)
                 + len(CALIBRATE_THRESHOLDS) * CALIBRATE_KINDS * val * (t.model_s + fused)
                 + (CARD_KINDS - CALIBRATE_KINDS) * rule_val * (t.prepare_s + t.model_s + fused))
    card_val = min(facts.val, CARD_MAX_IMAGES)
    card = CARD_KINDS * card_val * ((t.prepare_s + t.boundary_s + t.model_s + fused) / lanes + t.fill_s)
    verify = 3 * min(facts.val, VERIFY_IMAGES) * (t.prepare_s + t.boundary_s + t.model_s + fused)
    seconds = {"fusion": 2 * collect, "calibrate": calibrate, "export": 60 * EXPORT_MIN, "verify": verify,
               "card": card}
    return {k: (v + t.startup_s) / 60 for k, v in seconds.items()}


def training_minimum(facts: DataFacts, t: Timings, cores: int, device: str) -> float:
    """The fewest training minutes that buy ``MIN_MODEL_STEPS`` model steps and
    ``MIN_FINETUNE_STEPS`` fine-tune steps (each stage's start and last validation included)."""
    one_minute = Shares(1.0, {}, cores, *stage_threads(cores, device))  # each training stage's share of it
    model_share, tune_share = definition("model").share(one_minute), definition("finetune").share(one_minute)
    overhead = 2 * (t.startup_s + last_validation_s(facts, t, 1)) / 60
    return overhead + max(MIN_MODEL_STEPS * t.train_step_s / 60 / model_share,
                          MIN_FINETUNE_STEPS * t.train_step_s / 60 / tune_share)


def last_validation_s(facts: DataFacts | dict, t: Timings, threads: int) -> float:
    """Seconds one validation of a training stage takes (its val images at three kinds of hole)."""
    val = facts["val"] if isinstance(facts, dict) else facts.val
    return 5 + min(val, VAL_IMAGES_WHILE_TRAINING) * VAL_PROTOCOLS * (t.prepare_s + t.model_s * 2 / max(threads, 1))


def make_plan(options: FitOptions, facts: DataFacts, timings: Timings, cores: int | None = None,
              device: str = "cpu", spent_min: float = 0.0) -> Plan:
    """The stages and their minutes for ``options.budget_min`` (the module's rule), of which
    ``spent_min`` already went (checking the data, measuring).  A budget too small is a
    :class:`PlanError` naming the smallest that works."""
    cores = options.threads or cores or usable_cores()
    tail = tail_minutes(facts, timings, max(1, min(cores, 2)))
    fusion_need = tail["fusion"]
    tail["fusion"] = max(fusion_need, FUSION_MIN_SHARE * options.budget_min)
    training = float(options.budget_min) - spent_min - sum(tail.values())
    least = training_minimum(facts, timings, cores, device)
    if training < least:
        fixed = spent_min + sum(tail.values()) - tail["fusion"] + least
        smallest = math.ceil(max(fixed + fusion_need, fixed / (1 - FUSION_MIN_SHARE)))
        raise PlanError(
            f"a {options.budget_min:g}-min budget is too small for this dataset on this machine: the stages after "
            f"training need {sum(tail.values()):.1f} min and training at least {least:.1f} min ({MIN_MODEL_STEPS} "
            f"model steps at {timings.train_step_s:.2f} s each); the smallest budget that works here is "
            f"--budget {smallest}m ({timings.describe()})")
    side_by_side, model_threads = stage_threads(cores, device)
    shares = Shares(training, tail, cores, side_by_side, model_threads)
    stages: list[Stage] = []
    for d in RECIPE:
        if d.beside and side_by_side:
            partner = next(s for s in stages if s.name == d.beside)
            lane, phase = 1, partner.phase
        else:
            lane, phase = 0, stages[-1].phase + 1 if stages else 0
        stages.append(Stage(d.name, d.share(shares), d.threads(shares), d.what, lane, phase))
    return Plan(stages, model_size_for(facts.image_size), cores, device, facts, timings, float(options.budget_min))
