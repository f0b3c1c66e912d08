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
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lmae_sdk.labels import atomic_write_bytes
from lmae_sdk.recipe.plan import FUSION_MAX_MLP_STEPS, FUSION_SAMPLE_S_PER_IMAGE, REFERENCE_PIXELS, FitOptions, Plan
from lmae_sdk.recipe.state import WorkFolder

FIT_MASK_RATIOS = (0.25, 0.5, 0.75)
FINETUNE_LR = 5e-4  # half the first training's peak: the fine-tune starts from a trained model
VAL_IMAGES_WHILE_TRAINING = 40  # model selection during training; the card scores all of val
TUNE_IMAGES = 80  # images that choose the boundary net's step cost


class StageContext:
    """What every stage reads: the options, the plan's entry for the stage, the work folder."""

    def __init__(self, work: Path, stage: str) -> None:
        self.started = time.time()
        self.work = WorkFolder(work).load()
        self.options = FitOptions(**self.work.record["options"])
        self.plan = self.work.plan
        self.stage = Plan.from_dict(self.plan).stage(stage)
        self.facts = self.plan["facts"]
        self.device = self.plan["device"]
        self.pixels = self.facts["image_size"][0] * self.facts["image_size"][1] / REFERENCE_PIXELS

    def amp(self) -> str:
        if self.device == "cuda":
            return "bf16"
        from lmae_sdk.training.amp import native_bf16

        return "bf16" if native_bf16() else "none"


