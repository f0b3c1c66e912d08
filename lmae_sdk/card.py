"""The model card of a bundle: ``card.json`` (written by ``lmae fit``) and its Markdown
rendering ``card.md``.  ``lmae info BUNDLE`` prints it; ``lmae complete`` names its one-line
summary when it starts.  Torch-free: the runtime reads it.

``card.json`` holds: the dataset (name, layout, classes, train / val counts, image size),
the model (preset, input size, mask ratios, finishing rule and why it was chosen, routing
threshold), the fit (budget, each stage with its planned and spent minutes and what it handed
on, the machine), val PA-mIoU per hole protocol beside nearest-label fill and the geodesic fill
on the same partial labels, per-class IoU at 50% random holes, the completer's seconds per
image, and the fit's final gate: whether the completer beats nearest-label fill at the
headline kind of hole.  :func:`card_warning` is what ``lmae complete`` prints when it does not,
or when the labels it was fitted on leave the class boundaries unknown (the card cannot score
them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .degrade import COMPLETE_LABEL_BOUNDARIES_UNKNOWN, UNLABELLED_BOUNDARIES
from .labels import atomic_write_bytes

CARD_JSON = "card.json"
CARD_MD = "card.md"
CARD_FORMAT = "lmae-card"
CARD_VERSION = 1
HEADLINE_PROTOCOL = "random 0.5"


class CardError(ValueError):
    """A card that cannot be read."""


def read_card(bundle: str | os.PathLike) -> dict[str, Any] | None:
    """The bundle's card, None where it has none (a bundle not made by ``lmae fit``)."""
    path = Path(bundle) / CARD_JSON if Path(bundle).is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardError(f"{path}: unreadable model card ({type(e).__name__}: {e})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CardError(f"{path}: not an lmae model card")
    return card


def write_card(bundle: str | os.PathLike, card: dict[str, Any]) -> None:
    """Write ``card.json`` and ``card.md`` into the bundle (each atomically)."""
    card = {"format": CARD_FORMAT, "version": CARD_VERSION,
            **{k: v for k, v in card.items() if k not in ("format", "version")}}
    atomic_write_bytes(Path(bundle) / CARD_JSON, (json.dumps(card, indent=1) + "\n").encode())
    atomic_write_bytes(Path(bundle) / CARD_MD, render_markdown(card).encode())


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def card_line(card: dict[str, Any]) -> str:
    """One line: what the completer is for and how good it is on its own val split."""
    d, fit = card["dataset"], card.get("fit", {})
    rows = {r["protocol"]: r for r in card.get("val", {}).get("protocols", [])}
    head = rows.get(HEADLINE_PROTOCOL)
    score = (f"; val PA-mIoU {_fmt(head['completer'])} at {HEADLINE_PROTOCOL} holes (nearest fill "
             f"{_fmt(head['nearest'])})") if head else ""
    made = f"; lmae fit --budget {fit['budget_min']:g}m, {fit.get('total_min', 0):.0f} min" if fit else ""
    return f"model card: {d['name']}, {len(d['classes'])} classes{score}{made} ({card.get('created', '')[:10]})"


def card_warning(card: dict[str, Any]) -> str | None:
    """:func:`card_warnings` as one text, a line each; None when there is none."""
    return "\n".join(card_warnings(card)) or None


def card_warnings(card: dict[str, Any]) -> list[str]:
    """Warnings for a bundle that failed its fit's final gate, or that was fitted on labels
    whose class boundaries are unknown (its card cannot score them)."""
    warnings = []
    gate = card.get("gate")
    if gate and not gate.get("passed", True):
        lost = (f"{_fmt(gate.get('completer'))} against {_fmt(gate.get('nearest'))} PA-mIoU" if "completer" in gate
                else gate.get("why", ""))
        warnings.append(f"warning: this bundle's completer does not beat nearest-label fill at {gate['protocol']} "
                        f"holes on its val split ({lost}); its labels may be worse than the simplest fill. Refit it "
                        f"with a larger lmae fit --budget")
    unlabelled = unlabelled_boundaries(card.get("dataset", {}).get("boundaries_unknown") or {})
    if unlabelled:
        warnings.append(f"warning: this bundle was fitted on labels whose class boundaries are unknown ({unlabelled} "
                        f"of the boundary pixels), so its card's figures do not cover where it places a boundary; "
                        f"such a bundle fell below geodesic fill at small random holes and below nearest-label fill "
                        f"in thin bands along the boundaries of complete labels (benchmarks/RESULTS.md, section 1). "
                        f"Check completed samples with lmae visualize before using them")
    return warnings


def unlabelled_boundaries(boundaries_unknown: dict[str, float]) -> str:
    """"train 100.0%, val 99.8%" when a split's class boundaries are mostly unknown
    (:data:`lmae_sdk.degrade.UNLABELLED_BOUNDARIES`), else ""."""
    if max(boundaries_unknown.values(), default=0.0) < UNLABELLED_BOUNDARIES:
        return ""
    return ", ".join(f"{split} {100 * share:.1f}%" for split, share in boundaries_unknown.items())


def render_markdown(card: dict[str, Any]) -> str:
    d, m, fit, val = card["dataset"], card["model"], card.get("fit", {}), card.get("val", {})
    out = [f"# Model card: {d['name']}", "", card_line(card), ""] + [
        line for warning in card_warnings(card) for line in (f"**{warning}**", "")] + [
           "## Dataset", "",
           f"- root: `{d['root']}` (layout {d['layout']})",
           f"- {d['train']} train / {d['val']} val images, commonest size {d['image_size'][0]}x{d['image_size'][1]}",
           f"- {len(d['classes'])} classes: {', '.join(d['classes'])}"]
    known = d.get("known_share") or {}
    if known:
        out.append("- known pixels: " + ", ".join(f"{split} {100 * v:.1f}%" for split, v in known.items()))
    complete = d.get("complete_labels") or {}
    if complete and known.get("train", 1.0) < 0.999:
        counts = ", ".join(f"{split} {n} of {d.get(split, '?')}" for split, n in complete.items())
        out.append(f"- complete labels (at most {COMPLETE_LABEL_BOUNDARIES_UNKNOWN:.0%} of their class-boundary pixels "
                   f"unknown): {counts}")
    if known.get("val", 1.0) < 0.999:
        out.append("- the val labels are partial: each kind of hole below hides that share of their known pixels, "
                   "and only the hidden known pixels are scored")
    unlabelled = unlabelled_boundaries(d.get("boundaries_unknown") or {})
    if unlabelled:
        out.append(f"- class boundaries unlabelled ({unlabelled} of the boundary pixels unknown): the known pixels "
                   f"do not reach the boundaries, so the bands below lie away from them and where the completer "
                   f"places a boundary is not scored; fitted on such labels, bundles have fallen below geodesic "
                   f"fill at small random holes and below nearest-label fill on thin boundary bands of complete "
                   f"labels (benchmarks/RESULTS.md, section 1)")
    out += ["", "## Model", "",
            f"- preset `{m['preset']}`, {m['parameters_m']:.2f}M parameters, input {m['input'][0]}x{m['input'][1]}",
            f"- engines at mask ratios {', '.join(f'{r:g}' for r in m['mask_ratios'])}; finishing rule "
            f"{m['finishing_rule']}; routing threshold {m['unknown_threshold']:g}"]
    if m.get("finishing_rule_why"):
        out.append(f"- finishing rule: {m['finishing_rule_why']}")
    if fit:
        out += ["", "## Fit", "", f"`lmae fit --budget {fit['budget_min']:g}m` on {fit['machine']} "
                f"({fit['cores']} CPU core(s), device {fit['device']}): {fit.get('total_min', 0):.1f} min in all."]
        by = card.get("fitted_by")
        if by:
            out += ["", f"Fitted by lmae-sdk {by.get('version') or '(unknown version)'}"
                    + (f", commit {by['commit']}." if by.get("commit") else ".")]
        out += ["", "| stage | planned min | spent min |", "|---|---|---|"]
        out += [f"| {s['name']} | {s['planned_min']:.1f} | {_fmt(s.get('minutes'))} |" for s in fit["stages"]]
        verdicts = fit.get("stage_verdicts", {})
        if verdicts:
            out += ["", "What each checked stage handed on:", ""] + [f"- {name}: {why}" for name, why in
                                                                     verdicts.items()]
    if val:
        out += ["", f"## Val PA-mIoU ({val['images']} images)", "",
                "PA-mIoU = mIoU over the pixels that were unknown in the partial label. The three methods "
                "complete the same partial labels.", "",
                "| hole protocol | L-MAE completer | nearest-label fill | geodesic fill |", "|---|---|---|---|"]
        out += [_protocol_row(r) for r in val["protocols"]]
        per = val.get("per_class_iou")
        if per:
            out += ["", f"Per-class IoU at {per['protocol']} holes (completer / nearest fill):", "",
                    "| class | completer | nearest fill |", "|---|---|---|"]
            out += [f"| {c} | {_fmt(v['completer'])} | {_fmt(v['nearest'])} |" for c, v in per["classes"].items()]
    speed = card.get("speed")
    if speed:
        out += ["", "## Speed", "", f"{speed['seconds_per_image']:.3f} s per image ({speed['setting']})."]
    return "\n".join(out) + "\n"


def _protocol_row(row: dict) -> str:
    """One hole protocol's table row, the best of the three methods in bold."""
    methods = ("completer", "nearest", "geodesic")
    scores = [row.get(m) for m in methods]
    best = max((v for v in scores if v is not None), default=None)
    cells = [f"**{_fmt(v)}**" if v is not None and v == best else _fmt(v) for v in scores]
    return f"| {row['protocol']} | " + " | ".join(cells) + " |"
