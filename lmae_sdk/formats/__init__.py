"""Annotation-tool formats in and out: COCO (instances and panoptic), CVAT "Segmentation mask
1.1" and Label Studio brush labels, one module each.

A reader turns an export into an :class:`AnnotationExport`; iterating it yields, per image,
an :class:`ExportItem` ``(image_path, partial, meta)`` with ``partial`` (H, W) uint8 and
255 = unknown, and it counts what it handled by rule in ``export.warnings``.  A writer takes
the export and :class:`Completion` ``(meta, label, score)`` items and writes the completions
back in the export's format, atomically, ready to import as pre-annotations::

    fmt = detect_format(path)                      # or the user's --format
    export = read_annotations(path, fmt, images_dir=images, class_names=classes)
    done = (Completion(item.meta, *complete(item.image_path, item.partial)) for item in export)
    write_annotations(out, export, done)

Plain dataset layouts (``folder``, ``voc``, ``cityscapes``) are detected here too and read
by :func:`lmae_sdk.datasets.load_dataset`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..datasets import detect_layout
from .coco import CocoExport, read_coco, write_coco
from .common import (AnnotationExport, Completion, ExportItem, FormatError, FormatWarning, ItemMeta, Written,
                     json_kind)
from .cvat import LABELMAP, CvatExport, read_cvat, write_cvat
from .labelstudio import LabelStudioExport, read_labelstudio, write_labelstudio

ANNOTATION_FORMATS = ("coco", "cvat", "labelstudio")
DATASET_LAYOUTS = ("folder", "voc", "cityscapes")
FORMATS = ANNOTATION_FORMATS + DATASET_LAYOUTS
READERS = {"coco": read_coco, "cvat": read_cvat, "labelstudio": read_labelstudio}
WRITERS = {"coco": write_coco, "cvat": write_cvat, "labelstudio": write_labelstudio}

__all__ = ["ANNOTATION_FORMATS", "DATASET_LAYOUTS", "FORMATS", "READERS", "WRITERS", "AnnotationExport",
           "CocoExport", "Completion", "CvatExport", "ExportItem", "FormatError", "FormatWarning", "ItemMeta",
           "LabelStudioExport", "Written", "detect_format", "read_annotations", "read_coco", "read_cvat",
           "read_labelstudio", "write_annotations", "write_coco", "write_cvat", "write_labelstudio"]


def detect_format(path: str | os.PathLike) -> str:
    """The format of an export or dataset, one of :data:`FORMATS`: a JSON file is COCO (an
    object) or Label Studio (a list); ``labelmap.txt`` or a folder holding one is CVAT; a
    folder holding one such JSON (or ``annotations/*.json``) is that format; any other folder
    is a dataset layout (``voc``, ``cityscapes``, else ``folder``)."""
    p = Path(path)
    if not p.exists():
        raise FormatError(p, "not found")
    if p.is_file():
        if p.name == LABELMAP:
            return "cvat"
        kind = json_kind(p) if p.suffix.lower() == ".json" else None
        if kind is None:
            raise FormatError(p, "not an annotation export: expected a COCO JSON (an object with images, "
                                 "annotations, categories), a Label Studio JSON (a list of tasks) or labelmap.txt")
        return kind
    if (p / LABELMAP).is_file():
        return "cvat"
    kinds = {json_kind(j) for sub in (p, p / "annotations") if sub.is_dir() for j in sub.glob("*.json")} - {None}
    if len(kinds) > 1:
        raise FormatError(p, f"holds both {sorted(kinds)} JSON files; name the file to read")
    if kinds:
        return kinds.pop()  # type: ignore[return-value]
    return detect_layout(p)


def read_annotations(path: str | os.PathLike, format: str = "auto", images_dir: str | os.PathLike | None = None,
                     class_names: Sequence[str] | None = None) -> AnnotationExport:
    """Read an annotation export with its format's reader (``format="auto"``: :func:`detect_format`)."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt in DATASET_LAYOUTS:
        raise FormatError(path, f"is a {fmt} dataset layout, not an annotation export; read it with "
                                f"lmae_sdk.datasets.load_dataset")
    if fmt not in READERS:
        raise FormatError(path, f"unknown format {fmt!r}; expected one of {list(FORMATS)} or 'auto'")
    return READERS[fmt](path, images_dir, class_names)


def write_annotations(out: str | os.PathLike, export: AnnotationExport, completions: Iterable[Completion],
                      overwrite: bool = False) -> Written:
    """Write completions back in ``export``'s format (see each writer) into the folder ``out``."""
    return WRITERS[export.format](out, export, completions, overwrite)
