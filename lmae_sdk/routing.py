"""Routing, step 2 of the pipeline: which engine (mask ratio) completes an image, which
patches it masks (its mask plan), and when one pass is not enough.

Rule (at model size, with the bundle's ``unknown_threshold``):

* ``n_must`` = patches whose unknown share exceeds the threshold; these must be masked
  (completed by the decoder), the other patches stay visible with their pixel holes;
* the engine is the one with the **smallest** mask ratio whose masked-patch count
  ``round(m * L)`` is >= ``n_must``; its plan masks the needing-completion patches first
  and tops up Background-First (:func:`mask_plan`);
* when even the largest ratio masks fewer than ``n_must`` patches, the image is completed
  in **passes**: an intermediate pass runs the largest engine on the most-unknown patches,
  its predictions for those patches become known pixels of a working label, and the image
  is routed again.  Only the final pass's logits fill the output (the original known
  pixels are never changed), so no unknown pixel is ever left silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import LMAEConfig
from .labels import UNKNOWN
from .masking import (DEFAULT_UNKNOWN_THRESHOLD, MaskPlan, num_masked, patch_class_share, plan_masks,
                      strategy_scores, unknown_share)
from .pipeline import ModelInputs, argmax_fill


def mask_plan(inputs: ModelInputs, cfg: LMAEConfig, mask_ratio: float, strategy: str = "background_first",
              threshold: float = DEFAULT_UNKNOWN_THRESHOLD, background_index: int | None = None,
              rng: np.random.Generator | None = None, share: np.ndarray | None = None) -> MaskPlan:
    """The patches an engine of ``mask_ratio`` masks: those needing completion first,
    topped up to L - K by ``strategy`` (inference: Background-First; training samples the
    paper's mix).  ``share``: ``patch_class_share(inputs.label_planes, p)`` when the caller
    has it."""
    rng = rng or np.random.default_rng(0)
    if share is None:
        share = patch_class_share(inputs.label_planes, cfg.patch_size)
    scores = strategy_scores(strategy, share, rng, background_index)
    return plan_masks(unknown_share(share), scores, num_masked(cfg.num_patches, mask_ratio), threshold)


@dataclass
class RouteDecision:
    mask_ratio: float  # the engine that runs this pass
    n_must: int  # patches with unknown share > threshold
    plan: MaskPlan  # batch-1 plan for this pass
    final: bool  # False: an intermediate pass (more patches need completion than the engine masks)
    unknown: np.ndarray  # (L,) unknown share per patch

    @property
    def masked(self) -> np.ndarray:
        """Row-major patch indices masked in this pass."""
        return self.plan.ids_mask[0]


def choose_ratio(n_must: int, ratios: Sequence[float], num_patches: int) -> float | None:
    """Smallest ratio whose masked count covers ``n_must``; None when none does."""
    for m in sorted(ratios):
        if num_masked(num_patches, m) >= n_must:
            return float(m)
    return None


def route_image(inputs: ModelInputs, cfg: LMAEConfig, ratios: Sequence[float], threshold: float,
                background_index: int | None = None, force_final: bool = False) -> RouteDecision:
    if not ratios:
        raise ValueError("no engines to route to")
    L = cfg.num_patches
    share = patch_class_share(inputs.label_planes, cfg.patch_size)
    unk = unknown_share(share)
    n_must = int((unk > threshold).sum())
    m = choose_ratio(n_must, ratios, L)
    final = m is not None
    if m is None:
        m = float(max(ratios))
        if num_masked(L, m) == 0:
            raise ValueError(f"the largest mask ratio {m} masks no patch of L={L}: cannot complete")
        final = force_final
    # plan_masks puts the must-patches first, most unknown first: an intermediate pass
    # therefore masks the most-unknown patches
    plan = mask_plan(inputs, cfg, m, "background_first", threshold, background_index, share=share)
    return RouteDecision(m, n_must, plan, final, unk)


def patch_region(cfg: LMAEConfig, patch_ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool at input size covering the given model patches (rounded outwards by a
    pixel so that, once filled, those patches read as fully known at model size)."""
    H, W = shape
    h, w = cfg.img_size
    p = cfg.patch_size
    gw = cfg.grid[1]
    sy, sx = H / h, W / w
    out = np.zeros((H, W), bool)
    for pid in np.asarray(patch_ids).ravel():
        gy, gx = divmod(int(pid), gw)
        y0 = max(0, int(math.floor(gy * p * sy)) - 1)
        y1 = min(H, int(math.ceil((gy + 1) * p * sy)) + 1)
        x0 = max(0, int(math.floor(gx * p * sx)) - 1)
        x1 = min(W, int(math.ceil((gx + 1) * p * sx)) + 1)
        out[y0:y1, x0:x1] = True
    return out


def apply_pass(working: np.ndarray, logits: np.ndarray, decision: RouteDecision, cfg: LMAEConfig,
               unknown: int = UNKNOWN) -> np.ndarray:
    """An intermediate pass's predictions for its masked patches become known pixels of
    the working label (a new array; known pixels are kept)."""
    pred = argmax_fill(logits, working, unknown)
    region = patch_region(cfg, decision.masked, working.shape) & (working == unknown)
    out = working.copy()
    out[region] = pred[region]
    return out
