"""``lmae visualize``: side-by-side PNGs of image, partial, completed label and confidence,
and an index.html; the label colouring helpers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from lmae_sdk.cli.batch import pair_folders


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


@click.command()
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--partial", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--completed", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--confidence", "confidence_dir", default=None, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--classes", "classes_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="classes.json with a palette (default: looked up above --images / --partial)")
@click.option("--limit", default=0, type=int, help="at most N images (0 = all)")
def visualize(images: str, partial: str, completed: str, confidence_dir: str | None, out: str,
              classes_json: str | None, limit: int) -> None:
    """Side-by-side PNGs (image | partial | completed | confidence) and an index.html."""
    import html

    import cv2

    from lmae_sdk.labels import InputError, atomic_write_bytes, read_image, read_label

    palette, names = None, None
    cj = Path(classes_json) if classes_json else None
    if cj is None:
        for base in (Path(images), Path(partial), Path(completed)):
            cj = next((p / "classes.json" for p in [base.resolve(), *base.resolve().parents]
                       if (p / "classes.json").is_file()), None)
            if cj is not None:
                break
    if cj is not None:
        meta = json.loads(cj.read_text())
        palette, names = meta.get("palette"), meta.get("classes")
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    found = pair_folders(Path(images), Path(completed))  # a completed label without its image is a failure
    pairs = sorted([*found.pairs, *((None, lab, lab.stem) for lab in found.labels_without_image)],
                   key=lambda pair: pair[1].name)
    if limit:
        pairs = pairs[:limit]
    for img_path, comp_path, stem in pairs:
        try:
            if img_path is None:
                raise InputError(comp_path, f"no image named {stem}.* in {images}")
            img = read_image(img_path)
            comp, comp_pal = read_label(comp_path)
            part, _ = read_label(Path(partial) / f"{stem}.png")
            pal = palette or comp_pal or default_palette()
            panels = [img, colorize(part, pal), colorize(comp, pal)]
            cols = ["image", "partial", "completed"]
            if confidence_dir:
                cf = Path(confidence_dir) / f"{stem}.png"
                if cf.is_file():
                    conf, _ = read_label(cf)
                    panels.append(cv2.cvtColor(cv2.applyColorMap(conf, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB))
                    cols.append("confidence")
            h = img.shape[0]
            sep = np.full((h, 4, 3), 255, np.uint8)
            strip = [panels[0]]
            for pnl in panels[1:]:
                if pnl.shape[:2] != img.shape[:2]:
                    raise InputError(comp_path, "panel sizes differ from the image")
                strip += [sep, pnl]
            ok, buf = cv2.imencode(".png", cv2.cvtColor(np.concatenate(strip, axis=1), cv2.COLOR_RGB2BGR))
            atomic_write_bytes(dst / f"{stem}.png", buf.tobytes())
            rows.append((stem, cols))
        except InputError as e:
            failed.append(str(e))
            click.echo(f"skip: {e}", err=True)
    legend = ""
    if names:
        pal = palette or default_palette()
        legend = " ".join(f'<span style="background:rgb({pal[i][0]},{pal[i][1]},{pal[i][2]});padding:2px 6px;'
                          f'margin:2px;color:#fff;text-shadow:0 0 2px #000">{html.escape(str(n))}</span>'
                          for i, n in enumerate(names) if i < len(pal))
    body = "\n".join(f'<h3>{html.escape(stem)}</h3><p>{" | ".join(cols)}</p>'
                     f'<img src="{html.escape(stem)}.png" style="max-width:100%">' for stem, cols in rows)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lmae completions</title></head><body>"
            f"<h1>L-MAE completions ({len(rows)} images)</h1><p>{legend}</p>"
            f"<p>unknown pixels: grey checkerboard</p>{body}</body></html>\n")
    atomic_write_bytes(dst / "index.html", page.encode())
    click.echo(f"wrote {len(rows)} visualizations and index.html to {dst}" + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        sys.exit(1)
