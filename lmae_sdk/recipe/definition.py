"""The recipe of ``lmae fit``, defined once: each stage's name, artifact, inputs, share of the
budget, threads, place in the order and the function that runs it.  The plan
(:mod:`.plan`), the stages' processes (:mod:`.stages`), the work folder (:mod:`.state`) and
resuming (:mod:`.runner`) all read :data:`RECIPE`; changing the recipe is editing this table.

The shares: the stages after training get what the work measured on this machine needs
(:func:`lmae_sdk.recipe.plan.tail_minutes`); the rest is training time, split among the
training stages as their ``share`` says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Shares:
    """What a stage's share and threads are computed from."""

    training: float  # minutes for the training stages together
    tail: dict[str, float]  # minutes each later stage needs, from the measured timings
    cores: int
    side_by_side: bool  # two or more cores (or a GPU): the boundary net trains beside the model
    model_threads: int  # the model's threads while the boundary net runs beside it


@dataclass(frozen=True)
class StageDefinition:
    name: str
    artifact: str  # what it leaves in the work folder (a file, or a folder for the bundle)
    inputs: tuple[str, ...]  # the stages whose artifacts it reads
    what: str  # the plan's description of it
    share: Callable[[Shares], float]  # its minutes
    threads: Callable[[Shares], int]
    function: str  # the function of lmae_sdk.recipe.stages that runs it in its own process
    beside: str | None = None  # with two or more cores, runs side by side with this stage
    elastic: bool = False  # bounded by time alone: takes what earlier phases left unspent, gives back overruns


def _all_cores(s: Shares) -> int:
    return s.cores


def _tail(name: str) -> Callable[[Shares], float]:
    return lambda s: s.tail[name]


RECIPE: tuple[StageDefinition, ...] = (
    StageDefinition("model", "model.pt", (), "train the model (no boundary net yet)",
                    lambda s: (0.55 if s.side_by_side else 0.4) * s.training,
                    lambda s: s.model_threads if s.side_by_side else s.cores, "_model"),
    StageDefinition("boundaries", "boundaries.pt", (), "train the class-boundary net, tune the step cost",
                    lambda s: (0.55 if s.side_by_side else 0.2) * s.training,
                    lambda s: 1 if s.side_by_side else s.cores, "_boundaries", beside="model"),
    StageDefinition("finetune", "tuned.pt", ("model", "boundaries"),
                    "fine-tune the model on the boundary-aware prior (partial labels: inputs with pseudo-labels)",
                    lambda s: (0.45 if s.side_by_side else 0.4) * s.training, _all_cores, "_finetune",
                    elastic=True),
    StageDefinition("fusion", "fused.pt", ("finetune",), "fit pixel fusion on train hole pixels", _tail("fusion"),
                    _all_cores, "_fusion", elastic=True),
    StageDefinition("calibrate", "calibrated.pt", ("fusion",), "routing threshold and finishing rule, chosen on val",
                    _tail("calibrate"), _all_cores, "_calibrate"),
    StageDefinition("export", "bundle", ("calibrate",),
                    "export the ONNX bundle (its boundary graph in int8 too), parity against torch",
                    _tail("export"), _all_cores, "_export"),
    StageDefinition("verify", "verify.json", ("export", "calibrate"), "the bundle's labels against the checkpoint's",
                    _tail("verify"), _all_cores, "_verify"),
    StageDefinition("card", "bundle/card.json", ("export", "calibrate"),
                    "score val per hole kind against two fills: the model card", _tail("card"), _all_cores, "_card"),
)
TAIL_STAGES = ("fusion", "calibrate", "export", "verify", "card")  # the shares plan.tail_minutes computes


def definition(name: str) -> StageDefinition:
    return next(d for d in RECIPE if d.name == name)
