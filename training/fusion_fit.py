"""Fit pixel fusion (``lmae_sdk.fusion``) for a trained checkpoint and store it in it.

The checkpoint's model completes partial labels made from a split's full labels (by
default train: the model is no better on its own training images than on val, so the
fit does not learn to over-trust it, and val stays untouched for ``lmae calibrate`` and
the benchmarks), the way the runtime would (routing, engines); pixels are sampled from
the holes; the fusion MLP is fitted with class-weighted cross-entropy.  Each image gets
one kind of hole, cycling through ``settings``, so one fusion serves them all.  A
checkpoint with a boundary net gets the hole features too (format 2): they tell the
fusion which kind of hole a pixel is in.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from lmae_sdk.boundaries import boundaries_from_checkpoint
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lmae_sdk.degrade import class_extents, degrade
from lmae_sdk.fusion import FEATURES_BY_VERSION, FUSION_FEATURES, PixelFusion, features_at, hole_log_probs
from lmae_sdk.labels import UNKNOWN
from lmae_sdk.pipeline import ModelInputs, prepare, propagate_for

from .calibrate import runtime_logits
from .data import hidden_share, load_pairs, read_contexts
from lmae_sdk.datasets import load_dataset

# every kind of hole the card scores, with boundary bands at two widths: coarse polygon annotation
# leaves bands a few pixels wide as well as wide ones, and in thin bands nearest-label fill is
# nearly right, which the fusion only learns to trust if it sees such bands
DEFAULT_FIT_SETTINGS = (("random", 0.5), ("objects", 0.5), ("blocks", 0.5), ("random", 0.3), ("bands", 0.3),
                        ("random", 0.7), ("bands", 0.1))


class FusionMLP(torch.nn.Module):
    """The torch twin of :class:`PixelFusion` (fitted here, exported as plain lists)."""

    def __init__(self, num_classes: int, hidden: int, features: tuple[str, ...] = FUSION_FEATURES) -> None:
        super().__init__()
        self.features = features
        f = len(features)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(f, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        self.class_bias = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (M, N, F) -> (M, N)
        return self.mlp(feats)[..., 0] + self.class_bias

    def to_fusion(self, info: dict) -> PixelFusion:
        linears = [m for m in self.mlp if isinstance(m, torch.nn.Linear)]
        return PixelFusion([(m.weight.detach().T.numpy(), m.bias.detach().numpy()) for m in linears],
                           self.class_bias.detach().numpy(), info, features=self.features)


def learns_from_context(index: int, every_image: bool) -> bool:
    """Whether train image ``index`` of a partial split with pseudo-labels learns from its
    filled label (:func:`fusion_input`): every image, or with ``every_image`` False (a split
    whose class boundaries are mostly unknown, which the fit learns from its gaps) every other
    one.  Holes made in a partial label as it is fall among the label's own, and the runtime
    meets such emptier surroundings less often than complete ones; but the filled labels of a
    boundary-unknown split place every boundary where the model guessed it, and learning from
    them alone loses on thin bands along the boundaries (benchmarks/RESULTS.md)."""
    return every_image or index % 2 == 1


def fusion_input(label: np.ndarray, context: np.ndarray | None, strategy: str, ratio: float,
                 rng: np.random.Generator, background_index: int | None) -> np.ndarray:
    """The partial label the fusion learns from: holes of kind ``strategy`` made in the label
    as it is or, given the pseudo-labels of a partial label (``context``: its unknown pixels
    filled where the model was sure), in that label made complete, the pixels still unknown
    given the nearest known pixel's class (:func:`lmae_sdk.degrade.class_extents`), with
    ``ratio`` of it hidden: inputs as complete labels with holes are at the runtime.  The true
    class stays the label's own."""
    if context is None or context is label:
        return degrade(label, ratio, strategy, rng, background_index=background_index)
    filled = class_extents(context)  # complete, unless the context knows no pixel at all
    return degrade(filled, hidden_share(filled, ratio), strategy, rng, background_index=background_index)


