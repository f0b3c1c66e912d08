"""Class-weighted cross-entropy on the pixels to complete (paper eq. 10-12)."""
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
