"""Calibrate a checkpoint's inference rules on a validation split and store them in it:

* ``unknown_threshold``: the unknown share above which a patch is masked (completed by
  the decoder) instead of staying visible with pixel holes;
* ``near_copy_px``: hole pixels this close to a known pixel copy the propagated label (the
  model runs at model resolution; near known pixels the full-resolution copy is sharper,
  and a geodesic copy, which stops at image edges, stays better further into the hole);
* ``near_copy_min_prob``: ... but only where the model gives the copied class at least this
  probability (a removed object's inside is not its surroundings' class: the copy hurts there).

A checkpoint with pixel fusion (``lmae fit-fusion``) decides with it: the threshold is chosen
for fusion, and the near-copy rule (at that threshold) is kept for when fusion is turned off.

The model runs once per threshold; every near-copy rule reuses those logits.  Each
image goes to the engine the runtime would pick (a range model: the smallest of its ratios
that covers the patches needing completion; one pass, the largest ratio, when none does).
The objective is the mean PA-mIoU over the val settings (default: 50% random holes and
50% whole objects removed).  Results within ``tie_tolerance`` of the best count as ties and
go to the higher threshold.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from lmae_sdk.boundaries import boundaries_from_checkpoint, boundary_maps
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lmae_sdk.fusion import PixelFusion
from lmae_sdk.metrics import CompletionMeter
from lmae_sdk.preprocess import ModelInputs, finish
from lmae_sdk.runtime.router import route_image

from .data import ValSet, load_pairs
from .datasets import load_dataset
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
              near_copy: tuple[float, ...] = (0, 2, 4, 8, 12, 16, 24, 32),
              near_copy_min_prob: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3),
              settings: tuple[tuple[str, float], ...] = DEFAULT_SETTINGS, limit: int = 0, threads: int = 0,
              tie_tolerance: float = 0.1, log=print) -> dict:
    """Pick the rule with the best mean val PA-mIoU over ``settings`` (degrade strategy, ratio).

    The default pairs small random holes, where copying the propagated label near known
    pixels helps, with whole removed objects, where that copy is the surroundings' label
    and hurts: one rule has to serve both kinds of hole.
    """
    if threads:
        torch.set_num_threads(threads)
    ck = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ck, ckpt_path)
    cfg = model.cfg
    info = load_dataset(data, ("val",))
    pairs = info.pairs["val"][: limit or None]
    val = load_pairs(pairs, cfg.num_classes)
    maps = boundary_maps(boundaries_from_checkpoint(ck, source=str(ckpt_path)), [img for img, _ in val])
    ratios = [float(r) for r in ck["mask_ratios"]]
    bg = ck.get("background_index")
    names = [f"{st}:{r:g}" for st, r in settings]
    fusion = PixelFusion.from_dict(ck["fusion"], str(ckpt_path)) if ck.get("fusion") else None
    # a rule: (near_copy_px, near_copy_min_prob, uses pixel fusion); with fusion, the near-copy
    # rules are still chosen: they decide when a user turns fusion off (pixel_fusion=False)
    rules = [(nc, q, False) for nc in near_copy for q in (near_copy_min_prob if nc > 0 else (0.0,))]
    if fusion is not None:
        rules.append((0.0, 0.0, True))
    meters = {(name, th, *rule): CompletionMeter(cfg.num_classes)
              for name in names for th in thresholds for rule in rules}
    model.eval()
    for name, (strategy, ratio) in zip(names, settings):
        vs = ValSet(val, cfg, strategy, ratio, ck["label_resize"], background_index=bg,
                    class_costs=fusion is not None, boundary_maps=maps)
        for th in thresholds:
            for gts, partials, inp, propagated in vs.batches(16):
                logits = runtime_logits(model, inp, ratios, th, bg)
                for j, (gt, partial) in enumerate(zip(gts, partials)):
                    for nc, q, fused in rules:
                        completed = finish(logits[j], partial, near_copy_px=nc, propagated=propagated[j],
                                           near_copy_min_prob=q, fusion=fusion if fused else None)[0]
                        meters[(name, th, nc, q, fused)].update(completed, gt, partial)
    rows = []
    for th, (nc, q, fused) in itertools.product(thresholds, rules):
        by = {name: meters[(name, th, nc, q, fused)].summary(info.class_names) for name in names}
        rows.append({"unknown_threshold": th, "near_copy_px": nc, "near_copy_min_prob": q, "pixel_fusion": fused,
                     "pa_miou": float(np.mean([b["pa_miou"] for b in by.values()])),
                     "pa_miou_by_setting": {name: b["pa_miou"] for name, b in by.items()},
                     "pa_pixel_acc_by_setting": {name: b["pa_pixel_acc"] for name, b in by.items()}})
        rule = "pixel fusion" if fused else f"near_copy_px {nc:<4g} min_prob {q:<4g}"
        log(f"threshold {th:<5g} {rule:<32} PA-mIoU mean {rows[-1]['pa_miou']:6.2f}  " +
            "  ".join(f"{name} {b['pa_miou']:6.2f}" for name, b in by.items()))

    def pick(candidates: list[dict]) -> dict:
        # near-ties go to the higher threshold: it masks fewer patches, so the runtime routes
        # images to the smallest engine (the ratio the model was trained at) more often
        top = max(r["pa_miou"] for r in candidates)
        return max((r for r in candidates if r["pa_miou"] >= top - tie_tolerance),
                   key=lambda r: (r["unknown_threshold"], r["pa_miou"]))

    best = pick([r for r in rows if r["pixel_fusion"] == (fusion is not None)])
    copy_rule = pick([r for r in rows if not r["pixel_fusion"] and r["unknown_threshold"] == best["unknown_threshold"]])
    ck["unknown_threshold"] = float(best["unknown_threshold"])
    ck["near_copy_px"] = float(copy_rule["near_copy_px"])
    ck["near_copy_min_prob"] = float(copy_rule["near_copy_min_prob"])
    ck.setdefault("metrics", {})["calibration"] = {"split": "val", "settings": names, "objective": "mean PA-mIoU",
                                                   "images": len(val), "rows": rows, "chosen": best,
                                                   "near_copy_rule": copy_rule, "pixel_fusion": fusion is not None}
    target = Path(out) if out else Path(ckpt_path)
    save_checkpoint(ck, target)
    log(f"chosen: unknown_threshold {best['unknown_threshold']:g}, "
        f"{'pixel fusion, ' if fusion is not None else ''}near_copy_px {copy_rule['near_copy_px']:g}, "
        f"near_copy_min_prob {copy_rule['near_copy_min_prob']:g} "
        f"(mean val PA-mIoU {best['pa_miou']:.2f} over {', '.join(names)}) -> {target}")
    return {"rows": rows, "chosen": best, "checkpoint": str(target)}
