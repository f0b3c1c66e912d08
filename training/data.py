"""Training samples: random crop -> resize to model size -> h-flip -> a partial label
(realistic ragged holes) -> the mask plan of the training mix.  Each sample is a pure
function of (seed, epoch, index), so runs are deterministic whatever the worker count."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lmae_sdk.boundaries import flip_boundaries
from lmae_sdk.degrade import degrade
from lmae_sdk.labels import UNKNOWN, InputError, check_label_ids, read_image, read_label
from lmae_sdk.masking import DEFAULT_MIX, DEFAULT_UNKNOWN_THRESHOLD, sample_strategy
from lmae_sdk.model import LMAEConfig
from lmae_sdk.pipeline import ModelInputs, prepare, propagate_for
from lmae_sdk.routing import mask_plan

from .gaps import gap_ends

# how training holes are made (ours): share of each degrade strategy; "none" = the
# paper's setting, where the only unknown region is the masked patches themselves.
# Whole objects at 0.25 (was 0.15): +4.6 val PA-mIoU on whole-object removal at equal
# random-hole quality (benchmarks/HISTORY.md); bands along class boundaries: what coarse
# polygon annotation leaves unlabelled
DEFAULT_HOLE_MIX = {"random": 0.3, "blocks": 0.15, "objects": 0.25, "bands": 0.1, "background": 0.1, "label": 0.1}


def load_pairs(pairs: list, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for img_path, lab_path in pairs:
        img = read_image(img_path)
        lab, _ = read_label(lab_path)
        if img.shape[:2] != lab.shape:
            raise InputError(lab_path, f"label size {lab.shape[::-1]} != image size {img.shape[1::-1]}")
        check_label_ids(lab, num_classes, UNKNOWN, lab_path)
        out.append((img, lab))
    return out


@dataclass
class SampleSpec:
    mask_ratios: tuple[float, ...]  # one K per batch is drawn from these
    holes: str = "mixed"  # mixed | none (paper)
    hole_mix: dict | None = None  # None = DEFAULT_HOLE_MIX
    hole_ratio: tuple[float, float] = (0.2, 0.8)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    label_resize: str = "soft"
    mask_mix: dict | None = None
    threshold: float = DEFAULT_UNKNOWN_THRESHOLD
    background_index: int | None = None
    gaps: bool = False  # each sample also carries its target's gap ends (the gap loss: training.loss.gap_loss)


MIN_HIDDEN_SHARE = 0.1  # of a partial label's known pixels, at least this share is hidden


def _unknown_share(lab: np.ndarray) -> float:
    return float(np.count_nonzero(lab == UNKNOWN)) / max(lab.size, 1)


def _share_of_known(natural: float, total: float) -> float:
    """The share of a label's known pixels to hide so that ``total`` of it is unknown, its
    ``natural`` unknown share included; a partial label hides at least ``MIN_HIDDEN_SHARE`` of
    what it knows, one with no known pixel nothing."""
    if natural >= 1.0:
        return 0.0
    if natural == 0.0:
        return total
    total = max(total, natural + MIN_HIDDEN_SHARE * (1 - natural))
    return (total - natural) / (1 - natural)


def hidden_share(lab: np.ndarray, total: float) -> float:
    """The share of ``lab``'s known pixels to hide so that ``total`` of it is unknown in all
    (a complete label: ``total``; a partial one topped up: :func:`_share_of_known`)."""
    return _share_of_known(_unknown_share(lab), total)


def known_share_to_hide(lab: np.ndarray, unknown_range: tuple[float, float], rng: np.random.Generator) -> float:
    """The share of ``lab``'s known pixels to hide so that its unknown share, natural holes
    included, is drawn uniformly from ``unknown_range`` (raised to the natural share plus
    ``MIN_HIDDEN_SHARE`` of the rest where the label already lacks more).  A complete label
    hides a uniform draw from the range; a label with half its pixels unknown is topped up to
    the same range, so the model meets the unknown shares the runtime will, not half again
    on top of its natural holes."""
    natural = _unknown_share(lab)
    if natural >= 1.0:
        return 0.0  # before the draw: the generator's next numbers stay as they were
    low = max(unknown_range[0], natural + MIN_HIDDEN_SHARE * (1 - natural))
    return _share_of_known(natural, float(rng.uniform(low, max(unknown_range[1], low))))


def with_context(lab: np.ndarray, context: np.ndarray) -> np.ndarray:
    """``lab`` with its unknown pixels taken from ``context`` where that knows them."""
    return np.where(lab == UNKNOWN, context, lab)


def read_contexts(folder: Path, pairs: list, data: list) -> list:
    """Each train label with its unknown pixels taken from ``folder``'s label of the same name
    where that knows them (a missing file: the label as it is)."""
    out = []
    for (_, lab_path), (_, lab) in zip(pairs, data):
        f = folder / f"{Path(lab_path).stem}.png"
        if not f.is_file():
            out.append(lab)
            continue
        context, _ = read_label(f)
        if context.shape != lab.shape:
            raise InputError(f, f"context label size {context.shape[::-1]} != label size {lab.shape[::-1]}")
        out.append(with_context(lab, context))
    return out


def make_sample(img: np.ndarray, lab: np.ndarray, cfg: LMAEConfig, spec: SampleSpec, mask_ratio: float,
                rng: np.random.Generator, boundary: np.ndarray | None = None,
                context: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``boundary``: the image's class-boundary map (2, H, W), cropped and flipped with it
    (models whose step cost has a boundary term).  ``context``: for a partial ``lab``, the
    label the model's input is made from (:func:`with_context`: its unknown pixels filled
    with the pseudo-labels' known pixels), so that the input's known share spans the trained range
    as a complete label's would; the loss still counts only ``lab``'s known pixels, and, with
    ``spec.gaps``, at its unknown pixels the classes their gaps allow (``gap_ends``:
    :func:`training.gaps.gap_ends`)."""
    h, w = lab.shape
    mh, mw = cfg.img_size
    # random crop with the model's aspect ratio, then resize (paper: crop 448 -> 224)
    s = rng.uniform(*spec.crop_scale)
    ch = int(min(h, w * mh / mw) * s)
    cw = int(ch * mw / mh)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img, lab = img[y: y + ch, x: x + cw], lab[y: y + ch, x: x + cw]
    source = lab if context is None else context[y: y + ch, x: x + cw]
    if boundary is not None:
        boundary = boundary[:, y: y + ch, x: x + cw].astype(np.float32)
    if rng.random() < 0.5:
        img, lab, source = img[:, ::-1], lab[:, ::-1], source[:, ::-1]
        boundary = None if boundary is None else flip_boundaries(boundary)
    img, lab, source = np.ascontiguousarray(img), np.ascontiguousarray(lab), np.ascontiguousarray(source)
    if spec.holes == "mixed":
        mix = spec.hole_mix or DEFAULT_HOLE_MIX
        kinds = list(mix)
        p = np.asarray([mix[k] for k in kinds], np.float64)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        patch = int(rng.choice([12, 16, 24, 32, 48, 64]) * ch / h)
        partial = degrade(source, known_share_to_hide(source, spec.hole_ratio, rng), kind, rng, patch=max(patch, 4),
                          background_index=spec.background_index)
    else:
        partial = source
    inputs = prepare(img, partial, cfg, spec.label_resize, boundary=boundary)
    plan = mask_plan(inputs, cfg, mask_ratio, sample_strategy(rng, spec.mask_mix or DEFAULT_MIX), spec.threshold,
                 spec.background_index, rng)
    target = cv2.resize(lab, (mw, mh), interpolation=cv2.INTER_NEAREST)
    hole = cv2.resize((partial == UNKNOWN).astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST) > 0
    # the loss counts pixels to complete: unknown ones and every pixel of a masked patch
    masked = np.kron(plan.masked_grid(cfg.grid)[0], np.ones((cfg.patch_size,) * 2, bool))
    sample = {"image": inputs.image, "label_planes": inputs.label_planes, "target": target.astype(np.int64),
              "complete": (hole | masked), "ids_keep": plan.ids_keep[0], "ids_mask": plan.ids_mask[0],
              "ids_restore": plan.ids_restore[0]}
    if spec.gaps:
        sample["gap_ends"] = gap_ends(target)
    if inputs.prior is not None:
        sample["prior"] = inputs.prior
    return sample


