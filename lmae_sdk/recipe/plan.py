"""The plan of ``lmae fit``: its options, its stages, and how the time budget is split.

The budget rule (the README's "Fitting a completer" repeats it):

1. The stages after training get what they need, estimated from the dataset:
   export 1.5 min; the bundle check 0.5 min; calibration and the model card per val image
   (at most 100 and 200 images), scaled by the image's pixels; pixel fusion 8% of the
   budget, and at least the time to sample every train image (at most 400) and fit its MLP
   as long again.
2. The rest trains, and at least a quarter of the budget does (a budget too small for the
   stages after training then overruns, and the plan says so).  With two or more CPU cores (or a GPU), 55% of it trains the model and,
   side by side on its own core, the boundary net (it needs only images and labels); the
   other 45% fine-tunes the model on the boundary-aware prior with every core.  One core:
   the model 40%, the boundary net 20%, the fine-tune 40%, one after another.
3. A training stage stops at its share (inside an epoch if need be), keeping the best of
   its checkpoints on val; pixel fusion samples as many train images as half its share
   allows and trains its MLP for the rest (at most 20000 steps).  So a larger budget trains
   every stage longer and changes nothing else, and the checkpoint kept is chosen on val.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

# what one val image costs (seconds of one core at 360x480, measured on a 2-core AMD EPYC): calibration
# (2 thresholds x 2 kinds of hole, each finished by pixel fusion) and the card (6 kinds of hole through
# the bundle, and the two fills)
CALIBRATE_S_PER_IMAGE = 3.8
CARD_S_PER_IMAGE = 3.0
# pixel fusion samples one train image's hole pixels through the fine-tuned model in about this many
# seconds of one core at 360x480 (107 s for CamVid's 367 on two threads of the same machine)
FUSION_SAMPLE_S_PER_IMAGE = 0.6
FUSION_MAX_SAMPLED_IMAGES = 400
# the fusion MLP trains for the rest of its share, up to this many steps (about 15 min of 2 cores)
FUSION_MAX_MLP_STEPS = 20000
REFERENCE_PIXELS = 360 * 480
MODEL_PIXELS = 224 * 288  # the model input's area: the default preset's, at CamVid's aspect ratio


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


@dataclass
class Plan:
    stages: list[Stage]
    model_size: tuple[int, int]
    cores: int
    device: str
    facts: DataFacts
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
                "device": self.device, "facts": asdict(self.facts), "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        facts = dict(d["facts"], image_size=tuple(d["facts"]["image_size"]))
        return cls([Stage(**s) for s in d["stages"]], tuple(d["model_size"]), d["cores"], d["device"],
                   DataFacts(**facts), list(d["notes"]))

    def span(self, minutes: Callable[[Stage], float]) -> float:
        """Wall minutes of the phases one after another, the stages of a phase side by side."""
        return sum(max(minutes(s) for s in phase) for phase in self.phases())

    def describe(self) -> str:
        f = self.facts
        lines = [f"plan: {f.train} train / {f.val} val images, {f.num_classes} classes, images {f.image_size[0]}x"
                 f"{f.image_size[1]} -> model input {self.model_size[0]}x{self.model_size[1]}; {self.cores} CPU "
                 f"core(s), device {self.device}"]
        for phase in self.phases():
            side = " (side by side)" if len(phase) > 1 else ""
            for s in phase:
                lines.append(f"  {s.name:<11} {s.minutes:6.1f} min  {s.threads} thread(s){side}  {s.what}")
        lines.append(f"  {'total':<11} {self.span(lambda s: s.minutes):6.1f} min")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def model_size_for(image_size: tuple[int, int], area: int = MODEL_PIXELS) -> tuple[int, int]:
    """The model input: the images' aspect ratio at about ``area`` pixels (never larger than
    the images), each side a multiple of 16 (at least 32)."""
    h, w = image_size
    scale = min(1.0, math.sqrt(area / (h * w)))
    return tuple(max(32, 16 * round(side * scale / 16)) for side in (h, w))  # type: ignore[return-value]


def make_plan(options: FitOptions, facts: DataFacts, cores: int | None = None, device: str = "cpu") -> Plan:
    """The stages and their minutes for ``options.budget_min`` (the module's rule)."""
    cores = options.threads or cores or available_cores()
    pixels = facts.image_size[0] * facts.image_size[1] / REFERENCE_PIXELS
    per_core = max(1, min(cores, 2))  # the card and calibration run on up to two lanes
    budget = float(options.budget_min)
    calibrate = max(0.5, min(facts.val, 100) * CALIBRATE_S_PER_IMAGE * pixels / 60 / per_core)
    card = max(0.5, min(facts.val, 200) * CARD_S_PER_IMAGE * pixels / 60 / per_core)
    sampled = min(facts.train, FUSION_MAX_SAMPLED_IMAGES)
    sample_every_image = sampled * FUSION_SAMPLE_S_PER_IMAGE * pixels / 60 / per_core
    fusion = max(0.4, 0.08 * budget, 2 * sample_every_image)
    tail = {"fusion": fusion, "calibrate": calibrate, "export": 1.5, "verify": 0.5, "card": card}
    training = budget - sum(tail.values())
    notes = []
    if training < 0.25 * budget:
        notes.append(f"a {budget:g}-min budget leaves {training:.1f} min to train after the {sum(tail.values()):.1f} "
                     f"min the later stages need: training gets a quarter of the budget and the fit overruns it")
        training = 0.25 * budget
    side_by_side = cores >= 2 or device == "cuda"
    model_threads = max(1, cores - 1) if side_by_side else cores
    if side_by_side:
        first = 0.55 * training
        stages = [Stage("model", first, model_threads, "train the model (no boundary net yet)", 0, 0),
                  Stage("boundaries", first, 1, "train the class-boundary net, tune the step cost", 1, 0)]
        tune = training - first
    else:
        stages = [Stage("model", 0.4 * training, cores, "train the model (no boundary net yet)", 0, 0),
                  Stage("boundaries", 0.2 * training, cores, "train the class-boundary net, tune the step cost", 0, 1)]
        tune = 0.4 * training
    n = stages[-1].phase
    stages += [Stage("finetune", tune, cores, "fine-tune the model on the boundary-aware prior", 0, n + 1),
               Stage("fusion", tail["fusion"], cores, "fit pixel fusion on train hole pixels", 0, n + 2),
               Stage("calibrate", tail["calibrate"], cores, "choose the routing threshold on val", 0, n + 3),
               Stage("export", tail["export"], cores, "export the ONNX bundle, parity against torch", 0, n + 4),
               Stage("verify", tail["verify"], cores, "the bundle's labels against the checkpoint's", 0, n + 5),
               Stage("card", tail["card"], cores, "score val per hole kind against two fills: the model card", 0,
                     n + 6)]
    return Plan(stages, model_size_for(facts.image_size), cores, device, facts, notes)