def collect_pixels(ckpt: dict, data: str | Path, split: str, settings, images: int, per_image: int, seed: int,
                   features: tuple[str, ...] = FUSION_FEATURES, deadline: float | None = None,
                   log=print, context: str | Path | None = None,
                   context_every_image: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(features (P, N, F), true class (P,), images read) of pixels sampled from the holes;
    ``deadline`` (a ``time.time()``): no chunk of images starts after it, the first excepted.
    ``context``: for partial labels, a folder of labels of the same names (the fit's
    pseudo-labels): see :func:`fusion_input`; ``context_every_image``: see
    :func:`learns_from_context`.  The true class is always the label's own."""
    model = model_from_checkpoint(ckpt)
    cfg = model.cfg
    boundaries = boundaries_from_checkpoint(ckpt)
    info = load_dataset(data, (split,))
    pairs = info.pairs[split][: images or None]
    ratios = [float(r) for r in ckpt["mask_ratios"]]
    bg = ckpt.get("background_index")
    th = float(ckpt["unknown_threshold"])
    rng = np.random.default_rng(seed)
    feats, targets = [], []
    t0 = time.time()
    read = 0
    for start in range(0, len(pairs), 16):
        if deadline is not None and start > 0 and time.time() >= deadline:
            log(f"  the collection's time share ends after {start} images")
            break
        chunk = load_pairs(pairs[start: start + 16], cfg.num_classes)
        read += len(chunk)
        contexts: list = [None] * len(chunk)
        if context is not None:  # the pseudo-labels of the images that learn from them
            use = [k for k in range(len(chunk)) if learns_from_context(start + k, context_every_image)]
            for k, filled in zip(use, read_contexts(Path(context), [pairs[start + k] for k in use],
                                                    [chunk[k] for k in use])):
                contexts[k] = filled
        parts, props, inputs = [], [], []
        for i, ((img, lab), filled) in enumerate(zip(chunk, contexts), start):
            strategy, ratio = settings[i % len(settings)]
            partial = fusion_input(lab, filled, strategy, ratio, np.random.default_rng([seed, i]), bg)
            prop = propagate_for(cfg, partial, img, class_costs=True,
                                 boundary=None if boundaries is None else boundaries(img))
            parts.append(partial)
            props.append(prop)
            inputs.append(prepare(img, partial, cfg, ckpt["label_resize"], propagated=prop))
        logits = runtime_logits(model, ModelInputs.stack(inputs), ratios, th, bg)
        for (_, lab), partial, prop, lg in zip(chunk, parts, props, logits):
            if prop.class_costs is None:  # nothing known: no fusion decision to learn
                continue
            idx = np.flatnonzero(partial.reshape(-1) == UNKNOWN)
            truth = lab.reshape(-1)[idx]
            keep = np.flatnonzero(truth < cfg.num_classes)  # void pixels teach nothing
            pick = rng.choice(keep, min(per_image, keep.size), replace=False)
            at = idx[pick]  # features of the sampled pixels only
            feats.append(features_at(hole_log_probs(lg, partial.shape, at), partial, prop.class_costs, at,
                                     boundary=prop.boundary, features=features))
            targets.append(truth[pick].astype(np.int64))
        log(f"  {min(start + 16, len(pairs))}/{len(pairs)} images ({time.time() - t0:.0f} s)")
    if not feats:
        raise ValueError(f"{data}: no hole pixel with a known class in the {split} images sampled")
    return np.concatenate(feats), np.concatenate(targets), read


def fit_fusion(ckpt_path: str | Path, data: str | Path, out: str | Path | None = None, split: str = "train",
               settings=DEFAULT_FIT_SETTINGS, images: int = 0, per_image: int = 6000, hidden: int = 64,
               steps: int = 4000, class_weight_power: float = 0.25, seed: int = 0, threads: int = 0,
               hole_features: bool | None = None, minutes: float = 0.0, collect_minutes: float = 0.0,
               log=print, context_labels: str | Path | None = None, context_every_image: bool = True) -> dict:
    """Fit pixel fusion on ``split`` and store it in the checkpoint (``out``, default in place).

    ``hole_features`` (default: when the checkpoint has a boundary net) adds the features of
    the pixel's hole, the straight-line votes for thin structures and nearest-label fill's
    decision (format 4, :data:`lmae_sdk.fusion.HOLE_FEATURES`, :data:`lmae_sdk.fusion.LINE_FEATURES`,
    :data:`lmae_sdk.fusion.NEAREST_FEATURES`); without them the fusion reads the six per-class
    features (format 1).

    ``hidden`` 64: against 32, a lower fit loss and, on CamVid val, +0.7 PA-mIoU on boundary
    bands; each MLP step and each fused pixel costs more (benchmarks/HISTORY.md).

    Class weights are (total / count) ** ``class_weight_power``: at 0.25 rare classes count
    more, but not so much that the fusion paints them over common ones (full inverse
    frequency, power 1, did that and lost points on random holes in a one-off probe).

    ``minutes`` (0 = no limit): the MLP trains until ``steps`` or until that many minutes
    after the call started, its learning rate decaying to 0 by whichever comes first.
    ``collect_minutes`` (0 = no limit): sampling pixels starts no new chunk of 16 images after
    that many minutes, so a loaded machine samples fewer images instead of eating the MLP's time.
    ``context_labels``: a folder of pseudo-labels for partial train labels (:func:`fusion_input`),
    which every image learns from or, with ``context_every_image`` False, every other one
    (:func:`learns_from_context`).
    """
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ck = load_checkpoint(ckpt_path)
    n = int(ck["config"]["num_classes"])
    if hole_features is None:
        hole_features = bool(ck.get("boundary_net"))
    elif hole_features and not ck.get("boundary_net"):
        raise ValueError(f"{ckpt_path}: hole features need a boundary net (lmae fit-boundaries)")
    features = FEATURES_BY_VERSION[4 if hole_features else 1]
    log(f"collecting hole pixels from {split} ({', '.join(f'{s}:{r:g}' for s, r in settings)}; "
        f"{len(features)} features)")
    x, y, read = collect_pixels(ck, data, split, settings, images, per_image, seed, features,
                                started + 60 * collect_minutes if collect_minutes else None, log, context_labels,
                                context_every_image)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    counts = torch.bincount(y, minlength=n).double() + 1
    weight = ((counts.sum() / counts) ** class_weight_power).float()
    weight = weight / weight.mean()
    net = FusionMLP(n, hidden, features)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    deadline = started + 60 * minutes if minutes else None
    t_mlp, done = time.time(), 0
    for step in range(steps):
        progress = step / steps
        if deadline is not None:
            if time.time() >= deadline:
                log(f"  the {minutes:g}-min limit ends the fit at step {step}")
                break
            progress = max(progress, (time.time() - t_mlp) / max(deadline - t_mlp, 1e-3))
        for g in opt.param_groups:  # cosine to 0 over the steps or the time, whichever ends first
            g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        idx = torch.randint(0, len(y), (8192,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if step % 500 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.4f}")
    with torch.no_grad():  # in chunks: the MLP's activations over millions of pixels take gigabytes
        loss_sum = correct = 0.0
        for start in range(0, len(y), 65536):
            xb, yb = x[start: start + 65536], y[start: start + 65536]
            logits = net(xb)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, yb, weight=weight, reduction="sum"))
            correct += float((logits.argmax(1) == yb).sum())
        full_loss = loss_sum / float(weight[y].sum())
        acc = correct / len(y)
    info = {"split": split, "settings": [f"{s}:{r:g}" for s, r in settings], "images": read, "pixels": int(len(y)),
            "features": list(features), "hidden": hidden, "steps": done,
            "class_weight_power": class_weight_power, "context_labels": bool(context_labels),
            "context_every_image": bool(context_labels) and context_every_image,
            "seed": seed, "fit_loss": full_loss, "fit_pixel_acc": acc}
    ck["fusion"] = net.to_fusion(info).to_dict()
    for retired in ("near_copy_px", "near_copy_min_prob"):  # the finishing rule fusion replaced
        ck.pop(retired, None)
    target = Path(out) if out else Path(ckpt_path)
    save_checkpoint(ck, target)
    log(f"pixel fusion fitted on {len(y)} {split} hole pixels: loss {full_loss:.4f}, pixel acc {100 * acc:.2f}% "
        f"-> {target}")
    return info