def _train_config(ctx: StageContext, out: Path, **extra: Any):
    """Training that stops when the stage's share ends (counting what earlier runs of the
    stage spent), less the time of the last validation."""
    from lmae_sdk.training.train import TrainConfig

    train = int(ctx.facts["train"])
    batch = max(1, min(8, train))
    steps_per_epoch = max(1, train // batch)
    val = min(int(ctx.facts["val"]), VAL_IMAGES_WHILE_TRAINING)
    last_val_s = 5 + val * 3 * 0.2 * ctx.pixels / ctx.stage.threads  # 3 protocols, ~0.2 s per 360x480 image
    stop_at = ctx.started + 60 * (ctx.stage.minutes - ctx.work.spent(ctx.stage.name)) - last_val_s
    return TrainConfig(data=ctx.options.data, out=str(out), mask_ratios=FIT_MASK_RATIOS, preset=ctx.options.preset,
                       image_size=tuple(ctx.plan["model_size"]), epochs=100_000, batch_size=batch,
                       threads=ctx.stage.threads, workers=0, seed=ctx.options.seed, layout=ctx.options.layout,
                       val_limit=val, val_every=max(1, round(90 / steps_per_epoch)),  # ~every 90 steps, and at the end
                       stop_at=stop_at, resume=True, progress=False, device=ctx.device, amp=ctx.amp(), **extra)


def _model(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.train import train

    return _train_result(train(_train_config(ctx, ctx.work.artifact("model"))))


def _finetune(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.train import train

    model, edges = ctx.work.artifact("model"), ctx.work.artifact("boundaries")
    return _train_result(train(_train_config(ctx, ctx.work.artifact("finetune"), lr=FINETUNE_LR,
                                             init_from=str(model), boundaries_from=str(edges))))


def _train_result(best: Path) -> dict[str, Any]:
    from lmae_sdk.checkpoint import load_checkpoint

    ck = load_checkpoint(best)
    m = ck.get("metrics", {})
    history = json.loads(Path(str(best.with_suffix("")) + ".log.json").read_text())
    return {"best_epoch": m.get("epoch"), "epochs": len(history),
            "val_pa_miou_random": m.get("val_random", {}).get("pa_miou"),
            "val_pa_miou_objects": m.get("val_objects", {}).get("pa_miou"),
            "val_images": VAL_IMAGES_WHILE_TRAINING}


def _boundaries(ctx: StageContext) -> dict[str, Any]:
    import torch

    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.model import LMAE, make_config
    from lmae_sdk.training.boundary_fit import fit_boundaries

    stub = ctx.work.file("boundaries.stub.pt")  # carries the configuration the net is fitted for
    if not stub.is_file():
        info = load_dataset(ctx.options.data, ("train",), ctx.options.layout)
        torch.manual_seed(ctx.options.seed)
        model = LMAE(make_config(ctx.options.preset, info.num_classes, img_size=tuple(ctx.plan["model_size"])))
        save_checkpoint(make_checkpoint(model, class_names=info.class_names, palette=info.palette,
                                        mask_ratios=list(FIT_MASK_RATIOS), label_resize="soft",
                                        unknown_threshold=0.5, background_index=info.background_index), stub)
    tune = min(TUNE_IMAGES, int(ctx.facts["train"]))
    # the step-cost grid after training: 14 geodesic fills and one flip-averaged map per tuning image
    tune_min = tune * 0.4 * ctx.pixels / 60
    minutes = max(0.25, 0.98 * ctx.stage.minutes - tune_min - (time.time() - ctx.started) / 60)
    fit = fit_boundaries(stub, ctx.options.data, ctx.work.artifact("boundaries"), minutes=minutes,
                         tune_images=tune, seed=ctx.options.seed, threads=ctx.stage.threads, flip_average=True,
                         resume_path=ctx.work.file("boundaries.state.pt"), log=_log)
    return {k: fit[k] for k in ("steps", "train_seconds", "fill_colour_only", "fill_with_boundaries")}


def _fusion(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.fusion_fit import fit_fusion

    # about half the share samples pixels; the MLP trains for the rest of it
    per_image_s = FUSION_SAMPLE_S_PER_IMAGE * ctx.pixels / min(ctx.stage.threads, 2)
    images = int(min(ctx.facts["train"], max(24, 0.5 * ctx.stage.minutes * 60 / per_image_s)))
    info = fit_fusion(ctx.work.artifact("finetune"), ctx.options.data, ctx.work.artifact("fusion"), images=images,
                      steps=FUSION_MAX_MLP_STEPS, minutes=0.95 * ctx.stage.minutes, seed=ctx.options.seed,
                      threads=ctx.stage.threads, log=_log)
    return {"images": images, "pixels": info["pixels"], "steps": info["steps"], "fit_loss": info["fit_loss"],
            "fit_pixel_acc": info["fit_pixel_acc"]}


def _calibrate(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.training.calibrate import calibrate

    out = calibrate(ctx.work.artifact("fusion"), ctx.options.data, ctx.work.artifact("calibrate"),
                    thresholds=(0.5, 0.75), limit=min(int(ctx.facts["val"]), 100), threads=ctx.stage.threads,
                    log=_log)
    return {"unknown_threshold": out["chosen"]["unknown_threshold"], "val_pa_miou": out["chosen"]["pa_miou"]}


def _export(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.export.api import ExportOptions, export_bundle

    bundle = ctx.work.artifact("export")
    shutil.rmtree(bundle, ignore_errors=True)  # a killed export leaves a part-written bundle
    exported: list[dict[str, Any]] = []
    export_bundle([ctx.work.artifact("calibrate")], bundle, ExportOptions(verify=True, data=ctx.options.data,
                                                                          lint=False), log=_log, exported=exported)
    return {"engines": [e["name"] for e in exported],
            "parity_argmax_agreement": min(e["parity"]["argmax_agreement"] for e in exported),
            "parity_max_abs_diff": max(e["parity"]["max_abs_diff"] for e in exported)}


def _verify(ctx: StageContext) -> dict[str, Any]:
    """The bundle (ONNX Runtime) against the checkpoint it came from (torch), end to end on
    val images with 50% random holes: the share of hole pixels given the same class."""
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.degrade import degrade, rng_for_name
    from lmae_sdk.labels import UNKNOWN, read_image, read_label
    from lmae_sdk.runtime import LMAECompleter

    info = load_dataset(ctx.options.data, ("val",), ctx.options.layout)
    bundle = LMAECompleter.load(ctx.work.artifact("export"), backend="onnxruntime", threads=ctx.stage.threads)
    torch_ref = LMAECompleter.load(ctx.work.artifact("calibrate"), backend="torch", threads=ctx.stage.threads)
    same = total = 0
    for img_path, lab_path in info.pairs["val"][:8]:
        image, (label, _) = read_image(img_path), read_label(lab_path)
        partial = degrade(label, 0.5, "random", rng_for_name(ctx.options.seed, img_path.stem))
        hole = partial == UNKNOWN
        a = bundle.complete(image, partial).label
        b = torch_ref.complete(image, partial).label
        same += int((a[hole] == b[hole]).sum())
        total += int(hole.sum())
    agreement = same / max(total, 1)
    result = {"images": min(8, len(info.pairs["val"])), "hole_pixels": total, "label_agreement": agreement}
    atomic_write_bytes(ctx.work.artifact("verify"), json.dumps(result, indent=1).encode())
    if agreement < 0.999:
        raise RuntimeError(f"the bundle's labels agree with the checkpoint's on {agreement:.4%} of hole pixels "
                           f"(< 99.9%)")
    return result


def _card(ctx: StageContext) -> dict[str, Any]:
    from lmae_sdk.recipe.card_eval import score_bundle

    return score_bundle(ctx, log=_log)


STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "model": _model, "boundaries": _boundaries, "finetune": _finetune, "fusion": _fusion,
    "calibrate": _calibrate, "export": _export, "verify": _verify, "card": _card}


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_stage(stage: str, work: str | Path) -> dict[str, Any]:
    ctx = StageContext(Path(work), stage)
    np.seterr(all="ignore")
    result = STAGES[stage](ctx)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one result
        atomic_write_bytes(Path(work) / f"{stage}.result.json", json.dumps(result, indent=1, default=float).encode())
    return result


if __name__ == "__main__":
    run_stage(sys.argv[1], sys.argv[2])
