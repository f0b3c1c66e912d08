"""Calibrate a checkpoint's inference rules on a validation split and store them in it:

* ``unknown_threshold``: the unknown share above which a patch is masked (completed by
  the decoder) instead of staying visible with pixel holes;
* ``near_copy_px``: hole pixels this close to a known pixel copy the propagated label (the
  model runs at model resolution; near known pixels the full-resolution copy is sharper,
  and a geodesic copy, which stops at image edges, stays better further into the hole).

The model runs once per threshold; every ``near_copy_px`` value reuses those logits.  Each
image goes to the engine the runtime would pick (a range model: the smallest of its ratios
that covers the patches needing completion; one pass, the largest ratio, when none does).
Results within ``tie_tolerance`` PA-mIoU of the best count as ties and go to the higher
threshold.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lmae_sdk.metrics import CompletionMeter
from lmae_sdk.preprocess import ModelInputs, finish
from lmae_sdk.runtime.router import route_image

from .data import ValSet, load_pairs
from .datasets import load_dataset
from .train import routed_logits


def calibrate(ckpt_path: str | Path, data: str | Path, out: str | Path | None = None,
              thresholds: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95),
              near_copy: tuple[float, ...] = (0, 2, 4, 8, 12, 16, 24, 32), strategy: str = "random",
              ratio: float = 0.5, limit: int = 0, threads: int = 0, tie_tolerance: float = 0.1, log=print) -> dict:
    if threads:
        torch.set_num_threads(threads)
    ck = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ck)
    cfg = model.cfg
    info = load_dataset(data, ("val",))
    pairs = info.pairs["val"][: limit or None]
    vs = ValSet(load_pairs(pairs, cfg.num_classes), cfg, strategy, ratio, ck["label_resize"],
                background_index=ck.get("background_index"))
    ratios = [float(r) for r in ck["mask_ratios"]]
    bg = ck.get("background_index")
    meters = {k: CompletionMeter(cfg.num_classes) for k in itertools.product(thresholds, near_copy)}
    model.eval()
    for th in thresholds:
        for gts, partials, inp, propagated in vs.batches(16):
            items = [inp.item(j) for j in range(len(gts))]
            engine = [route_image(it, cfg, ratios, th, bg, force_final=True).mask_ratio for it in items]
            logits = [None] * len(items)
            for m in set(engine):  # one model call per engine, like the runtime
                idx = [j for j, e in enumerate(engine) if e == m]
                group = routed_logits(model, ModelInputs.stack([items[j] for j in idx]), m, "background_first", th,
                                      bg)
                for j, lg in zip(idx, group):
                    logits[j] = lg
            for j, (gt, partial) in enumerate(zip(gts, partials)):
                for nc in near_copy:
                    meters[(th, nc)].update(finish(logits[j], partial, near_copy_px=nc, propagated=propagated[j])[0],
                                            gt, partial)
    rows = []
    for (th, nc), meter in meters.items():
        s = meter.summary(info.class_names)
        rows.append({"unknown_threshold": th, "near_copy_px": nc, "pa_miou": s["pa_miou"],
                     "pa_pixel_acc": s["pa_pixel_acc"], "global_miou": s["global_miou"]})
        log(f"threshold {th:<5g} near_copy_px {nc:<4g} PA-mIoU {s['pa_miou']:6.2f}  acc {s['pa_pixel_acc']:6.2f}  "
            f"global {s['global_miou']:6.2f}")
    # near-ties go to the higher threshold: it masks fewer patches, so the runtime routes
    # images to the smallest engine (the ratio the model was trained at) more often
    top = max(r["pa_miou"] for r in rows)
    best = max((r for r in rows if r["pa_miou"] >= top - tie_tolerance),
               key=lambda r: (r["unknown_threshold"], r["pa_miou"]))
    ck["unknown_threshold"] = float(best["unknown_threshold"])
    ck["near_copy_px"] = float(best["near_copy_px"])
    ck.setdefault("metrics", {})["calibration"] = {"split": "val", "setting": f"{strategy}:{ratio}",
                                                   "images": len(vs), "rows": rows, "chosen": best}
    target = Path(out) if out else Path(ckpt_path)
    save_checkpoint(ck, target)
    log(f"chosen: unknown_threshold {best['unknown_threshold']:g}, near_copy_px {best['near_copy_px']:g} "
        f"(val PA-mIoU {best['pa_miou']:.2f}) -> {target}")
    return {"rows": rows, "chosen": best, "checkpoint": str(target)}
