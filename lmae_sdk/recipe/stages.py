"""The stages of ``lmae fit``, each run in its own process by the runner:
``python -m lmae_sdk.recipe.stages STAGE WORK``.

A stage reads the fit's options and plan from the work folder's record, does its work with
the expert commands' functions (``lmae train``, ``fit-boundaries``, ``fit-fusion``,
``calibrate``, ``lmae-export``), writes its artifact into the work folder and its result
as ``<stage>.result.json``.  Its time share comes from the plan; the training stages
checkpoint as they go and continue from there when run again, and the others start over
with their whole share.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lmae_sdk.labels import atomic_write_bytes
from lmae_sdk.recipe.definition import RECIPE, definition
from lmae_sdk.recipe.guards import (STAGE_FAILED, StageError, Verdict, judge_boundaries, judge_fusion, judge_training,
                                    keep_previous, selection_score, training_log)
from lmae_sdk.recipe.plan import (CALIBRATE_IMAGES, CALIBRATE_THRESHOLDS, FUSION_MAX_MLP_STEPS, RULE_IMAGES,
                                  VAL_IMAGES_WHILE_TRAINING, FitOptions, Plan, last_validation_s, train_batch)
from lmae_sdk.recipe.state import WorkFolder

FIT_MASK_RATIOS = (0.25, 0.5, 0.75)
FINETUNE_LR = 5e-4  # half the first training's peak: the fine-tune starts from a trained model
TUNE_IMAGES = 80  # images that choose the boundary net's step cost
PARTIAL_BELOW = 0.999  # a train split with a smaller known share is partial: the fine-tune reads pseudo-labels
# pseudo-labels: the model stage's completion, its pixels at least this sure (about 93% of a CamVid split's unknown
# pixels with 50% random holes, against 40% at 0.9: the fine-tune's inputs are then mostly known, as a complete
# label's are; benchmarks/RESULTS.md, section 1)
PSEUDO_MIN_CONFIDENCE = 0.5
PSEUDO_RECORD = "pseudo_labels.json"
# a train split whose class boundaries are mostly unknown (degrade.UNLABELLED_BOUNDARIES: coarse polygons) also
# learns from its gaps (training/gaps.py): the boundary net with this weight, the model with the next.  Other
# data does not: on complete CamVid labels (void gaps) and 50% random holes they cost or gave nothing
# (benchmarks/RESULTS.md, section 1)
GAP_BOUNDARY_WEIGHT = 1.0
GAP_MODEL_WEIGHT = 0.5


class StageContext:
    """What every stage reads: the options, the plan's entry for the stage, its share in minutes
    (an elastic stage's adjusted by what the phases before it left unspent), the work folder."""

    def __init__(self, work: Path, stage: str) -> None:
        self.started = time.time()
        self.work = WorkFolder(work).load()
        self.options = FitOptions(**self.work.record["options"])
        self.plan = self.work.plan
        plan = Plan.from_dict(self.plan)
        self.stage = plan.stage(stage)
        self.timings = plan.timings
        self.facts = self.plan["facts"]
        self.device = self.plan["device"]
        self.minutes = self.stage.minutes
        if definition(stage).elastic:  # takes what earlier phases left unspent, gives back overruns
            unspent = sum(max(s.minutes for s in phase) - max(self.work.spent(s.name) for s in phase)
                          for phase in plan.phases() if phase[0].phase < self.stage.phase)
            self.minutes = max(0.0, self.stage.minutes + unspent)
            _log(f"share {self.minutes:.1f} min: planned {self.stage.minutes:.1f}, "
                 f"{'+' if unspent >= 0 else '-'}{abs(unspent):.1f} the stages before it left unspent"
                 f"{'' if unspent >= 0 else ' (overran)'}")

    def amp(self) -> str:
        if self.device == "cuda":
            return "bf16"
        from lmae_sdk.training.amp import native_bf16

        return "bf16" if native_bf16() else "none"


def _learns_from_gaps(ctx: StageContext) -> bool:
    from lmae_sdk.degrade import UNLABELLED_BOUNDARIES

    return ctx.facts.get("boundaries_unknown", {}).get("train", 0.0) >= UNLABELLED_BOUNDARIES


def _train_config(ctx: StageContext, out: Path, **extra: Any):
    """Training that stops when the stage's share ends (counting what earlier runs of the
    stage spent), less the time of the last validation."""
    from lmae_sdk.training.train import TrainConfig

    train = int(ctx.facts["train"])
    batch = train_batch(Plan.from_dict(ctx.plan).facts)
    steps_per_epoch = max(1, train // batch)
    val = min(int(ctx.facts["val"]), VAL_IMAGES_WHILE_TRAINING)
    last_val_s = last_validation_s(ctx.facts, ctx.timings, ctx.stage.threads)
    stop_at = ctx.started + 60 * (ctx.minutes - ctx.work.spent(ctx.stage.name)) - last_val_s
    return TrainConfig(data=ctx.options.data, out=str(out), mask_ratios=FIT_MASK_RATIOS, preset=ctx.options.preset,
                       image_size=tuple(ctx.plan["model_size"]), epochs=100_000, batch_size=batch,
                       threads=ctx.stage.threads, workers=0, seed=ctx.options.seed, layout=ctx.options.layout,
                       val_limit=val, val_every=max(1, round(90 / steps_per_epoch)),  # ~every 90 steps, and at the end
                       stop_at=stop_at, resume=True, progress=False, device=ctx.device, amp=ctx.amp(),
                       gap_weight=GAP_MODEL_WEIGHT if _learns_from_gaps(ctx) else 0.0, **extra)


def _model(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.train import train

    result, verdict = _train_result(train(_train_config(ctx, ctx.work.artifact("model"))))
    if not verdict.adopted:  # nothing before it to keep
        raise StageError(f"the model stage made no usable model: {verdict.why} ({ctx.stage.minutes:.1f} min); "
                         f"give the fit a larger --budget")
    return result


def _finetune(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.checkpoint import load_checkpoint
    from lmae_sdk.training.train import train

    model, edges, tuned = ctx.work.artifact("model"), ctx.work.artifact("boundaries"), ctx.work.artifact("finetune")
    use_edges = ctx.work.result("boundaries").get("adopted", True)
    baseline = selection_score(load_checkpoint(model).get("metrics", {}))
    context = _pseudo_labels(ctx, model) if ctx.facts.get("known_share", {}).get("train", 1.0) < PARTIAL_BELOW \
        else None
    result, verdict = _train_result(train(_train_config(ctx, tuned, lr=FINETUNE_LR, init_from=str(model),
                                                        boundaries_from=str(edges) if use_edges else None,
                                                        context_labels=context)),
                                    baseline, "model")
    if context:
        result["pseudo_labels"] = json.loads((Path(context) / PSEUDO_RECORD).read_text())
    if not verdict.adopted:
        keep_previous(model, tuned)
        _log(f"the fine-tune is not kept: {verdict.why}; the bundle carries the model stage's model")
    return result


def _pseudo_labels(ctx: StageContext, model: Path) -> str:
    """The train split of a partial dataset completed by the model stage's model, its
    pixels below :data:`PSEUDO_MIN_CONFIDENCE` left unknown: the fine-tune's inputs take
    these where the labels are unknown (training/data.py, ``context``).  Written once into
    the work folder (a resumed fine-tune reads them again)."""
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.labels import write_label
    from lmae_sdk.runtime import LMAECompleter

    folder = ctx.work.file("pseudo_labels")
    if (folder / PSEUDO_RECORD).is_file():
        return str(folder)
    folder.mkdir(exist_ok=True)
    pairs = load_dataset(ctx.options.data, ("train",), ctx.options.layout).pairs["train"]
    completer = LMAECompleter.load(model, backend="torch", device=ctx.device)
    t0, filled, holes = time.time(), 0, 0
    for result in completer.complete_batch([(i, lab, Path(lab).stem) for i, lab in pairs], batch_size=8,
                                           min_confidence=PSEUDO_MIN_CONFIDENCE, confidence=False):
        write_label(folder / f"{result.name}.png", result.label)
        filled, holes = filled + result.filled, holes + result.filled + result.unreliable
    record = {"images": len(pairs), "min_confidence": PSEUDO_MIN_CONFIDENCE, "seconds": round(time.time() - t0, 1),
              "filled_share_of_unknown": filled / max(holes, 1)}
    atomic_write_bytes(folder / PSEUDO_RECORD, json.dumps(record).encode())  # marks the folder complete
    _log(f"pseudo-labels for the fine-tune's inputs: {len(pairs)} train images, "
         f"{100 * record['filled_share_of_unknown']:.1f}% of their unknown pixels at confidence >= "
         f"{PSEUDO_MIN_CONFIDENCE:g}, {record['seconds']:.0f} s")
    return str(folder)


def _train_result(best: Path, baseline: float | None = None, baseline_name: str = "") -> tuple[dict[str, Any],
                                                                                                 Verdict]:
    from lmae_sdk.checkpoint import load_checkpoint

    m = load_checkpoint(best).get("metrics", {})
    history = training_log(best)
    verdict = judge_training(history, selection_score(m), baseline, baseline_name)
    return {"best_epoch": m.get("epoch"), "epochs": len(history), "steps": sum(r.get("steps", 0) for r in history),
            "val_pa_miou_random": m.get("val_random", {}).get("pa_miou"),
            "val_pa_miou_objects": m.get("val_objects", {}).get("pa_miou"),
            "val_images": VAL_IMAGES_WHILE_TRAINING, **verdict.record()}, verdict


def _boundaries(ctx: StageContext) -> dict[str, Any]:
    import torch

    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.model import LMAE, make_config
    from lmae_sdk.training.boundary_fit import DEFAULT_WEIGHT_GRID, fit_boundaries

    stub = ctx.work.file("boundaries.stub.pt")  # carries the configuration the net is fitted for
    if not stub.is_file():
        info = load_dataset(ctx.options.data, ("train",), ctx.options.layout)
        torch.manual_seed(ctx.options.seed)
        model = LMAE(make_config(ctx.options.preset, info.num_classes, img_size=tuple(ctx.plan["model_size"])))
        save_checkpoint(make_checkpoint(model, class_names=info.class_names, palette=info.palette,
                                        mask_ratios=list(FIT_MASK_RATIOS), label_resize="soft",
                                        unknown_threshold=0.5, background_index=info.background_index), stub)
    complete = Plan.from_dict(ctx.plan).facts.complete_of_mix()  # a mix tunes on its complete labels
    tune = min(TUNE_IMAGES, len(complete) or int(ctx.facts["train"]))
    # the step-cost grid after training: 14 geodesic fills and one flip-averaged map per tuning image
    tune_min = tune * (ctx.timings.boundary_s + len(DEFAULT_WEIGHT_GRID) * ctx.timings.prepare_s) / 60
    minutes = max(0.25, 0.98 * ctx.stage.minutes - tune_min - (time.time() - ctx.started) / 60)
    fit = fit_boundaries(stub, ctx.options.data, ctx.work.artifact("boundaries"), minutes=minutes,
                         tune_images=tune, seed=ctx.options.seed, threads=ctx.stage.threads, flip_average=True,
                         resume_path=ctx.work.file("boundaries.state.pt"),
                         gap_weight=GAP_BOUNDARY_WEIGHT if _learns_from_gaps(ctx) else 0.0, tune_on=complete or None,
                         log=_log)
    verdict = judge_boundaries(fit)
    if not verdict.adopted:
        _log(f"the boundary net is not used: {verdict.why}; the fine-tune goes on without it")
    return {**{k: fit[k] for k in ("steps", "train_seconds", "fill_colour_only", "fill_with_boundaries")},
            "tuned_on_complete_labels": bool(complete), **verdict.record()}


def _fusion(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.fusion_fit import fit_fusion

    # at most half the share samples pixels (the time as measured before the plan, and a deadline
    # besides); the MLP trains for the rest of it
    images = int(min(ctx.facts["train"], max(16, 0.5 * ctx.minutes * 60 / ctx.timings.collect_s)))
    tuned, fused = ctx.work.artifact("finetune"), ctx.work.artifact("fusion")
    pseudo = ctx.work.file("pseudo_labels")  # a partial train split's, written for the fine-tune
    context = str(pseudo) if (pseudo / PSEUDO_RECORD).is_file() else None
    info = fit_fusion(tuned, ctx.options.data, fused, images=images, steps=FUSION_MAX_MLP_STEPS,
                      minutes=max(0.95 * ctx.minutes, 1e-3), collect_minutes=max(0.5 * ctx.minutes, 1e-3),
                      seed=ctx.options.seed, threads=ctx.stage.threads, log=_log, context_labels=context,
                      context_every_image=not _learns_from_gaps(ctx))
    verdict = judge_fusion(info)
    if not verdict.adopted:
        keep_previous(tuned, fused)
        _log(f"pixel fusion is not stored: {verdict.why}; the bundle finishes with the argmax")
    return {"images": info["images"], "pixels": info["pixels"], "steps": info["steps"], "fit_loss": info["fit_loss"],
            "fit_pixel_acc": info["fit_pixel_acc"], **verdict.record()}


def _calibrate(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.calibrate import calibrate

    from lmae_sdk.recipe.card_eval import CARD_PROTOCOLS

    out = calibrate(ctx.work.artifact("fusion"), ctx.options.data, ctx.work.artifact("calibrate"),
                    thresholds=CALIBRATE_THRESHOLDS, limit=min(int(ctx.facts["val"]), CALIBRATE_IMAGES),
                    rule_settings=CARD_PROTOCOLS, rule_limit=RULE_IMAGES, threads=ctx.stage.threads, log=_log)
    rule = out["finishing_rule"]
    return {"unknown_threshold": out["chosen"]["unknown_threshold"], "val_pa_miou": out["chosen"]["pa_miou"],
            "finishing_rule": out["chosen"]["finishing_rule"], "finishing_rule_why": rule["why"] if rule else
            "no pixel fusion to compare: the argmax"}


def _export(ctx: StageContext) -> dict[str, Any]:
    """The ONNX bundle, with the boundary graph in int8 too (the CPU runs that one) unless the
    int8 graph departs from torch beyond its tolerance."""
    from lmae_sdk.export.api import ExportOptions, export_bundle
    from lmae_sdk.export.quantize import Int8BoundaryError

    bundle = ctx.work.artifact("export")
    options = ExportOptions(verify=True, data=ctx.options.data, lint=False, boundary_int8=True)
    exported: list[dict[str, Any]] = []
    for attempt in (options, replace(options, boundary_int8=False)):
        shutil.rmtree(bundle, ignore_errors=True)  # a killed or refused export leaves a part-written bundle
        exported.clear()
        try:
            manifest = export_bundle([ctx.work.artifact("calibrate")], bundle, attempt, log=_log, exported=exported)
            break
        except Int8BoundaryError as e:
            _log(f"the int8 boundary graph is not kept ({e}); the bundle runs the fp32 one")
    int8 = (manifest.data.get("boundary_graph") or {}).get("int8")
    return {"engines": [e["name"] for e in exported],
            "parity_argmax_agreement": min(e["parity"]["argmax_agreement"] for e in exported),
            "parity_max_abs_diff": max(e["parity"]["max_abs_diff"] for e in exported),
            "boundary_int8_mean_abs_diff": int8["parity"]["mean_abs_diff"] if int8 else None}


def _verify(ctx: StageContext) -> dict[str, Any]:
    """The bundle (ONNX Runtime) against the checkpoint it came from (torch), end to end on
    val images with 50% random holes: the share of hole pixels given the same class."""
    from lmae_sdk.bundle import read_manifest
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.degrade import degrade, rng_for_name
    from lmae_sdk.labels import UNKNOWN, read_image, read_label
    from lmae_sdk.runtime import LMAECompleter

    info = load_dataset(ctx.options.data, ("val",), ctx.options.layout)
    bundle = ctx.work.artifact("export")
    fp32 = LMAECompleter.load(bundle, backend="onnxruntime", threads=ctx.stage.threads, precision="fp32")
    has_int8 = "int8" in (read_manifest(bundle).data.get("boundary_graph") or {})
    as_run = LMAECompleter.load(bundle, backend="onnxruntime", threads=ctx.stage.threads) if has_int8 else fp32
    torch_ref = LMAECompleter.load(ctx.work.artifact("calibrate"), backend="torch", threads=ctx.stage.threads)
    same = same_as_run = total = 0
    for img_path, lab_path in info.pairs["val"][:8]:
        image, (label, _) = read_image(img_path), read_label(lab_path)
        partial = degrade(label, 0.5, "random", rng_for_name(ctx.options.seed, img_path.stem))
        hole = partial == UNKNOWN
        want = torch_ref.complete(image, partial).label[hole]
        agree = int((fp32.complete(image, partial).label[hole] == want).sum())
        same += agree
        same_as_run += int((as_run.complete(image, partial).label[hole] == want).sum()) if has_int8 else agree
        total += int(hole.sum())
    agreement = same / max(total, 1)
    # the fp32 graphs must match torch; the int8 boundary graph (the CPU's) is reported beside
    # them, and the card scores the bundle as the CPU runs it
    result = {"images": min(8, len(info.pairs["val"])), "hole_pixels": total, "label_agreement": agreement,
              "label_agreement_as_run": same_as_run / max(total, 1)}
    atomic_write_bytes(ctx.work.artifact("verify"), json.dumps(result, indent=1).encode())
    if agreement < 0.999:
        raise RuntimeError(f"the bundle's labels agree with the checkpoint's on {agreement:.4%} of hole pixels "
                           f"(< 99.9%)")
    return result


def _card(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.recipe.card_eval import score_bundle

    return score_bundle(ctx, log=_log)


STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {d.name: globals()[d.function] for d in RECIPE}


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_stage(stage: str, work: str | Path) -> dict[str, Any]:
    ctx = StageContext(Path(work), stage)
    np.seterr(all="ignore")
    result = STAGES[stage](ctx)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one result
        atomic_write_bytes(Path(work) / f"{stage}.result.json", json.dumps(result, indent=1, default=float).encode())
    return result


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the runner that started it dies (set here, in the
    child, not by a ``preexec_fn`` in the runner, which is unsafe once the runner has threads)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the runner died before the signal was set
        os._exit(1)


if __name__ == "__main__":
    if os.environ.get("LMAE_FIT_RUNNER"):
        die_with_parent(int(os.environ["LMAE_FIT_RUNNER"]))
    try:
        run_stage(sys.argv[1], sys.argv[2])
    except StageError as e:
        print(f"stage failed: {e}", flush=True)
        sys.exit(STAGE_FAILED)
