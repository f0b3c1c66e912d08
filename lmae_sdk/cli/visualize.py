"""``lmae visualize``: side-by-side PNGs of image, partial, completed label and confidence,
and an index.html; with ``--review``, the first images of a review queue (``lmae complete
--review``) in queue order, their uncertain pixels highlighted; the label colouring helpers."""
from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from lmae_sdk.cli.batch import pair_folders

UNCERTAIN_RGB = (255, 0, 255)  # filled pixels below the review level, in the overlay


def default_palette(n: int = 256) -> list[list[int]]:
    import colorsys

    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 if i % 2 else 0.9, 0.95 if i % 3 else 0.75)
        out.append([int(r * 255), int(g * 255), int(b * 255)])
    return out


def colorize(label: np.ndarray, palette: list[list[int]], unknown: int = 255) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    rgb = lut[label]
    hole = label == unknown
    if hole.any():  # unknown: a grey checkerboard
        yy, xx = np.indices(label.shape)
        check = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 200, 140).astype(np.uint8)
        rgb = np.where(hole[..., None], np.repeat(check, 3, axis=2), rgb)
    return rgb


def uncertainty_overlay(image: np.ndarray, partial: np.ndarray, completed: np.ndarray, confidence: np.ndarray,
                        level: float, palette: list[list[int]], unknown: int = 255) -> np.ndarray:
    """The image dimmed, its filled pixels (unknown in ``partial``, a class in ``completed``)
    tinted with their class colour, and those whose ``confidence`` (8-bit, 255 = 1.0) is below
    ``level`` in :data:`UNCERTAIN_RGB`."""
    filled = (partial == unknown) & (completed != unknown)
    out = image.astype(np.float32) * 0.4
    out[filled] += colorize(completed, palette, unknown)[filled] * 0.6
    out[filled & (confidence.astype(np.float32) < level * 255.0)] = UNCERTAIN_RGB
    return out.astype(np.uint8)


