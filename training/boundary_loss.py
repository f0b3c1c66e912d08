"""The boundary net's loss on partial labels: pixel pairs whose classes are known, plus one
bag per gap of unknown pixels that separates two known classes.

A label with holes along its class boundaries (coarse polygons, ``bands`` holes) has no
known pixel pair across a boundary: the per-pair BCE alone then sees no positive, and the
net learns that there are no boundaries.  But a row that goes from class A, through unknown
pixels, to class B crosses a boundary somewhere in that gap.  Each such gap (along a row for
the right-neighbour plane, along a column for the lower plane) is a bag of pixel pairs of
which at least one is a boundary: a multiple-instance (noisy-OR) loss,
``-log(1 - prod(1 - p_i))``, asks for that without saying where.  Gaps between known pixels
of one class say nothing certain (a thin object may hide there) and are left out.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lmae_sdk.boundary_map import boundary_targets
from lmae_sdk.labels import UNKNOWN

from .gaps import gap_bags


class BoundaryTargets:
    """A batch's targets: per-pair classes (1 / 0 / -1 ignore) and gap bags."""

    def __init__(self, labels: list[np.ndarray], unknown: int = UNKNOWN, use_gaps: bool = True) -> None:
        self.pairs = torch.from_numpy(np.stack([boundary_targets(lab, unknown) for lab in labels]))
        self.bags, self.num_bags = None, 0  # without gaps: no bag
        if not use_gaps:
            return
        bags = []
        for lab in labels:
            b = gap_bags(lab, unknown)
            bags.append(np.where(b >= 0, b + self.num_bags, -1))
            self.num_bags += int(b.max()) + 1 if (b >= 0).any() else 0
        self.bags = torch.from_numpy(np.stack(bags))


def boundary_loss(logits: torch.Tensor, targets: BoundaryTargets, pos_weight: float = 4.0,
                  gap_weight: float = 1.0) -> torch.Tensor:
    """BCE over the known pairs (boundaries weighted ``pos_weight``) plus ``gap_weight`` times
    the mean noisy-OR loss of the gap bags."""
    valid = targets.pairs >= 0
    loss = F.binary_cross_entropy_with_logits(logits[valid], targets.pairs[valid],
                                              pos_weight=torch.tensor(pos_weight)) if valid.any() else logits.sum() * 0
    if targets.num_bags and gap_weight:
        inside = targets.bags >= 0
        # log prod(1 - p_i) per bag; 1 - p = sigmoid(-logit), log of it = -softplus(logit)
        log_none = torch.zeros(targets.num_bags, dtype=logits.dtype).index_add(
            0, targets.bags[inside], -F.softplus(logits[inside]))
        loss = loss + gap_weight * -torch.log(-torch.expm1(log_none.clamp(max=-1e-6))).mean()
    return loss
