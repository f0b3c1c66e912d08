"""The completion pipeline, defined once: small pure steps every caller runs in this order.

1. :func:`prepare`: an RGB image and its partial label -> :class:`ModelInputs` at model size
   (normalized image, class planes, prior planes from :func:`propagate_for`);
2. :func:`lmae_sdk.routing.route_image`: which engine (mask ratio) runs the image, and its
   mask plan;
3. :func:`graph_inputs`: the inputs of a batch in the graph contract's names (what every
   backend, the export's parity check and the benchmarks feed the encoder and decoder);
4. :func:`finish`: model-size logits -> the completed label and its confidence, by the
   completer's one finishing rule (pixel fusion when fitted, else the argmax); known pixels
   are never changed.

:class:`CompletionSettings` is what decides the labels besides the model: read from a
checkpoint or a bundle manifest (the same keys), written by ``lmae calibrate``,
``lmae fit-fusion`` and the export.  The runtime (one image's path:
:class:`lmae_sdk.runtime.image_pipeline.ImagePipeline`), calibration, training's validation,
the export's verification and the benchmarks all call these steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import LMAEConfig
from .fusion import FusionError, PixelFusion
from .fusion_rows import RowScorer
from .labels import LABEL_RESIZE_MODES, UNKNOWN
from .planes import label_planes, normalize_image, prior_planes
from .propagation import Propagation, propagate
from .upsampling import fill_argmax, upsampled_prediction
from .masking import DEFAULT_UNKNOWN_THRESHOLD, MaskPlan

REFIT_HINT = "refit its finishing rule with `lmae fit-fusion --ckpt CKPT --data DATA` (then re-export)"


class SettingsError(ValueError):
    """Completion settings that this lmae-sdk cannot use (names the file and what to do)."""


@dataclass
class CompletionSettings:
    """A completer's settings besides the model (checkpoint and manifest keys of the same names).

    ``fusion``: pixel fusion (``lmae fit-fusion``), the finishing rule; None: the argmax of
    the upsampled logits."""

    class_names: list[str]
    palette: list[list[int]] | None = None
    unknown_index: int = UNKNOWN
    label_resize: str = "soft"
    unknown_threshold: float = DEFAULT_UNKNOWN_THRESHOLD
    background_index: int | None = None
    fusion: PixelFusion | None = field(default=None, repr=False)

    KEYS = ("class_names", "palette", "unknown_index", "label_resize", "unknown_threshold", "background_index",
            "fusion")

    def __post_init__(self) -> None:
        if self.label_resize not in LABEL_RESIZE_MODES:
            raise SettingsError(f"label_resize must be one of {LABEL_RESIZE_MODES}, got {self.label_resize!r}")
        if not 0.0 <= float(self.unknown_threshold) <= 1.0:
            raise SettingsError(f"unknown_threshold must be in [0, 1], got {self.unknown_threshold!r}")
        if self.unknown_index < len(self.class_names):
            raise SettingsError(f"unknown index {self.unknown_index} collides with the class ids "
                                f"0..{len(self.class_names) - 1}")
        if self.fusion is not None and self.fusion.num_classes != len(self.class_names):
            raise SettingsError(f"pixel fusion for {self.fusion.num_classes} classes, the model has "
                                f"{len(self.class_names)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def finishing_rule(self) -> str:
        if self.fusion is None:
            return "argmax"
        return "hole-aware pixel fusion" if self.fusion.needs_boundary else "pixel fusion"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> "CompletionSettings":
        """From a checkpoint or a manifest (``source`` names it in errors).  One that still
        relies on a retired finishing rule (near-copy, pixel fusion format 2) is refused
        with what to run to refit it."""
        if not d.get("fusion") and float(d.get("near_copy_px") or 0.0) > 0:
            raise SettingsError(f"{source}: its finishing rule, near-copy ({d['near_copy_px']:g} px), was retired; "
                                f"{REFIT_HINT}")
        try:
            fusion = PixelFusion.from_dict(d["fusion"], source) if d.get("fusion") else None
        except FusionError as e:
            raise SettingsError(f"{e}; {REFIT_HINT}") from None
        try:
            return cls(class_names=list(d["class_names"]), palette=d.get("palette"),
                       unknown_index=int(d.get("unknown_index", UNKNOWN)), label_resize=d.get("label_resize", "soft"),
                       unknown_threshold=float(d.get("unknown_threshold", DEFAULT_UNKNOWN_THRESHOLD)),
                       background_index=d.get("background_index"), fusion=fusion)
        except SettingsError as e:
            raise SettingsError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise SettingsError(f"{source}: malformed completion settings ({type(e).__name__}: {e})") from None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint / manifest keys (fusion as plain lists)."""
        return {"class_names": list(self.class_names), "palette": self.palette,
                "unknown_index": int(self.unknown_index), "label_resize": self.label_resize,
                "unknown_threshold": float(self.unknown_threshold), "background_index": self.background_index,
                "fusion": None if self.fusion is None else self.fusion.to_dict()}


