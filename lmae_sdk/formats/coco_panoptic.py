"""COCO panoptic annotations: one PNG per image whose pixel colours are segment ids
(``R + 256 G + 256^2 B``), and per image a ``segments_info`` list giving each id's category.

Reading: segment id 0 (and a missing annotation) is unknown (255); an id that
``segments_info`` does not list is an error naming the PNG.  Writing: ``OUT/panoptic.json``
and ``OUT/panoptic/<image stem>.png``, one segment per (image, class) with id ``class + 1``,
``area``, ``bbox``, ``iscrowd`` 0 and ``score`` when one is given; unknown pixels get id 0.
Used through :mod:`.coco` (``read_coco`` / ``write_coco`` choose this form by the JSON).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from PIL import Image

from ..labels import UNKNOWN
from .common import (Completion, FormatError, ItemMeta, Written, atomic_folder, check_completion, json_ready,
                     region_score, write_file)

if TYPE_CHECKING:
    from .coco import CocoExport

PANOPTIC_OUTPUT = "panoptic.json"
PANOPTIC_MASKS = "panoptic"


def categories_of(ann: dict, index: int, path: Path) -> set:
    """The category ids one panoptic annotation uses (its fields checked)."""
    segs = ann.get("segments_info")
    if not isinstance(ann.get("file_name"), str) or not isinstance(segs, list):
        raise FormatError(path, f"annotations[{index}] needs 'file_name' and a 'segments_info' list")
    for seg in segs:
        if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
            raise FormatError(path, f"annotations[{index}]: each segments_info entry needs 'id' and 'category_id'")
    return {seg["category_id"] for seg in segs}


def missing_masks(masks_dir: Path, annotations: Iterable[dict]) -> list[str]:
    return [a["file_name"] for a in annotations if not (masks_dir / a["file_name"]).is_file()]


def read_label(masks_dir: Path, ann: dict | None, meta: ItemMeta, class_of_category: dict[int, int],
               source: Path) -> np.ndarray:
    """The partial label of one image from its panoptic PNG."""
    if ann is None:
        return np.full((meta.height, meta.width), UNKNOWN, np.uint8)
    png = masks_dir / ann["file_name"]
    try:
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    except FileNotFoundError:
        raise FormatError(png, "panoptic PNG not found") from None
    except Exception as e:  # Pillow raises many types for truncated files
        raise FormatError(png, f"unreadable panoptic PNG ({type(e).__name__}: {e})") from None
    if rgb.shape[:2] != (meta.height, meta.width):
        raise FormatError(png, f"panoptic PNG is {rgb.shape[1]}x{rgb.shape[0]}; image {meta.key} is "
                               f"{meta.width}x{meta.height}")
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    segment_class = {int(s["id"]): class_of_category[s["category_id"]] for s in ann["segments_info"]}
    values, inverse = np.unique(ids, return_inverse=True)
    unlisted = [int(v) for v in values if v != 0 and int(v) not in segment_class]
    if unlisted:
        raise FormatError(png, f"segment ids {unlisted[:10]} are not in the segments_info of {source}")
    lut = np.array([UNKNOWN if v == 0 else segment_class[int(v)] for v in values], np.uint8)
    return lut[inverse.reshape(ids.shape)]


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def write_panoptic(out: str | os.PathLike, export: CocoExport, completions: Iterable[Completion], overwrite: bool,
                   categories: list[dict], category_of_class: dict[int, int]) -> Written:
    """``OUT/panoptic.json`` + ``OUT/panoptic/*.png`` (atomically)."""
    images, annotations = [], []
    with atomic_folder(out, overwrite) as tmp:
        for c in completions:
            label = check_completion(c, len(export.class_names), str(out))
            record = c.meta.record or {"id": c.meta.key, "file_name": c.meta.key,
                                       "width": c.meta.width, "height": c.meta.height}
            ids = np.where(label == UNKNOWN, 0, label.astype(np.int64) + 1)
            segments = []
            for cls in np.unique(label).tolist():
                if cls == UNKNOWN:
                    continue
                mask = label == cls
                seg = {"id": cls + 1, "category_id": category_of_class[cls], "area": int(mask.sum()),
                       "bbox": _bbox(mask), "iscrowd": 0}
                score = region_score(c.score, mask)
                if score is not None:
                    seg["score"] = score
                segments.append(seg)
            name = f"{Path(str(record['file_name'])).stem}.png"
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            write_file(tmp / PANOPTIC_MASKS / name, _png(rgb))
            images.append(record)
            annotations.append({"image_id": record["id"], "file_name": name, "segments_info": segments})
        doc = {**export.document, "images": images, "annotations": annotations, "categories": categories}
        write_file(tmp / PANOPTIC_OUTPUT, json.dumps(json_ready(doc)).encode())
    return Written(Path(out), Path(out) / PANOPTIC_OUTPUT, len(images), [])
