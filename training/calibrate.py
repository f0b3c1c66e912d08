"""Calibrate a checkpoint on a validation split: its routing threshold, and whether its pixel
fusion earns its place as the finishing rule.  Both are stored in the checkpoint.

``unknown_threshold`` is the unknown share above which a patch is masked (completed by the
decoder) instead of staying visible with its pixel holes.  Each image goes to the engine the
runtime would pick (a range model: the smallest of its ratios that covers the patches
needing completion; one pass, the largest ratio, when none does), and its logits are
finished as the runtime would: the pipeline of :mod:`lmae_sdk.pipeline`.  The threshold's
objective is the mean PA-mIoU over the val settings (default: 50% random holes and 50% whole
objects removed); results within ``tie_tolerance`` of the best count as ties and go to the
higher threshold.

A checkpoint with pixel fusion is scored twice from the same logits: finished by the fusion
and by the argmax.  Each rule gets its own best threshold; then both are scored on
``rule_settings`` (``lmae fit``: every kind of hole its model card scores) and the fusion
stays the finishing rule only when its mean PA-mIoU there is higher than the argmax's.
Otherwise it is dropped from the checkpoint, and the calibration record says why: an
undertrained fusion never finishes a bundle worse than the model's own argmax would.
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
              tie_tolerance: float = 0.1, rule_settings: tuple[tuple[str, float], ...] = (), rule_limit: int = 0,
              log=print) -> dict:
    """Pick the threshold with the best mean val PA-mIoU over ``settings`` (degrade
    strategy, ratio): small random holes and whole removed objects, which one threshold
    has to serve both.  With pixel fusion, also decide the finishing rule on
    ``rule_settings`` (default: ``settings``), the kinds not in ``settings`` scored on the
    first ``rule_limit`` val images (0: ``limit``)."""
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
    rules = {completion.finishing_rule: completion}
    if completion.fusion is not None:
        rules["argmax"] = replace(completion, fusion=None)
    model.eval()

    def score(kinds, images, image_maps, rule_thresholds) -> dict:
        """{(kind name, threshold, rule): CompletionMeter} for each rule at its thresholds."""
        meters = {}
        for strategy, ratio in kinds:
            name = f"{strategy}:{ratio:g}"
            vs = ValSet(images, cfg, strategy, ratio, completion.label_resize,
                        background_index=completion.background_index, class_costs=completion.fusion is not None,
                        boundary_maps=image_maps)
            for th in sorted({th for ths in rule_thresholds.values() for th in ths}):
                for gts, partials, inp, propagated in vs.batches(16):
                    logits = runtime_logits(model, inp, ratios, th, completion.background_index)
                    for rule, rule_settings_ in rules.items():
                        if th not in rule_thresholds[rule]:
                            continue
                        meter = meters.setdefault((name, th, rule), CompletionMeter(cfg.num_classes))
                        for j, (gt, partial) in enumerate(zip(gts, partials)):
                            meter.update(finish(logits[j], partial, rule_settings_, propagated[j],
                                                confidence=False)[0], gt, partial)
        return meters

    names = [f"{st}:{r:g}" for st, r in settings]
    meters = score(settings, val, maps, {rule: thresholds for rule in rules})
    rows_by_rule: dict[str, list[dict]] = {}
    for rule in rules:
        rows = rows_by_rule[rule] = []
        for th in thresholds:
            by = {name: meters[(name, th, rule)].summary(info.class_names) for name in names}
            rows.append({"unknown_threshold": th, "finishing_rule": rule,
                         "pa_miou": float(np.mean([b["pa_miou"] for b in by.values()])),
                         "pa_miou_by_setting": {name: b["pa_miou"] for name, b in by.items()},
                         "pa_pixel_acc_by_setting": {name: b["pa_pixel_acc"] for name, b in by.items()}})
            log(f"{rule}: threshold {th:<5g} PA-mIoU mean {rows[-1]['pa_miou']:6.2f}  " +
                "  ".join(f"{name} {b['pa_miou']:6.2f}" for name, b in by.items()))
    best_by_rule = {rule: _best_threshold(rows, tie_tolerance) for rule, rows in rows_by_rule.items()}
    rule = completion.finishing_rule
    decision = None
    if len(rules) > 1:
        images = val[:rule_limit] if rule_limit else val
        decision = _decide_rule(rules, best_by_rule, meters, settings, rule_settings or settings, images,
                                None if maps is None else maps[: len(images)], score, info.class_names)
        rule = decision["chosen"]
        log(f"finishing rule: {decision['why']}")
    best = best_by_rule[rule]
    chosen_settings = rules[rule]
    ck.update(replace(chosen_settings, unknown_threshold=float(best["unknown_threshold"])).to_dict())
    for retired in ("near_copy_px", "near_copy_min_prob"):
        ck.pop(retired, None)
    record = {"split": "val", "settings": names, "objective": "mean PA-mIoU", "images": len(val),
              "rows": rows_by_rule[rule], "chosen": best}
    if decision is not None:
        record["finishing_rule"] = decision
        if chosen_settings.fusion is None:  # the fusion's own record stays with the calibration's
            record["finishing_rule"]["dropped_fusion_fit"] = completion.fusion.info
    ck.setdefault("metrics", {})["calibration"] = record
    target = Path(out) if out else Path(ckpt_path)
    save_checkpoint(ck, target)
    log(f"chosen: unknown_threshold {best['unknown_threshold']:g} with {rule} "
        f"(mean val PA-mIoU {best['pa_miou']:.2f} over {', '.join(names)}) -> {target}")
    return {"rows": [r for rows in rows_by_rule.values() for r in rows], "chosen": best,
            "finishing_rule": decision, "checkpoint": str(target)}


def _best_threshold(rows: list[dict], tie_tolerance: float) -> dict:
    """The best row; near-ties go to the higher threshold: it masks fewer patches, so the
    runtime routes images to the smallest engine (the ratio the model was trained at) more often."""
    top = max(r["pa_miou"] for r in rows)
    return max((r for r in rows if r["pa_miou"] >= top - tie_tolerance),
               key=lambda r: (r["unknown_threshold"], r["pa_miou"]))


def _decide_rule(rules, best_by_rule, meters, settings, rule_settings, images, image_maps, score,
                 class_names) -> dict:
    """Fusion or argmax: each at its own best threshold, mean PA-mIoU over ``rule_settings``.
    The kinds the threshold search scored are reused; the others are scored on ``images``."""
    chosen_th = {rule: [best_by_rule[rule]["unknown_threshold"]] for rule in rules}
    extra = tuple(k for k in rule_settings if k not in settings)
    meters = {**meters, **(score(extra, images, image_maps, chosen_th) if extra else {})}
    by_rule = {rule: {f"{st}:{r:g}": meters[(f"{st}:{r:g}", chosen_th[rule][0], rule)].summary(class_names)["pa_miou"]
                      for st, r in rule_settings} for rule in rules}
    mean = {rule: float(np.mean(list(v.values()))) for rule, v in by_rule.items()}
    fusion_rule = next(r for r in rules if r != "argmax")
    kinds = ", ".join(by_rule[fusion_rule])
    if mean[fusion_rule] > mean["argmax"]:
        chosen = fusion_rule
        why = (f"{fusion_rule} kept: mean val PA-mIoU {mean[fusion_rule]:.2f} against the argmax's "
               f"{mean['argmax']:.2f} over {kinds}")
    else:
        chosen = "argmax"
        why = (f"argmax chosen, {fusion_rule} dropped: it scored {mean[fusion_rule]:.2f} against the argmax's "
               f"{mean['argmax']:.2f} mean val PA-mIoU over {kinds} (refit it with a larger budget)")
    return {"chosen": chosen, "why": why, "kinds": list(by_rule[fusion_rule]), "mean_pa_miou": mean,
            "pa_miou_by_kind": by_rule, "extra_kinds_images": len(images) if extra else 0}
