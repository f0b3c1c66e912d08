"""Calibrate a checkpoint's routing threshold on a validation split and store it in it.

``unknown_threshold`` is the unknown share above which a patch is masked (completed by the
decoder) instead of staying visible with its pixel holes.  Each image goes to the engine the
runtime would pick (a range model: the smallest of its ratios that covers the patches
needing completion; one pass, the largest ratio, when none does), and its logits are
finished by the checkpoint's finishing rule (pixel fusion when fitted, else the argmax):
the pipeline of :mod:`lmae_sdk.pipeline`, as the runtime runs it.  The objective is the mean
PA-mIoU over the val settings (default: 50% random holes and 50% whole objects removed).
Results within ``tie_tolerance`` of the best count as ties and go to the higher threshold.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lmae_sdk.boundaries import boundaries_from_checkpoint, boundary_maps
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lmae_sdk.datasets import load_dataset
from lmae_sdk.metrics import CompletionMeter
from lmae_sdk.pipeline import CompletionSettings, ModelInputs, finish
from lmae_sdk.routing import route_image

from .data import ValSet, load_pairs
from .train import routed_logits


DEFAULT_SETTINGS = (("random", 0.5), ("objects", 0.5))


def runtime_logits(model, inp: ModelInputs, ratios: list[float], threshold: float,
                   background_index: int | None) -> list[np.ndarray]:
    """Logits (N, h, w) per image of a stacked batch, each from the engine the runtime would
    pick (a range model: the smallest of its ratios that covers the patches needing
    completion; one pass, the largest ratio, when none does); one model call per engine."""
    items = [inp.item(j) for j in range(inp.image.shape[0])]
    engine = [route_image(it, model.cfg, ratios, threshold, background_index, force_final=True).mask_ratio
              for it in items]
    logits: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
    for m in set(engine):
        idx = [j for j, e in enumerate(engine) if e == m]
        group = routed_logits(model, ModelInputs.stack([items[j] for j in idx]), m, "background_first", threshold,
                              background_index)
        for j, lg in zip(idx, group):
            logits[j] = lg
    return logits


def calibrate(ckpt_path: str | Path, data: str | Path, out: str | Path | None = None,
              thresholds: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95),
              settings: tuple[tuple[str, float], ...] = DEFAULT_SETTINGS, limit: int = 0, threads: int = 0,
              tie_tolerance: float = 0.1, log=print) -> dict:
    """Pick the threshold with the best mean val PA-mIoU over ``settings`` (degrade
    strategy, ratio): small random holes and whole removed objects, which one threshold
    has to serve both."""
    if threads:
        torch.set_num_threads(threads)
    ck = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ck, ckpt_path)
    cfg = model.cfg
    completion = CompletionSettings.from_dict(ck, str(ckpt_path))
    info = load_dataset(data, ("val",))
    val = load_pairs(info.pairs["val"][: limit or None], cfg.num_classes)
    maps = boundary_maps(boundaries_from_checkpoint(ck, source=str(ckpt_path)), [img for img, _ in val])
    ratios = [float(r) for r in ck["mask_ratios"]]
    names = [f"{st}:{r:g}" for st, r in settings]
    meters = {(name, th): CompletionMeter(cfg.num_classes) for name in names for th in thresholds}
    model.eval()
    for name, (strategy, ratio) in zip(names, settings):
        vs = ValSet(val, cfg, strategy, ratio, completion.label_resize, background_index=completion.background_index,
                    class_costs=completion.fusion is not None, boundary_maps=maps)
        for th in thresholds:
            for gts, partials, inp, propagated in vs.batches(16):
                logits = runtime_logits(model, inp, ratios, th, completion.background_index)
                for j, (gt, partial) in enumerate(zip(gts, partials)):
                    meters[(name, th)].update(finish(logits[j], partial, completion, propagated[j])[0], gt, partial)
    rows = []
    for th in thresholds:
        by = {name: meters[(name, th)].summary(info.class_names) for name in names}
        rows.append({"unknown_threshold": th, "finishing_rule": completion.finishing_rule,
                     "pa_miou": float(np.mean([b["pa_miou"] for b in by.values()])),
                     "pa_miou_by_setting": {name: b["pa_miou"] for name, b in by.items()},
                     "pa_pixel_acc_by_setting": {name: b["pa_pixel_acc"] for name, b in by.items()}})
        log(f"threshold {th:<5g} PA-mIoU mean {rows[-1]['pa_miou']:6.2f}  " +
            "  ".join(f"{name} {b['pa_miou']:6.2f}" for name, b in by.items()))
    # near-ties go to the higher threshold: it masks fewer patches, so the runtime routes
    # images to the smallest engine (the ratio the model was trained at) more often
    top = max(r["pa_miou"] for r in rows)
    best = max((r for r in rows if r["pa_miou"] >= top - tie_tolerance),
               key=lambda r: (r["unknown_threshold"], r["pa_miou"]))
    ck.update(replace(completion, unknown_threshold=float(best["unknown_threshold"])).to_dict())
    for retired in ("near_copy_px", "near_copy_min_prob"):
        ck.pop(retired, None)
    ck.setdefault("metrics", {})["calibration"] = {"split": "val", "settings": names, "objective": "mean PA-mIoU",
                                                   "images": len(val), "rows": rows, "chosen": best}
    target = Path(out) if out else Path(ckpt_path)
    save_checkpoint(ck, target)
    log(f"chosen: unknown_threshold {best['unknown_threshold']:g} with {completion.finishing_rule} "
        f"(mean val PA-mIoU {best['pa_miou']:.2f} over {', '.join(names)}) -> {target}")
    return {"rows": rows, "chosen": best, "checkpoint": str(target)}
