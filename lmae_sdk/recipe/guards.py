"""What a stage of ``lmae fit`` may hand on: never an artifact it did not make, never one worse
than the artifact it received.

- A training stage that ran no step, or whose loss is not finite, made nothing: the fine-tune
  keeps the model it started from; the model stage (which received nothing) fails with what
  to do.
- The fine-tune is kept only when its val score (the mean PA-mIoU at 50% random holes and
  with whole objects removed, as training selects checkpoints) beats the model's.
- The boundary net is used only when it ran steps and its map improves geodesic fill on the
  images that tuned its step cost.
- Pixel fusion that ran no MLP step, or whose fit loss is not finite, is not stored; whether a
  fitted fusion finishes the bundle is decided on val by calibration (``training/calibrate.py``).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


STAGE_FAILED = 3  # the exit status of a stage that raised StageError; its last output line says why


class StageError(RuntimeError):
    """A stage made nothing usable and has no earlier artifact to keep; the message says what to do."""


@dataclass(frozen=True)
class Verdict:
    adopted: bool
    why: str

    def record(self) -> dict[str, Any]:
        return {"adopted": self.adopted, "why": self.why}


def training_log(best: Path) -> list[dict]:
    """The epochs a training run logged next to its best checkpoint (``<stem>.log.json``)."""
    path = Path(str(best.with_suffix("")) + ".log.json")
    return json.loads(path.read_text()) if path.is_file() else []


def selection_score(metrics: dict[str, Any]) -> float:
    """The score training keeps its best checkpoint by (nan when the checkpoint was never scored)."""
    try:
        return (float(metrics["val_random"]["pa_miou"]) + float(metrics["val_objects"]["pa_miou"])) / 2
    except (KeyError, TypeError, ValueError):
        return float("nan")


def judge_training(history: list[dict], score: float, baseline: float | None = None,
                   baseline_name: str = "") -> Verdict:
    """A training run's verdict from its epochs' log and its best checkpoint's score."""
    steps = sum(int(r.get("steps", 0)) for r in history)
    if steps == 0:
        return Verdict(False, "it ran no training step within its share")
    losses = [r.get("train_loss") for r in history if int(r.get("steps", 0)) > 0]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        return Verdict(False, f"its training loss is not finite ({', '.join(f'{v}' for v in losses[-3:])})")
    if not math.isfinite(score):
        return Verdict(False, "its checkpoint has no val score")
    if baseline is not None and math.isfinite(baseline) and score <= baseline:
        return Verdict(False, f"its val score {score:.2f} does not beat the {baseline_name}'s {baseline:.2f}")
    return Verdict(True, f"{steps} steps, val score {score:.2f}" +
                   (f" (the {baseline_name}'s {baseline:.2f})" if baseline is not None else ""))


def judge_boundaries(fit: dict[str, Any]) -> Verdict:
    steps, before, after = int(fit.get("steps", 0)), fit.get("fill_colour_only"), fit.get("fill_with_boundaries")
    if steps == 0:
        return Verdict(False, "the boundary net ran no training step within its share")
    if not (isinstance(after, float) and isinstance(before, float) and after > before):
        return Verdict(False, f"its map does not improve geodesic fill ({before} -> {after} PA-mIoU)")
    return Verdict(True, f"{steps} steps; geodesic fill {before:.2f} -> {after:.2f} PA-mIoU")


def judge_fusion(info: dict[str, Any]) -> Verdict:
    if int(info.get("steps", 0)) == 0:
        return Verdict(False, "its MLP ran no training step within its share")
    loss = info.get("fit_loss")
    if not (isinstance(loss, float) and math.isfinite(loss)):
        return Verdict(False, f"its fit loss is not finite ({loss})")
    return Verdict(True, f"{info['steps']} MLP steps, fit loss {loss:.4f}")


def keep_previous(previous: Path, target: Path) -> None:
    """``target`` becomes a copy of ``previous`` (written beside it, then renamed into place)."""
    tmp = target.with_name(f".{target.name}.keep")
    shutil.copyfile(previous, tmp)
    tmp.replace(target)
