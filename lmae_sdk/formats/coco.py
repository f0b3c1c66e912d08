"""COCO annotations in and out: instance segmentation (polygons, RLE) and panoptic.

Reading (:func:`read_coco`): categories become classes by name; each annotation's mask
(polygons, uncompressed or compressed RLE, decoded by pycocotools) marks its category's
pixels; pixels of no annotation are unknown (255), pixels of annotations of different
classes are unknown and counted (``overlap``); polygons reaching outside the image are
clipped and counted (``clipped``); annotations without a segmentation (boxes only) are
skipped and counted (``no_segmentation``); an image with no annotation is all unknown
(``unannotated``).  A panoptic export (annotations with ``segments_info``) is read by
:mod:`.coco_panoptic`.

Writing (:func:`write_coco`): ``OUT/instances.json`` with the export's images, categories,
``info`` and ``licenses``, and one annotation per (image, class): the class's pixels as
compressed RLE (``iscrowd`` 0, ``area``, ``bbox``) with ``score`` when one is given.  One mask
per class keeps every pixel exactly; completions are semantic, so instances are not split.
Unknown pixels are covered by no annotation and read back as unknown.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..extras import MissingExtra
from . import coco_panoptic
from .common import (AnnotationExport, ClassMasks, Completion, ExportItem, FormatError, FormatWarning, ItemMeta,
                     Written, atomic_folder, check_completion, check_image_size, class_index, export_file, find_image,
                     json_kind, json_ready, missing_images_error, note_overlap, region_score, write_file)

COCO_OUTPUT = "instances.json"
FORMATS_EXTRA_HINT = "pip install 'lmae-sdk[formats]'"


def mask_api():
    """``pycocotools.mask``, or :class:`MissingExtra` naming the ``formats`` extra."""
    try:
        from pycocotools import mask
    except ImportError as e:
        raise MissingExtra(f"COCO annotations need pycocotools, which is not installed here ({e}): "
                           f"{FORMATS_EXTRA_HINT}") from None
    return mask


@dataclass
class CocoExport(AnnotationExport):
    """A read COCO export; ``variant`` is ``instances`` or ``panoptic``."""

    variant: str = "instances"
    images_dir: Path = Path(".")
    masks_dir: Path | None = None  # panoptic PNGs
    document: dict = field(default_factory=dict, repr=False)  # info, licenses
    categories: list[dict] = field(default_factory=list, repr=False)
    category_of_class: dict[int, int] = field(default_factory=dict)
    _class_of_category: dict[int, int] = field(default_factory=dict, repr=False)
    _images: list[tuple[dict, Path]] = field(default_factory=list, repr=False)
    _annotations: dict[Any, list[dict]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self._images)

    def _items(self) -> Iterator[ExportItem]:
        for record, path in self._images:
            meta = ItemMeta(str(record["id"]), int(record["width"]), int(record["height"]), record)
            where = f"{self.source} (image {record['id']} {record['file_name']})"
            check_image_size(path, meta.width, meta.height, where)
            anns = self._annotations.get(record["id"], [])
            if self.variant == "panoptic":
                label = coco_panoptic.read_label(self.masks_dir, anns[0] if anns else None, meta,
                                                 self._class_of_category, self.source)
            else:
                label = self._instance_label(anns, meta, where)
            if not anns:
                self.warnings.append(FormatWarning("unannotated", where, 1, "no annotation: all pixels unknown"))
            yield ExportItem(path, label, meta)

    def _instance_label(self, anns: list[dict], meta: ItemMeta, where: str) -> np.ndarray:
        masks = ClassMasks(meta.height, meta.width)
        clipped = skipped = 0
        for ann in anns:
            mask, was_clipped = annotation_mask(ann, meta.height, meta.width, where)
            if mask is None:
                skipped += 1
                continue
            clipped += was_clipped
            masks.add(self._class_of_category[ann["category_id"]], mask)
        label, overlap = masks.label()
        note_overlap(self.warnings, where, overlap)
        if clipped:
            self.warnings.append(FormatWarning("clipped", where, clipped,
                                               f"{clipped} polygons reach outside the image; clipped"))
        if skipped:
            self.warnings.append(FormatWarning("no_segmentation", where, skipped,
                                               f"{skipped} annotations have no segmentation (boxes only); skipped"))
        return label


def annotation_mask(ann: dict, height: int, width: int, where: str) -> tuple[np.ndarray | None, int]:
    """(boolean mask or None when the annotation has no segmentation, polygons clipped)."""
    api = mask_api()
    seg = ann.get("segmentation")
    what = f"{where}: annotation {ann.get('id')}"
    if seg is None or seg == [] or seg == [[]]:
        return None, 0
    if isinstance(seg, list):
        polygons = [seg] if seg and not isinstance(seg[0], list) else seg
        clipped = 0
        for poly in polygons:
            if not isinstance(poly, list) or len(poly) % 2 or len(poly) < 6 \
                    or not all(isinstance(v, (int, float)) for v in poly):
                raise FormatError(what, "a polygon must be a flat list of at least 3 x, y pairs")
            xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
            clipped += bool(xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height)
        rle = api.merge(api.frPyObjects([[float(v) for v in p] for p in polygons], height, width))
        return api.decode(rle).astype(bool), clipped
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise FormatError(what, f"RLE size {seg['size']} is not the image's [height, width] {[height, width]}")
        counts = seg["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise FormatError(what, f"uncompressed RLE counts sum to {sum(counts)}, not {height * width} pixels")
            rle = api.frPyObjects(seg, height, width)
        elif isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode()}
        else:
            raise FormatError(what, f"RLE counts of type {type(counts).__name__}; expected a list or a string")
        try:
            return api.decode(rle).astype(bool), 0
        except Exception as e:  # pycocotools raises bare exceptions on corrupt counts
            raise FormatError(what, f"undecodable RLE ({type(e).__name__}: {e})") from None
    raise FormatError(what, "segmentation is neither polygons nor RLE")


def coco_json_in(folder: Path) -> Path:
    """The one COCO JSON of an export folder (``annotations/*.json`` or ``*.json``)."""
    found = [p for sub in (folder / "annotations", folder) if sub.is_dir()
             for p in sorted(sub.glob("*.json")) if json_kind(p) == "coco"]
    if len(found) != 1:
        raise FormatError(folder, f"{len(found) or 'no'} COCO JSON files found "
                                  f"{[p.name for p in found] if found else ''}; name the one to read")
    return found[0]


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(path, f"unreadable COCO JSON ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise FormatError(path, f"COCO JSON is a {type(doc).__name__}; expected an object with images, "
                                f"annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise FormatError(path, f"COCO JSON has no {key!r} list")
    for key, needed in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        for i, rec in enumerate(doc[key]):
            lacking = [k for k in needed if not isinstance(rec, dict) or k not in rec]
            if lacking:
                raise FormatError(path, f"{key}[{i}] lacks {lacking}")
    return doc


def _default_images_dir(ann_path: Path) -> Path:
    for cand in (ann_path.parent / "images", ann_path.parent.parent / "images"):
        if cand.is_dir():
            return cand
    return ann_path.parent


def read_coco(annotations: str | os.PathLike, images_dir: str | os.PathLike | None = None,
              class_names: Sequence[str] | None = None, masks_dir: str | os.PathLike | None = None) -> CocoExport:
    """Read a COCO export: ``annotations`` is the JSON file or an export folder holding one
    (``annotations/*.json``); ``images_dir`` defaults to ``images/`` beside the JSON or its
    folder, else the JSON's folder; ``class_names`` default to the categories' names in id
    order; ``masks_dir`` (panoptic) defaults to the JSON's path without ``.json``.  Every
    listed image must exist (one error names the missing ones)."""
    path = export_file(annotations, coco_json_in, "COCO annotation file")
    doc = _load(path)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    variant = "panoptic" if any(isinstance(a, dict) and "segments_info" in a for a in doc["annotations"]) \
        else "instances"
    if variant == "instances":
        mask_api()  # a missing pycocotools fails here, not at the first image
    by_image, used_cats = _annotations_by_image(doc, variant, path)
    cat_name = {c["id"]: c["name"] for c in cats}
    export = CocoExport("coco", path, [], variant=variant, categories=cats,
                        document={k: doc[k] for k in ("info", "licenses") if k in doc})
    export.class_names, index = class_index(names, class_names, path, {cat_name[c] for c in used_cats if c in cat_name},
                                            export.warnings)
    unknown_cats = sorted(used_cats - set(cat_name))
    if unknown_cats:
        raise FormatError(path, f"annotations use category ids {unknown_cats[:10]} that 'categories' does not list")
    export._class_of_category = {c["id"]: index[c["name"]] for c in cats if c["name"] in index}
    export.category_of_class = {cls: cat for cat, cls in export._class_of_category.items()}
    export.images_dir = Path(images_dir) if images_dir is not None else _default_images_dir(path)
    if variant == "panoptic":
        export.masks_dir = Path(masks_dir) if masks_dir is not None else path.with_suffix("")
        if not export.masks_dir.is_dir():
            raise FormatError(path, f"panoptic PNG folder {export.masks_dir} not found")
        missing = coco_panoptic.missing_masks(export.masks_dir, [a[0] for a in by_image.values()])
        if missing:
            raise FormatError(path, f"{len(missing)} panoptic PNGs missing from {export.masks_dir}: {missing[:10]}")
    ids = [im["id"] for im in doc["images"]]
    if len(set(ids)) != len(ids):
        raise FormatError(path, "image ids appear more than once")
    stray = sorted(set(by_image) - set(ids), key=str)
    if stray:
        raise FormatError(path, f"annotations refer to image ids {stray[:10]} that 'images' does not list")
    located = [(im, find_image(export.images_dir, str(im["file_name"]))) for im in doc["images"]]
    missing = [str(im["file_name"]) for im, p in located if p is None]
    if missing:
        raise missing_images_error(path, export.images_dir, missing)
    export._images = located  # type: ignore[assignment]
    export._annotations = by_image
    return export


def _annotations_by_image(doc: dict, variant: str, path: Path) -> tuple[dict[Any, list[dict]], set]:
    by_image: dict[Any, list[dict]] = {}
    used: set = set()
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise FormatError(path, f"annotations[{i}] lacks 'image_id'")
        if variant == "panoptic":
            used |= coco_panoptic.categories_of(ann, i, path)
        elif "category_id" not in ann:
            raise FormatError(path, f"annotations[{i}] lacks 'category_id'")
        else:
            used.add(ann["category_id"])
        by_image.setdefault(ann["image_id"], []).append(ann)
    if variant == "panoptic":
        doubled = [k for k, v in by_image.items() if len(v) > 1]
        if doubled:
            raise FormatError(path, f"images {doubled[:10]} have more than one panoptic annotation")
    return by_image, used


def categories_for(export: CocoExport) -> tuple[list[dict], dict[int, int]]:
    """(categories to write, {class id: category id}): the export's categories, plus a new one
    (next free id) for each class that had none."""
    cats = [dict(c) for c in export.categories]
    of_class = dict(export.category_of_class)
    next_id = max([int(c["id"]) for c in cats], default=0) + 1
    for cls, name in enumerate(export.class_names):
        if cls not in of_class:
            cats.append({"id": next_id, "name": name, "supercategory": ""})
            of_class[cls] = next_id
            next_id += 1
    return cats, of_class


def write_coco(out: str | os.PathLike, export: CocoExport, completions: Iterable[Completion],
               overwrite: bool = False) -> Written:
    """Write completions back as COCO into the folder ``out`` (atomically): instances as
    ``OUT/instances.json``; a panoptic export as ``OUT/panoptic.json`` + ``OUT/panoptic/``."""
    cats, of_class = categories_for(export)
    if export.variant == "panoptic":
        return coco_panoptic.write_panoptic(out, export, completions, overwrite, cats, of_class)
    api = mask_api()
    images, annotations = [], []
    with atomic_folder(out, overwrite) as tmp:
        for c in completions:
            label = check_completion(c, len(export.class_names), str(out))
            images.append(c.meta.record or {"id": c.meta.key, "file_name": c.meta.key,
                                            "width": c.meta.width, "height": c.meta.height})
            for cls in np.unique(label).tolist():
                if cls >= len(export.class_names):
                    continue  # 255: unknown, covered by no annotation
                mask = label == cls
                rle = api.encode(np.asfortranarray(mask.astype(np.uint8)))
                ann = {"id": len(annotations) + 1, "image_id": images[-1]["id"], "category_id": of_class[cls],
                       "segmentation": {"size": [c.meta.height, c.meta.width], "counts": rle["counts"].decode()},
                       "area": int(api.area(rle)), "bbox": [float(v) for v in api.toBbox(rle)], "iscrowd": 0}
                score = region_score(c.score, mask)
                if score is not None:
                    ann["score"] = score
                annotations.append(ann)
        doc = {**export.document, "images": images, "annotations": annotations, "categories": cats}
        write_file(tmp / COCO_OUTPUT, json.dumps(json_ready(doc)).encode())
    return Written(Path(out), Path(out) / COCO_OUTPUT, len(images), [])