class CompletionTrainSet(Dataset):
    """Index i of epoch e: a fresh crop/degrade/mask, seeded by (seed, epoch, i).

    All samples of one batch share a mask ratio (static K), so the ratio is drawn per
    batch index: ``batch_size`` consecutive indices use the same ratio."""

    def __init__(self, data: list[tuple[np.ndarray, np.ndarray]], cfg: LMAEConfig, spec: SampleSpec,
                 batch_size: int, seed: int = 0, world_size: int = 1,
                 boundary_maps: list[np.ndarray] | None = None, contexts: list[np.ndarray] | None = None) -> None:
        self.data, self.cfg, self.spec, self.seed = data, cfg, spec, seed
        self.boundary_maps = boundary_maps  # per image (2, H, W), for a step cost with a boundary term
        self.contexts = contexts  # per image, the label its inputs are made from (make_sample's context)
        # DistributedSampler (no shuffle) hands rank r the indices r, r + world, ...: a
        # block of batch_size * world consecutive indices makes one batch on every rank
        self.block = batch_size * world_size
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        batch_rng = np.random.default_rng([self.seed, self.epoch, i // self.block, 7])
        ratio = float(batch_rng.choice(self.spec.mask_ratios))
        order = np.random.default_rng([self.seed, self.epoch, 11]).permutation(len(self.data))
        k = int(order[i])
        img, lab = self.data[k]
        return make_sample(img, lab, self.cfg, self.spec, ratio, rng,
                           None if self.boundary_maps is None else self.boundary_maps[k],
                           None if self.contexts is None else self.contexts[k])


def collate(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    k = {it["ids_keep"].shape[0] for it in items}
    if len(k) != 1:  # different K in one batch cannot happen with per-batch ratios
        raise RuntimeError(f"mixed K in one batch: {k}")
    return {key: torch.from_numpy(np.stack([it[key] for it in items])) for key in items[0]}


def train_loader(trainset: CompletionTrainSet, batch_size: int, workers: int, world: int = 1, rank: int | None = None
                 ) -> tuple[DataLoader, DistributedSampler | None]:
    """The training batches, each of one mask ratio (one K), and under DDP the sampler (call
    its ``set_epoch``).  Rank r takes the dataset's indices r, r + world, ... (no shuffle: the
    dataset maps each index to another image every epoch), so its batch j lies in the ratio block j of
    ``CompletionTrainSet``.  The sampler drops the last ``len % world`` indices rather than pad
    with the first ones, which belong to block 0 and would put two K in the last batch."""
    sampler = (DistributedSampler(trainset, num_replicas=world, rank=rank, shuffle=False, drop_last=True)
               if world > 1 else None)
    loader = DataLoader(trainset, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate,
                        num_workers=workers, drop_last=True, persistent_workers=False)
    return loader, sampler


class ValSet:
    """Fixed partial labels for validation: full-resolution GT, partial and model inputs."""

    def __init__(self, data: list[tuple[np.ndarray, np.ndarray]], cfg: LMAEConfig, strategy: str, ratio: float,
                 label_resize: str, seed: int = 0, patch: int = 32, background_index: int | None = None,
                 class_costs: bool = False, boundary_maps: list[np.ndarray] | None = None) -> None:
        self.items = []
        for i, (img, lab) in enumerate(data):
            bmap = None if boundary_maps is None else boundary_maps[i].astype(np.float32)
            partial = degrade(lab, ratio, strategy, np.random.default_rng([seed, i]), patch=patch,
                              background_index=background_index)
            # for the prior and (class_costs) pixel fusion
            propagated = propagate_for(cfg, partial, img, class_costs=class_costs, boundary=bmap)
            self.items.append((lab, partial, prepare(img, partial, cfg, label_resize, propagated=propagated),
                               propagated))
        self.strategy, self.ratio = strategy, ratio

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int):
        for s in range(0, len(self.items), batch_size):
            chunk = self.items[s: s + batch_size]
            yield ([c[0] for c in chunk], [c[1] for c in chunk], ModelInputs.stack([c[2] for c in chunk]),
                   [c[3] for c in chunk])
