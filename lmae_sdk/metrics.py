"""Pooled confusion matrices, PA-mIoU (completed pixels only) and global mIoU."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import UNKNOWN


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, where: np.ndarray | None = None,
              void: int = UNKNOWN) -> np.ndarray:
    """(N, N) counts, rows = ground truth, cols = prediction; GT void excluded."""
    valid = gt != void
    if where is not None:
        valid &= where
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.max() >= num_classes or p.max() >= num_classes):
        raise ValueError("class id >= num_classes in confusion()")
    return np.bincount(g * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both GT and prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")


@dataclass
class CompletionMeter:
    """Pools confusions over a split: PA (unknown pixels of the partial label) and global.
    :meth:`empty_reason` says why PA-mIoU is undefined, when it is."""

    num_classes: int
    pa: np.ndarray = field(init=False)
    glob: np.ndarray = field(init=False)
    images: int = field(init=False, default=0)
    holes: int = field(init=False, default=0)  # unknown pixels of the partial labels

    def __post_init__(self) -> None:
        self.pa = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.glob = np.zeros_like(self.pa)

    def update(self, completed: np.ndarray, gt: np.ndarray, partial: np.ndarray, unknown: int = UNKNOWN) -> None:
        hole = partial == unknown
        self.images += 1
        self.holes += int(np.count_nonzero(hole))
        self.pa += self._confusion(completed, gt, hole, unknown)
        self.glob += self._confusion(completed, gt, None, unknown)

    def empty_reason(self) -> str | None:
        """Why there is no PA score (PA-mIoU would be NaN), or None when there is one.  With a
        PA score there is a global one too (a scored hole is a scored pixel)."""
        if self.images == 0:
            return "no images scored"
        if self.holes == 0:
            return "no unknown pixels in the partial labels: nothing was completed, so PA-mIoU is undefined"
        if not self.pa.any():
            return (f"the ground truth is void ({UNKNOWN}) at every unknown pixel of the partial labels "
                    f"({self.holes} pixels): no completed pixel can be scored, so PA-mIoU is undefined")
        return None

    def _confusion(self, completed: np.ndarray, gt: np.ndarray, where: np.ndarray | None, unknown: int) -> np.ndarray:
        # a pixel left unknown (min_confidence) counts as a miss, never silently skipped
        left = completed == unknown
        conf = confusion(np.where(left, 0, completed), gt, self.num_classes,
                         where=~left if where is None else (where & ~left))
        missed = left & (gt != UNKNOWN) if where is None else left & where & (gt != UNKNOWN)
        if missed.any():  # the GT row grows, no diagonal entry does
            g = gt[missed].astype(np.int64)
            np.add.at(conf, (g, (g + 1) % self.num_classes), 1)
        return conf

    def summary(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(self.num_classes)]
        pa_iou = iou_per_class(self.pa)
        return {
            "pa_miou": 100 * mean_iou(self.pa),
            "pa_pixel_acc": 100 * pixel_accuracy(self.pa),
            "global_miou": 100 * mean_iou(self.glob),
            "global_pixel_acc": 100 * pixel_accuracy(self.glob),
            "pa_iou_per_class": {n: (None if np.isnan(v) else 100 * float(v)) for n, v in zip(names, pa_iou)},
            "pa_confusion": self.pa.tolist(),
        }
