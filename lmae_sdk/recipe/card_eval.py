"""The ``card`` stage of ``lmae fit``: score the exported bundle on val, per hole protocol,
beside nearest-label fill and the geodesic fill on the same partial labels, and write the
model card (:mod:`lmae_sdk.card`) into the bundle.

The bundle runs as ``lmae complete`` runs it on a CPU: ONNX Runtime, one-thread engines,
one lane per core.  Partial labels come from :func:`lmae_sdk.degrade.degrade`, seeded per
file name, so ``lmae degrade --seed 0`` makes the same ones.
"""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lmae_sdk.card import HEADLINE_PROTOCOL, write_card
from lmae_sdk.datasets import load_dataset
from lmae_sdk.degrade import degrade, rng_for_name
from lmae_sdk.labels import read_image, read_label
from lmae_sdk.metrics import CompletionMeter
from lmae_sdk.propagation import geodesic_fill, nearest_fill

# (strategy, unknown share): small and large random holes, large blocks, whole objects removed,
# and the bands along class boundaries that coarse polygon annotation leaves, wide and thin
CARD_PROTOCOLS = (("random", 0.3), ("random", 0.5), ("random", 0.7), ("blocks", 0.5), ("objects", 0.5),
                  ("bands", 0.3), ("bands", 0.1))
CARD_MAX_IMAGES = 200


def machine_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def score_protocols(completer, data: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str], lanes: int,
                    seed: int = 0, log: Callable[[str], None] = print,
                    protocols: Sequence[tuple[str, float]] = CARD_PROTOCOLS) -> tuple[list[dict[str, Any]], dict, float]:
    """Per protocol (the card's by default): PA-mIoU of the completer and of both fills; the
    per-class IoU at the headline protocol; the completer's wall seconds per image there
    (``lanes`` lanes)."""
    n = len(class_names)
    rows, per_class, seconds = [], {}, float("nan")
    for strategy, ratio in protocols:
        name = f"{strategy} {ratio:g}"
        partials = [degrade(lab, ratio, strategy, rng_for_name(seed, stem)) for stem, _, lab in data]
        meters = {k: CompletionMeter(n) for k in ("completer", "nearest", "geodesic")}
        t0 = time.perf_counter()
        results = list(completer.complete_batch([(img, p) for (_, img, _), p in zip(data, partials)],
                                                batch_size=4, lanes=lanes, confidence=False))
        secs = (time.perf_counter() - t0) / max(len(data), 1)
        for (_, img, lab), partial, r in zip(data, partials, results):
            meters["completer"].update(r.label, lab, partial)
            meters["nearest"].update(nearest_fill(img, partial), lab, partial)
            meters["geodesic"].update(geodesic_fill(img, partial), lab, partial)
        s = {k: m.summary(class_names) for k, m in meters.items()}
        rows.append({"protocol": name, **{k: round(v["pa_miou"], 2) for k, v in s.items()},
                     "completer_pixel_acc": round(s["completer"]["pa_pixel_acc"], 2)})
        log(f"  {name:<11} completer {s['completer']['pa_miou']:6.2f}  nearest fill {s['nearest']['pa_miou']:6.2f}  "
            f"geodesic fill {s['geodesic']['pa_miou']:6.2f}  ({secs:.3f} s/img)")
        if name == HEADLINE_PROTOCOL:
            seconds = secs
            per_class = {"protocol": name, "classes": {
                c: {"completer": _round(s["completer"]["pa_iou_per_class"][c]),
                    "nearest": _round(s["nearest"]["pa_iou_per_class"][c])} for c in class_names}}
    return rows, per_class, seconds