def find_classes(classes_json: str | None, folders: list[str]) -> tuple[list | None, list | None]:
    """(palette, class names) of ``classes_json`` or of the first classes.json in or above ``folders``."""
    cj = Path(classes_json) if classes_json else None
    for base in ([] if cj else folders):
        cj = next((p / "classes.json" for p in [Path(base).resolve(), *Path(base).resolve().parents]
                   if (p / "classes.json").is_file()), None)
        if cj is not None:
            break
    if cj is None:
        return None, None
    try:
        meta = json.loads(cj.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise click.ClickException(f"{cj}: unreadable classes file ({type(e).__name__}: {e})") from None
    return (meta.get("palette"), meta.get("classes")) if isinstance(meta, dict) else (None, None)


def read_review(path: str) -> dict[str, Any]:
    from lmae_sdk.review import ReviewError, read_queue

    try:
        return read_queue(path)
    except ReviewError as e:
        raise click.ClickException(str(e)) from None


def render_strip(img_path: Path, comp_path: Path, partial_path: Path, conf_path: Path | None,
                 palette: list | None, review_level: float | None, unknown: int) -> tuple[np.ndarray, list[str]]:
    """The panels of one image side by side (RGB) and their names; ``review_level``: add the
    uncertainty overlay (needs the confidence map)."""
    import cv2

    from lmae_sdk.labels import InputError, read_image, read_label

    img = read_image(img_path)
    comp, comp_pal = read_label(comp_path)
    part, _ = read_label(partial_path)
    pal = palette or comp_pal or default_palette()
    panels = [img, colorize(part, pal, unknown), colorize(comp, pal, unknown)]
    cols = ["image", "partial", "completed"]
    if conf_path is not None and conf_path.is_file():
        conf, _ = read_label(conf_path)
        panels.append(cv2.cvtColor(cv2.applyColorMap(conf, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB))
        cols.append("confidence")
        if review_level is not None and conf.shape == part.shape == comp.shape == img.shape[:2]:
            panels.append(uncertainty_overlay(img, part, comp, conf, review_level, pal, unknown))
            cols.append(f"uncertain (< {review_level:g}) in magenta")
    sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
    strip = [panels[0]]
    for pnl in panels[1:]:
        if pnl.shape[:2] != img.shape[:2]:
            raise InputError(comp_path, "panel sizes differ from the image")
        strip += [sep, pnl]
    return np.concatenate(strip, axis=1), cols


def legend_html(names: list | None, palette: list | None, review_level: float | None) -> str:
    def swatch(rgb, text):
        return (f'<span style="background:rgb({rgb[0]},{rgb[1]},{rgb[2]});padding:2px 6px;margin:2px;color:#fff;'
                f'text-shadow:0 0 2px #000">{html.escape(str(text))}</span>')

    pal = palette or default_palette()
    out = [swatch(pal[i], n) for i, n in enumerate(names or []) if i < len(pal)]
    if review_level is not None:
        out.append(swatch(UNCERTAIN_RGB, f"uncertain: confidence < {review_level:g}"))
    return " ".join(out)


def review_caption(entry: dict[str, Any]) -> str:
    def num(key, fmt):
        v = entry.get(key)
        return "?" if not isinstance(v, (int, float)) else format(v, fmt)

    return (f"#{entry.get('rank', '?')}: uncertain share {num('uncertain_share', '.3f')}, mean entropy "
            f"{num('mean_entropy', '.3f')} nats, {num('filled_pixels', 'd')} filled pixels")


@click.command()
@click.option("--images", default=None, type=click.Path(exists=True, file_okay=False),
              help="required, except with --review (default: the run's)")
@click.option("--partial", default=None, type=click.Path(exists=True, file_okay=False),
              help="required, except with --review (default: the run's)")
@click.option("--completed", default=None, type=click.Path(exists=True, file_okay=False),
              help="required, except with --review (default: the run's --out)")
@click.option("--confidence", "confidence_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="confidence maps (with --review, default: the run's --confidence-dir)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--classes", "classes_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="classes.json with a palette (default: looked up above --images / --partial)")
@click.option("--limit", default=0, type=int, help="at most N images (0 = all)")
@click.option("--review", "review_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="review.json of `lmae complete --review`: its images in queue order, most uncertain first, "
                   "with the uncertain pixels highlighted")
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=0),
              help="with --review: the first N images of the queue (0 = all)")
def visualize(images: str | None, partial: str | None, completed: str | None, confidence_dir: str | None, out: str,
              classes_json: str | None, limit: int, review_json: str | None, top: int) -> None:
    """Side-by-side PNGs (image | partial | completed | confidence) and an index.html."""
    import cv2

    from lmae_sdk.labels import InputError, atomic_write_bytes

    queue = read_review(review_json) if review_json else None
    run = queue["settings"] if queue else {}
    images, partial = images or run.get("images"), partial or run.get("labels")
    completed, confidence_dir = completed or run.get("out"), confidence_dir or run.get("confidence_dir")
    for option, folder in (("--images", images), ("--partial", partial), ("--completed", completed)):
        if not folder:
            raise click.UsageError(f"{option} is required (or --review with a review.json)")
        if not Path(folder).is_dir():
            raise click.ClickException(f"{option}: {folder} (from {review_json}) is not a folder")
    palette, names = find_classes(classes_json, [images, partial, completed])
    level, unknown = run.get("level"), int(run.get("unknown_index", 255))
    if queue:  # one palette for panels and legend: the classes file's, else the model's
        palette, names = palette or run.get("palette") or default_palette(), names or run.get("classes")
        if not confidence_dir:
            click.echo("note: the run wrote no confidence maps (--confidence-dir): no uncertainty overlay", err=True)
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    if queue is None:  # a completed label without its image is a failure
        found = pair_folders(Path(images), Path(completed))
        items = sorted([(img, lab, lab.stem, None) for img, lab, _ in found.pairs]
                       + [(None, lab, lab.stem, None) for lab in found.labels_without_image],
                       key=lambda item: item[1].name)
    else:
        items = [(Path(images) / e["image"], Path(completed) / e["label_file"], Path(e["label_file"]).stem, e)
                 for e in queue["images"][: top or None]]
    if limit:
        items = items[:limit]
    rows, failed = [], []
    for img_path, comp_path, stem, entry in items:
        try:
            if img_path is None:
                raise InputError(comp_path, f"no image named {stem}.* in {images}")
            strip, cols = render_strip(img_path, comp_path, Path(partial) / f"{stem}.png",
                                       Path(confidence_dir) / f"{stem}.png" if confidence_dir else None,
                                       palette, level if queue else None, unknown)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
            atomic_write_bytes(dst / f"{stem}.png", buf.tobytes())
            rows.append((stem, cols, entry))
        except InputError as e:
            failed.append(str(e))
            click.echo(f"skip: {e}", err=True)
    legend = legend_html(names, palette, level if queue else None) if names or queue else ""
    sections = []
    for stem, cols, entry in rows:  # in queue order with --review, else by name
        caption = " | ".join(([review_caption(entry)] if entry else []) + cols)
        sections.append(f'<h3>{html.escape(entry["image"] if entry else stem)}</h3><p>{html.escape(caption)}</p>'
                        f'<img src="{html.escape(stem)}.png" style="max-width:100%">')
    body = "\n".join(sections)
    title = (f"L-MAE review queue: the {len(rows)} most uncertain of {len(queue['images'])} images "
             f"(sorted by {run.get('sort_key', '?')})" if queue else f"L-MAE completions ({len(rows)} images)")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lmae completions</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{legend}</p>"
            f"<p>unknown pixels: grey checkerboard</p>{body}</body></html>\n")
    atomic_write_bytes(dst / "index.html", page.encode())
    click.echo(f"wrote {len(rows)} visualizations and index.html to {dst}" + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        sys.exit(1)