# ------------------------------------------------------------------ 1. prepare
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
    partial label: the prior's input; ``class_costs``: also every class's path cost (pixel
    fusion's input; the same sweeps serve the prior).  ``boundary``: the image's
    class-boundary map (2, H, W), needed when the model's step cost has a boundary term
    (``cfg.geodesic_boundary_weight`` > 0)."""
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
    (it is the costly part of the prior; pixel fusion reuses it); else ``boundary`` goes to
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


# ------------------------------------------------------------------ 3. graph inputs
def graph_inputs(inputs: list[ModelInputs], plans: list[MaskPlan], stacked: bool = True) -> dict[str, Any]:
    """A batch's inputs in the graph contract's names (export/graphs.py): ``image``,
    ``label_planes``, ``prior`` (None for a model without prior planes), ``ids_keep``,
    ``ids_mask``, ``ids_restore`` (int64, stacked).  ``stacked=False`` leaves the
    image-sized inputs as per-image lists (``Backend.run_images``: a CPU runtime calls its
    graphs one image at a time, and stacking copies ~1.7 ms per image)."""
    plan = MaskPlan.stack(plans)
    feed: dict[str, Any] = {"image": [i.image for i in inputs], "label_planes": [i.label_planes for i in inputs],
                            "prior": None if inputs[0].prior is None else [i.prior for i in inputs]}
    if stacked:
        feed = {k: None if v is None else np.stack(v).astype(np.float32, copy=False) for k, v in feed.items()}
    feed.update(ids_keep=plan.ids_keep.astype(np.int64, copy=False), ids_mask=plan.ids_mask.astype(np.int64, copy=False),
                ids_restore=plan.ids_restore.astype(np.int64, copy=False))
    return feed


# ------------------------------------------------------------------ 4. finish
def finish(logits: np.ndarray, partial: np.ndarray, settings: CompletionSettings,
           propagated: Propagation | None = None, min_confidence: float = 0.0,
           confidence: bool = True, scorer: RowScorer | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-size logits (N, h, w) -> (completed label (H, W) uint8, confidence (H, W)).

    Known pixels keep their label and confidence 1.  Unknown pixels: ``settings.fusion``
    decides (needs ``propagated`` with class costs: ``propagate_for(..., class_costs=True)``),
    else the argmax of the upsampled logits, confidence its softmax probability.  With
    ``min_confidence`` the unreliable ones stay unknown.  ``confidence=False``: the
    confidence returned is None unless ``min_confidence`` needs it.  ``scorer``: what scores
    the fusion's candidate rows (the bundle's fusion graph; default: on the host).
    """
    unknown = settings.unknown_index
    hole = partial == unknown
    out = partial.copy()
    confidence = confidence or min_confidence > 0
    conf = np.ones(partial.shape, np.float32) if confidence else None
    if settings.fusion is not None and hole.any() and not hole.all():
        if propagated is None or propagated.class_costs is None:
            raise ValueError("pixel fusion needs the propagation's class costs (propagate_for(..., class_costs=True))")
        out, conf = settings.fusion.complete(logits, partial, propagated.class_costs, unknown, propagated.boundary,
                                             scorer)
    elif hole.any():
        if confidence:
            pred, p = upsampled_prediction(logits, partial.shape)
            np.copyto(out, pred, where=hole)  # faster than out[hole] = pred[hole]: no gather
            np.copyto(conf, p, where=hole)
        else:  # labels only: no softmax
            fill_argmax(logits, hole, out)
    if min_confidence > 0:
        out[hole & (conf < min_confidence)] = unknown
    return out, conf if confidence else None


def argmax_fill(logits: np.ndarray, partial: np.ndarray, unknown: int = UNKNOWN) -> np.ndarray:
    """The partial label with its unknown pixels set to the upsampled logits' argmax."""
    out = partial.copy()
    fill_argmax(logits, partial == unknown, out)
    return out