def load_val_images(root, layout: str = "auto", limit: int = CARD_MAX_IMAGES
                    ) -> tuple[Any, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The dataset's facts and its first ``limit`` val (name, image, label) triples, as the card
    scores them."""
    info = load_dataset(root, ("train", "val"), layout)
    data = [(img_path.stem, read_image(img_path), read_label(lab_path)[0])
            for img_path, lab_path in info.pairs["val"][:limit]]
    return info, data


def load_warm_completer(bundle, data: list[tuple[str, np.ndarray, np.ndarray]]):
    """The bundle as ``lmae complete`` runs it on a CPU (ONNX Runtime, one-thread engines; its
    load warms the host's kernels), run once on two of ``data``'s images so that each graph's
    first run stays outside the clock too."""
    from lmae_sdk.runtime import LMAECompleter

    completer = LMAECompleter.load(bundle, backend="onnxruntime", threads=1)
    list(completer.complete_batch([(img, lab) for _, img, lab in data[:2]], batch_size=2, lanes=1,
                                  confidence=False))
    return completer


def fitted_by() -> dict[str, Any]:
    """The lmae-sdk that fitted the bundle: its version, and its git commit where it runs from a
    checkout (with ``+changes`` when the checkout has uncommitted changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        sdk_version = version("lmae-sdk")
    except PackageNotFoundError:
        sdk_version = None
    root = Path(__file__).resolve().parents[2]
    commit = None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            commit = head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": sdk_version, "commit": commit}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def score_bundle(ctx, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the work folder's bundle and write its card (``ctx``: the stage's context)."""
    opts, work = ctx.options, ctx.work
    info, data = load_val_images(opts.data, opts.layout)
    bundle = work.artifact("export")
    lanes = max(1, ctx.plan["cores"])
    completer = load_warm_completer(bundle, data)
    log(f"scoring {len(data)} val images per hole protocol ({lanes} lane(s) of one-thread ONNX Runtime engines)")
    rows, per_class, seconds = score_protocols(completer, data, info.class_names, lanes, opts.seed, log)
    cfg = completer.cfg
    from lmae_sdk.checkpoint import load_checkpoint  # the calibrated checkpoint: the model's size

    ck = load_checkpoint(work.artifact("calibrate"))
    params = sum(int(np.prod(v.shape)) for v in ck["state_dict"].values())
    rule = ck.get("metrics", {}).get("calibration", {}).get("finishing_rule")
    rule_why = rule["why"] if rule else "no pixel fusion was fitted: the argmax of the model's logits"
    card = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {"name": info.root.name, "root": str(info.root), "layout": info.layout,
                    "classes": info.class_names, "train": len(info.pairs["train"]), "val": len(info.pairs["val"]),
                    "image_size": ctx.facts["image_size"], "known_share": ctx.facts.get("known_share", {}),
                    "boundaries_unknown": ctx.facts.get("boundaries_unknown", {}),
                    "complete_labels": {split: len(v) for split, v in ctx.facts.get("complete_labels", {}).items()}},
        "fitted_by": fitted_by(),
        "model": {"preset": opts.preset, "parameters_m": params / 1e6, "input": list(cfg.img_size),
                  "mask_ratios": completer.mask_ratios, "finishing_rule": completer.settings.finishing_rule,
                  "finishing_rule_why": rule_why, "unknown_threshold": completer.settings.unknown_threshold},
        "fit": {"budget_min": opts.budget_min, "machine": machine_name(), "cores": ctx.plan["cores"],
                "device": ctx.device, "stages": [
                    {"name": s["name"], "planned_min": s["minutes"], "minutes": work.spent(s["name"]) or None}
                    for s in ctx.plan["stages"]]},
        "val": {"images": len(data), "seed": opts.seed, "protocols": rows, "per_class_iou": per_class},
        "speed": {"seconds_per_image": seconds,
                  "setting": f"wall time at {HEADLINE_PROTOCOL} holes, {lanes} lane(s) of one-thread ONNX Runtime "
                             f"engines, images in memory, labels only, on {machine_name()}"},
    }
    write_card(bundle, card)
    return {"protocols": rows, "seconds_per_image": seconds}
