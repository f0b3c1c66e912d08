"""Class-weighted cross-entropy on the pixels to complete (paper eq. 10-12), and on a partial
label's own unknown pixels the classes their gaps allow (:mod:`training.gaps`)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lmae_sdk.labels import UNKNOWN


def class_frequencies(labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.float64)
    for lab in labels:
        counts += np.bincount(lab[lab != UNKNOWN].ravel(), minlength=256)[:num_classes]
    return counts / max(counts.sum(), 1)


def class_weights(freq: np.ndarray, c: float = 1.02) -> np.ndarray:
    """w_k = 1 / ln(c + f_k), normalised to mean 1: rare classes (poles, signs) weigh
    up to ~15x the sky and road.  Our reading of the paper's class weighting."""
    w = 1.0 / np.log(c + freq)
    return (w / w.mean()).astype(np.float32)


def completion_loss(logits: torch.Tensor, target: torch.Tensor, complete: torch.Tensor,
                    class_weight: torch.Tensor | None, visible_weight: float = 0.1) -> torch.Tensor:
    """logits (B,N,H,W), target (B,H,W) int64 with 255 void, complete (B,H,W) bool.

    Pixels to complete weigh 1, the other (visible, known) pixels ``visible_weight``;
    void pixels are ignored.  Normalised by the total weight, so the scale does not
    depend on how much is masked."""
    ce = F.cross_entropy(logits, target, weight=class_weight, ignore_index=UNKNOWN, reduction="none")  # (B,H,W)
    pix_w = torch.where(complete, 1.0, visible_weight)
    valid = target != UNKNOWN
    cw = class_weight[target.clamp(max=logits.shape[1] - 1)] if class_weight is not None else torch.ones_like(ce)
    denom = (pix_w * cw * valid).sum().clamp(min=1e-6)
    return (ce * pix_w).sum() / denom


def gap_candidates(ends: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ends (B, 4, H, W) int64 (:func:`training.gaps.gap_ends`, ``UNKNOWN`` = open) -> (B, N, H, W)
    bool: the classes a gap pixel can have, the pair along its row and / or its column (both
    where both are closed: the classes in both pairs).  All False where nothing is known
    (no closed gap, or the row's and the column's pairs share no class: a hidden object)."""
    classes = torch.arange(num_classes, device=ends.device).view(1, -1, 1, 1)
    row = (ends[:, 0:1] == classes) | (ends[:, 1:2] == classes)  # (B, N, H, W)
    column = (ends[:, 2:3] == classes) | (ends[:, 3:4] == classes)
    both = (ends[:, 0:1] < num_classes) & (ends[:, 2:3] < num_classes)  # the row's and the column's gap closed
    return torch.where(both, row & column, row | column)


def gap_loss(logits: torch.Tensor, target: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Mean ``-log p(candidate set)`` over the target's unknown pixels that have one
    (:func:`gap_candidates`): the model puts the pixel into one of its gap's end classes
    without being told which (a partial-label loss)."""
    sets = gap_candidates(ends, logits.shape[1]) & (target == UNKNOWN).unsqueeze(1)
    has = sets.any(1)  # (B, H, W)
    if not has.any():
        return logits.sum() * 0
    at = logits.permute(0, 2, 3, 1)[has]  # (P, N): only the pixels with a set
    in_set = torch.logsumexp(at.masked_fill(~sets.permute(0, 2, 3, 1)[has], float("-inf")), 1)
    return (torch.logsumexp(at, 1) - in_set).mean()


def training_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], class_weight: torch.Tensor | None,
                  visible_weight: float, gap_weight: float) -> torch.Tensor:
    """The model's training loss on a collated batch (:mod:`training.data`):
    :func:`completion_loss` at the known pixels plus ``gap_weight`` times :func:`gap_loss` at
    the unknown ones."""
    logits = logits.float()
    loss = completion_loss(logits, batch["target"], batch["complete"], class_weight, visible_weight)
    if gap_weight:
        loss = loss + gap_weight * gap_loss(logits, batch["target"], batch["gap_ends"].long())
    return loss
