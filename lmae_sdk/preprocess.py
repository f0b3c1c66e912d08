"""One completion's host side: inputs at model size, the routing plan, and the
post-processing that fills unknown pixels (known pixels are never changed)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fusion import PixelFusion
from .labels import (UNKNOWN, Propagation, fill_argmax, label_planes, nearest_known, normalize_image, prior_planes,
                     propagate, upsampled_prediction)
from .masking import (DEFAULT_UNKNOWN_THRESHOLD, MaskPlan, num_masked, patch_class_share, plan_masks,
                      strategy_scores, unknown_share)
from .config import LMAEConfig


@dataclass
class ModelInputs:
    image: np.ndarray  # (3, h, w) float32, normalized
    label_planes: np.ndarray  # (N, h, w) float32, unknown = 0
    prior: np.ndarray | None  # (cfg.prior_channels, h, w) float32 or None

    def item(self, j: int) -> "ModelInputs":
        """Image ``j`` of a stacked batch."""
        return ModelInputs(self.image[j], self.label_planes[j], None if self.prior is None else self.prior[j])

    @staticmethod
    def stack(items: list["ModelInputs"]) -> "ModelInputs":
        pri = None if items[0].prior is None else np.stack([i.prior for i in items])
        return ModelInputs(np.stack([i.image for i in items]), np.stack([i.label_planes for i in items]), pri)


def propagate_for(cfg: LMAEConfig, partial: np.ndarray, image: np.ndarray, unknown: int = UNKNOWN,
                  class_costs: bool = False, boundary: np.ndarray | None = None) -> Propagation:
    """The model's label propagation (its prior mode and geodesic parameters) of a whole
    partial label: the prior's input, and what near-copy copies; ``class_costs``: also
    every class's path cost (pixel fusion's input; the same sweeps serve the prior).
    ``boundary``: the image's class-boundary map (2, H, W), needed when the model's step
    cost has a boundary term (``cfg.geodesic_boundary_weight`` > 0)."""
    geodesic = cfg.prior_mode == "geodesic" or class_costs
    if geodesic and cfg.geodesic_boundary_weight > 0 and boundary is None:
        raise ValueError("this model's geodesic step cost needs the image's class-boundary map (its boundary net)")
    return propagate(partial, image, cfg.prior_mode, unknown, cfg.geodesic_edge_weight, cfg.geodesic_blur,
                     cfg.num_classes if class_costs else None, boundary, cfg.geodesic_boundary_weight,
                     cfg.geodesic_boundary_power)


def prepare(image: np.ndarray, partial: np.ndarray, cfg: LMAEConfig, label_resize: str = "soft",
            unknown: int = UNKNOWN, propagated: Propagation | None = None,
            boundary: np.ndarray | None = None) -> ModelInputs:
    """RGB uint8 (H, W, 3) + partial ids (H, W) -> model-size inputs.

    ``propagated``: ``propagate_for(cfg, partial, image)`` when the caller already has it
    (it is the costly part of the prior; near-copy reuses it); else ``boundary`` goes to
    ``propagate_for``.
    """
    size = cfg.img_size
    planes = label_planes(partial, cfg.num_classes, size, label_resize, unknown)
    prior = None
    if cfg.prior:
        if propagated is None:
            propagated = propagate_for(cfg, partial, image, unknown, boundary=boundary)
        prior = prior_planes(partial, cfg.num_classes, size, unknown, propagated=propagated,
                             path_cost_plane=cfg.prior_path_cost)
    return ModelInputs(normalize_image(image, size), planes, prior)


def route(inputs: ModelInputs, cfg: LMAEConfig, mask_ratio: float, strategy: str = "background_first",
          threshold: float = DEFAULT_UNKNOWN_THRESHOLD, background_index: int | None = None,
          rng: np.random.Generator | None = None, share: np.ndarray | None = None) -> MaskPlan:
    """Patches needing completion first, topped up to L - K by ``strategy`` (inference:
    Background-First).  ``share``: ``patch_class_share(inputs.label_planes, p)`` when the
    caller has it."""
    rng = rng or np.random.default_rng(0)
    if share is None:
        share = patch_class_share(inputs.label_planes, cfg.patch_size)
    scores = strategy_scores(strategy, share, rng, background_index)
    return plan_masks(unknown_share(share), scores, num_masked(cfg.num_patches, mask_ratio), threshold)


def finish(logits: np.ndarray, partial: np.ndarray, unknown: int = UNKNOWN, min_confidence: float = 0.0,
           near_copy_px: float = 0.0, propagated: Propagation | None = None,
           near_copy_min_prob: float = 0.0, fusion: PixelFusion | None = None,
           confidence: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-size logits (N, h, w) -> (completed label (H, W) uint8, confidence (H, W)).

    Known pixels keep their label and confidence 1; unknown pixels take the argmax; with
    ``min_confidence`` the unreliable ones stay unknown.  ``near_copy_px`` > 0: hole
    pixels closer than that (input pixels) to a known pixel copy the propagated label
    (``propagated`` from :func:`propagate_for`; default: the nearest known
    label), because at full resolution the copy is sharper than the model's upsampled
    logits there (their confidence is the model's probability of the copied class).
    ``near_copy_min_prob`` > 0 copies only where the model gives the copied class at least
    that probability: the model says which classes can be there, the propagation where their
    boundary runs; a whole removed object, whose class the copy cannot know, stays the
    model's.  ``fusion``: pixel fusion decides instead of the near-copy rule (needs
    ``propagated`` with class costs: ``propagate_for(..., class_costs=True)``).
    ``confidence=False``: the confidence returned is None, unless ``min_confidence`` needs it
    (then it is computed and returned).
    """
    hole = partial == unknown
    out = partial.copy()
    confidence = confidence or min_confidence > 0
    conf = np.ones(partial.shape, np.float32) if confidence else None
    if fusion is not None and hole.any() and not hole.all():
        if propagated is None or propagated.class_costs is None:
            raise ValueError("pixel fusion needs the propagation's class costs (propagate_for(..., class_costs=True))")
        out, conf = fusion.complete(logits, partial, propagated.class_costs, unknown, propagated.boundary)
    elif hole.any():
        forced = None
        if near_copy_px > 0 and not hole.all():
            nearest, dist = propagated[:2] if propagated is not None else nearest_known(partial, unknown)
            forced = np.where(hole & (dist < near_copy_px), nearest, UNKNOWN).astype(np.uint8)
        if not confidence and (forced is None or near_copy_min_prob <= 0):  # labels only
            fill_argmax(logits, hole, out)
            if forced is not None:
                np.copyto(out, forced, where=hole & (forced != UNKNOWN))
        else:
            pred, p = upsampled_prediction(logits, partial.shape, forced, near_copy_min_prob, confidence)
            np.copyto(out, pred, where=hole)  # faster than out[hole] = pred[hole]: no gather
            if confidence:
                np.copyto(conf, p, where=hole)
    if min_confidence > 0:
        out[hole & (conf < min_confidence)] = unknown
    return out, conf if confidence else None
