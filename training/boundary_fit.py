"""Fit a class-boundary net (``lmae_sdk.boundaries``) on a split's labels and store it in a
checkpoint, with the step-cost weights tuned on that split.

The net learns, per pixel, whether the right / lower neighbour has another class (BCE on
batches of four random crops, boundaries weighted up: they are ~5% of pixel pairs; on
partial labels also from the gaps between known pixels of two classes,
:mod:`training.boundary_loss`).  The
weights and the power of the step cost ``1 + colour_weight * |colour change| + boundary_weight *
p(boundary) ** power`` are then chosen by the geodesic fill's PA-mIoU on the split's first
images at 50% random holes (train by default: val stays for calibrate and the benchmarks).  The model's prior changes
with them, so the checkpoint's pixel fusion is dropped (refit it: ``lmae fit-fusion``), and
the model is best fine-tuned on the new prior (``lmae train --init-from``).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

from lmae_sdk.boundaries import BoundaryNet, BoundarySpec, TorchBoundaries
from lmae_sdk.checkpoint import load_checkpoint, load_state, save_checkpoint
from lmae_sdk.datasets import load_dataset
from lmae_sdk.degrade import degrade
from lmae_sdk.metrics import CompletionMeter
from lmae_sdk.planes import normalize_image
from lmae_sdk.propagation import geodesic_nearest

from .amp import check_bf16_autocast, native_bf16
from .boundary_loss import BoundaryTargets, boundary_loss
from .data import load_pairs

# (colour weight, boundary weight, boundary power); squaring the map (power 2) lets paths through
# where the net is unsure: +0.8 PA-mIoU of the fill on CamVid train (benchmarks/RESULTS.md, section 2)
# The colour-only step costs (boundary weight 0) compete too: a net that does not help (too
# short a fit, an unfamiliar domain) is then left out of the step cost.
DEFAULT_WEIGHT_GRID = tuple((cw, bw, power) for power in (1.0, 2.0) for cw in (300.0, 1000.0)
                            for bw in (1000.0, 3000.0, 10000.0)) + ((300.0, 0.0, 1.0), (1000.0, 0.0, 1.0))


RESUME_SAVE_EVERY_S = 60.0  # how often fit_boundaries(resume_path=...) saves its training state


def _crop(img: np.ndarray, lab: np.ndarray, crop: int, rng: np.random.Generator, augment: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """A random crop (at most the image), flipped left-right half the time.  ``augment``:
    first rescale by a random factor in [0.7, 1.4] (labels nearest) and jitter brightness,
    contrast and saturation by up to 25% (tried against the overfitting of a longer fit; on
    CamVid it scored 0.1-0.6 below the plain net: benchmarks/HISTORY.md)."""
    ch, cw = min(crop, lab.shape[0]) // 2 * 2, min(crop, lab.shape[1]) // 2 * 2  # one size for every crop
    if augment:
        smallest = max(ch / lab.shape[0], cw / lab.shape[1])  # the rescaled image still holds the crop
        scale = max(float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)))), smallest)
        size = (max(cw, round(lab.shape[1] * scale)), max(ch, round(lab.shape[0] * scale)))  # (w, h) for cv2
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
    y, x = rng.integers(0, lab.shape[0] - ch + 1), rng.integers(0, lab.shape[1] - cw + 1)
    img, lab = img[y:y + ch, x:x + cw], lab[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if augment:
        img = _jitter_colour(img, rng)
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def _jitter_colour(img: np.ndarray, rng: np.random.Generator, strength: float = 0.25) -> np.ndarray:
    """RGB uint8 with brightness, contrast and saturation each scaled by 1 +- ``strength``."""
    x = img.astype(np.float32)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (h, w)
    saturation, contrast, brightness = 1 + rng.uniform(-strength, strength, 3)
    x = grey[..., None] + saturation * (x - grey[..., None])
    x = grey.mean() + contrast * (x - grey.mean())
    return np.clip(x * brightness, 0, 255).astype(np.uint8)


def fill_score(pairs: list, partials: list, maps: list, colour_weight: float, boundary_weight: float, blur: float,
               num_classes: int, boundary_power: float = 1.0, rounds: int = 2) -> float:
    """PA-mIoU of the geodesic fill with these step-cost weights."""
    meter = CompletionMeter(num_classes)
    for (img, lab), partial, bmap in zip(pairs, partials, maps):
        ids = geodesic_nearest(img, partial, edge_weight=colour_weight, blur_sigma=blur, rounds=rounds, boundary=bmap,
                               boundary_weight=boundary_weight, boundary_power=boundary_power)
        meter.update(ids, lab, partial)
    return float(meter.summary()["pa_miou"])


def tuning_holes(labels: list, seed: int, ratio: float = 0.5, background_index: int | None = None) -> list:
    """The partial labels the step cost is tuned on: ``ratio`` of each label in random 32-px
    holes, the ``i``-th seeded ``[seed, i]``."""
    return [degrade(lab, ratio, "random", np.random.default_rng([seed, i]), patch=32,
                    background_index=background_index) for i, lab in enumerate(labels)]


def score_weight_grid(pairs: list, partials: list, maps: list, weight_grid, blur: float, num_classes: int,
                      log=None) -> dict[tuple[float, float, float], float]:
    """The fill's PA-mIoU for each (colour weight, boundary weight[, power]) of ``weight_grid``,
    keyed by the full triple (power 1 where an entry leaves it out)."""
    scores = {}
    for entry in weight_grid:
        cw, bw, power = (*entry, 1.0)[:3]
        scores[(cw, bw, power)] = fill_score(pairs, partials, maps, cw, bw, blur, num_classes, power)
        if log:
            log(f"  colour weight {cw:g}, boundary weight {bw:g}, power {power:g}: PA-mIoU {scores[(cw, bw, power)]:.2f}")
    return scores


def fit_boundaries(ckpt_path: str | Path, data: str | Path, out: str | Path | None = None, split: str = "train",
                   minutes: float = 40.0, max_steps: int = 0, width: int = 16, crop: int = 256, batch_size: int = 4,
                   lr: float = 3e-3, tune_images: int = 80, weight_grid=DEFAULT_WEIGHT_GRID, seed: int = 0,
                   threads: int = 0, bf16: bool | None = None, continue_net: bool = False, flip_average: bool = False,
                   augment: bool = False, resume_path: str | Path | None = None, gap_weight: float = 0.0,
                   tune_on: list[int] | None = None, log=print) -> dict:
    """Train for ``minutes`` (or ``max_steps``), tune the step cost over ``weight_grid``
    ((colour weight, boundary weight[, boundary power]) each), store both in the checkpoint
    (``out``, default in place).  ``continue_net``: start from the checkpoint's net (same
    width) instead of a fresh one: a second cosine cycle (with ``minutes`` 0: no training,
    only the step cost is tuned again).  ``flip_average``: the
    runtime's map averages the image with its mirror image (twice the net's compute).
    ``augment``: random rescaling and colour jitter of the training crops (:func:`_crop`).
    ``gap_weight``: the weight of the gap bags in the loss (:mod:`training.boundary_loss`; 0: known pairs only).
    ``tune_on``: the indices of the split's images the step cost is tuned on (the first ``tune_images`` of them;
    default: the split's first images), e.g. the complete labels of a split that mixes complete and partial ones.
    ``resume_path``: the training state is saved there every minute (``RESUME_SAVE_EVERY_S``) and a run that finds it
    continues from it (the net, the optimiser, the step, the time spent, the crop sampler)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ck = load_checkpoint(ckpt_path)
    cfg = ck["config"]
    n = int(cfg["num_classes"])
    info = load_dataset(data, (split,))
    pairs = load_pairs(info.pairs[split], n)
    # the net's static size: the split's commonest image size (even); other sizes are resized
    h, w = Counter(lab.shape for _, lab in pairs).most_common(1)[0][0]
    spec = BoundarySpec(width, (h // 2 * 2, w // 2 * 2), flip_average)
    net = BoundaryNet(width)
    previous = ck.get("boundary_net") if continue_net else None
    if continue_net:
        if not previous:
            raise ValueError(f"{ckpt_path}: no boundary net to continue (lmae fit-boundaries without --continue-net)")
        if int(previous["width"]) != width:
            raise ValueError(f"{ckpt_path}: its boundary net has width {previous['width']}, not {width}")
        net.load_state_dict(previous["state_dict"])
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    budget = minutes * 60
    log(f"training a width-{width} boundary net on {len(pairs)} {split} images "
        f"({f'{max_steps} steps' if max_steps else f'{minutes:g} min'}, crops {crop}, batch {batch_size}"
        f"{', scale and colour augmentation' if augment else ''})")
    if bf16 is None:  # bf16 where the CPU has it natively: elsewhere it is emulated, and slower
        bf16 = native_bf16()
    if bf16:  # before the run relies on it: a wrong bf16 kernel would be learned around
        crops = [_crop(*pairs[i % len(pairs)], crop, np.random.default_rng([seed, i])) for i in range(2)]
        probe = torch.from_numpy(np.stack([normalize_image(img, lab.shape) for img, lab in crops]))
        err = check_bf16_autocast(net, lambda: net(probe), "lmae fit-boundaries (bf16)",
                                  loss=lambda logits: logits.float().square().mean())
        log(f"bf16 autocast checked (outputs and gradients): largest layer error {err:.4f} (relative, against "
            f"float32)")
    t0, step, loss_avg = time.time(), 0, None
    if resume_path and Path(resume_path).is_file():
        state = load_state(resume_path)["boundary_train_state"]
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        step, loss_avg, t0 = int(state["step"]), state["loss_avg"], time.time() - float(state["seconds"])
        rng.bit_generator.state = json.loads(state["rng"])
        log(f"resumed from {resume_path} at step {step} ({float(state['seconds']) / 60:.1f} min in)")
    saved_at = time.time()
    while (step < max_steps) if max_steps else (time.time() - t0 < budget):
        progress = step / max_steps if max_steps else (time.time() - t0) / budget
        for g in opt.param_groups:  # cosine over the budget
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))
        batch = [_crop(*pairs[rng.integers(len(pairs))], crop, rng, augment) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([normalize_image(img, lab.shape) for img, lab in batch]))  # crop size: no resize
        targets = BoundaryTargets([lab for _, lab in batch], use_gaps=gap_weight > 0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x).float()
        loss = boundary_loss(logits, targets, gap_weight=gap_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 200 == 0:
            log(f"  step {step} ({time.time() - t0:.0f} s): loss {loss_avg:.4f}")
        if resume_path and time.time() - saved_at >= RESUME_SAVE_EVERY_S:
            save_checkpoint({"boundary_train_state": {
                "net": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "loss_avg": loss_avg,
                "seconds": time.time() - t0, "rng": json.dumps(rng.bit_generator.state)}}, resume_path)
            saved_at = time.time()
    train_s = time.time() - t0
    net.eval()
    boundaries = TorchBoundaries(net, spec)
    tune = [pairs[i] for i in tune_on][:tune_images] if tune_on else pairs[:tune_images]
    partials = tuning_holes([lab for _, lab in tune], seed, background_index=ck.get("background_index"))
    t1 = time.perf_counter()
    maps = [boundaries(img) for img, _ in tune]
    map_s = (time.perf_counter() - t1) / max(len(tune), 1)
    blur = float(cfg.get("geodesic_blur", 2.0))
    colour_only = fill_score(tune, partials, [None] * len(tune), float(cfg.get("geodesic_edge_weight", 100.0)), 0.0,
                             blur, n)
    log(f"{split} ({len(tune)} images, random 0.5) geodesic fill, colour only: PA-mIoU {colour_only:.2f}")
    scores = score_weight_grid(tune, partials, maps, weight_grid, blur, n, log)
    cw, bw, power = max(scores, key=scores.get)
    fit = {"split": split, "steps": step, "train_seconds": round(train_s, 1), "crop": crop, "batch_size": batch_size,
           "final_loss": loss_avg, "seed": seed, "tune_images": len(tune), "fill_colour_only": colour_only,
           "fill_with_boundaries": scores[(cw, bw, power)], "map_seconds_per_image": map_s,
           "tune_on_given": bool(tune_on),  # tuned on the images tune_on named, not the split's first
           "threads": torch.get_num_threads(), "lr": lr, "augment": augment}
    if previous:
        fit["continued_from"] = previous.get("fit", {})
    ck["boundary_net"] = {**spec.to_dict(), "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
                          "fit": fit}
    ck["config"] = {**cfg, "geodesic_edge_weight": cw, "geodesic_boundary_weight": bw,
                    "geodesic_boundary_power": power}
    if ck.pop("fusion", None) is not None:
        log("the prior changed: the checkpoint's pixel fusion is dropped (refit it: lmae fit-fusion)")
    target = Path(out) if out else Path(ckpt_path)
    save_checkpoint(ck, target)
    log(f"boundary net{' (flip-averaged map)' if flip_average else ''}: {step} steps in {train_s / 60:.1f} min; "
        f"fill on {split} {colour_only:.2f} -> {scores[(cw, bw, power)]:.2f} (colour {cw:g}, boundary {bw:g}, "
        f"power {power:g}); map {map_s:.3f} s/img -> {target}")
    return fit
