"""Label Studio brush labels in and out: its JSON export (a list of tasks) and
pre-annotation JSON (tasks with ``predictions``).

Reading (:func:`read_labelstudio`): per task, the last annotation that was not cancelled,
else (no annotation) its last prediction; its ``brushlabels`` results (``value.format``
"rle", decoded by :mod:`.brush_rle`) mark their labels' pixels; labels become classes by
name (without class names: the labels found, sorted by name); pixels of no result are
unknown (255), pixels of results of different labels are unknown and counted
(``overlap``); results of other types (boxes, polygons, key points) are skipped and counted
(``no_segmentation``); a task with no brush result is all unknown (``unannotated``).  The
image of a task is its ``data`` value (key ``image``, else its only string value) looked up
under ``images_dir`` by its path (``/data/local-files/?d=`` paths too), then its file name,
then the file name less the 8-hex-digit prefix that Label Studio gives uploads.

Writing (:func:`write_labelstudio`): ``OUT/predictions.json``, the tasks' ``data`` each with
one prediction (``model_version``, ``score``) holding one ``brushlabels`` result per class
present (with a ``score``), ready to import as pre-annotations.  Unknown pixels are in no
result and read back as unknown.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from .brush_rle import BrushRLEError, mask_to_rle, rle_to_mask
from .common import (AnnotationExport, ClassMasks, Completion, ExportItem, FormatError, FormatWarning, ItemMeta,
                     Written, atomic_folder, check_completion, check_image_size, class_index, export_file, find_image,
                     image_size, json_kind, json_ready, missing_images_error, note_overlap, region_score, write_file)

LS_OUTPUT = "predictions.json"
DEFAULT_FROM_NAME, DEFAULT_TO_NAME = "tag", "image"  # Label Studio's brush labelling template
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


@dataclass
class LabelStudioExport(AnnotationExport):
    """A read Label Studio export; ``from_name`` / ``to_name`` are the brush and image tags
    its results name (written back the same)."""

    images_dir: Path = Path(".")
    from_name: str = DEFAULT_FROM_NAME
    to_name: str = DEFAULT_TO_NAME
    _tasks: list[tuple[dict, list[dict], Path]] = field(default_factory=list, repr=False)
    _class_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self._tasks)

    def _items(self) -> Iterator[ExportItem]:
        for record, results, image_path in self._tasks:
            where = f"{self.source} (task {record.get('id')})"
            brushes = [r for r in results if _is_brush(r)]
            if len(brushes) < len(results):
                skipped = len(results) - len(brushes)
                self.warnings.append(FormatWarning("no_segmentation", where, skipped,
                                                   f"{skipped} results are not brush masks; skipped"))
            width, height = _size(brushes, where) if brushes else image_size(image_path)
            check_image_size(image_path, width, height, where)
            masks = ClassMasks(height, width)
            for r in brushes:
                try:
                    mask = rle_to_mask(r["value"]["rle"], height, width)
                except BrushRLEError as e:
                    raise FormatError(where, f"result {r.get('id')}: {e}") from None
                for name in r["value"].get("brushlabels") or []:
                    masks.add(self._class_of[name], mask)
            label, overlap = masks.label()
            note_overlap(self.warnings, where, overlap)
            if not len(masks):
                self.warnings.append(FormatWarning("unannotated", where, 1, "no brush mask: all pixels unknown"))
            meta = ItemMeta(str(record.get("id", "")), width, height, record)
            yield ExportItem(image_path, label, meta)


def _is_brush(result: dict) -> bool:
    return str(result.get("type", "")).lower() == "brushlabels" and isinstance(result.get("value"), dict) \
        and "rle" in result["value"]


def _size(results: list[dict], where: str) -> tuple[int, int]:
    sizes = {(r.get("original_width"), r.get("original_height")) for r in results}
    if len(sizes) != 1 or not all(isinstance(v, int) and v > 0 for v in next(iter(sizes))):
        raise FormatError(where, f"brush results give image sizes {sorted(sizes, key=str)}; expected one (w, h)")
    return next(iter(sizes))


def _chosen_results(task: dict, where: str) -> list[dict]:
    """The results read for a task: its last annotation not cancelled, else its last prediction."""
    for key in ("annotations", "predictions"):
        entries = task.get(key) or []
        if not isinstance(entries, list):
            raise FormatError(where, f"{key!r} is not a list")
        usable = [a for a in entries if isinstance(a, dict) and not a.get("was_cancelled")]
        if usable:
            results = usable[-1].get("result") or []
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise FormatError(where, f"{key} 'result' is not a list of objects")
            for r in results:
                if _is_brush(r) and r["value"].get("format", "rle") != "rle":
                    raise FormatError(where, f"brush result {r.get('id')} has format {r['value'].get('format')!r}; "
                                             f"expected 'rle'")
            return results
    return []


def image_reference(task: dict, where: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise FormatError(where, "task has no 'data' object")
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for v in data.values() if isinstance(v, str)]
    if len(strings) != 1:
        raise FormatError(where, f"cannot tell the image among data keys {sorted(data)}; expected key 'image'")
    return strings[0]


def locate_image(images_dir: Path, ref: str) -> Path | None:
    """The file of an image reference (URL, upload path, local-files path) under ``images_dir``."""
    url = urlparse(ref)
    names = [unquote(v) for v in parse_qs(url.query).get("d", [])] + [unquote(url.path).lstrip("/")]
    for name in names:
        base = Path(name).name
        for cand in (name, base, _UPLOAD_PREFIX.sub("", base)):
            if cand and (found := find_image(images_dir, cand)) is not None:
                return found
    return None


def _load_tasks(path: Path) -> list[dict]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(path, f"unreadable Label Studio JSON ({type(e).__name__}: {e})") from None
    if isinstance(tasks, dict) and "data" in tasks:
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise FormatError(path, "expected a list of tasks (Label Studio's JSON export)")
    if not tasks:
        raise FormatError(path, "no tasks")
    return tasks


def labelstudio_json_in(folder: Path) -> Path:
    found = [p for p in sorted(folder.glob("*.json")) if json_kind(p) == "labelstudio"]
    if len(found) != 1:
        raise FormatError(folder, f"{len(found) or 'no'} Label Studio JSON files found; name the one to read")
    return found[0]


def read_labelstudio(export: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                     class_names: Sequence[str] | None = None) -> LabelStudioExport:
    """Read a Label Studio JSON export (the file, or a folder holding one); ``images_dir``
    defaults to the JSON's folder.  Every task's image must be found (one error names the
    missing ones)."""
    path = export_file(export, labelstudio_json_in, "Label Studio export")
    tasks = _load_tasks(path)
    out = LabelStudioExport("labelstudio", path, [])
    out.images_dir = Path(images_dir) if images_dir is not None else path.parent
    chosen, names, tags = [], set(), []
    for i, task in enumerate(tasks):
        where = f"{path} (task {task.get('id', i)})"
        results = _chosen_results(task, where)
        for r in results:
            if _is_brush(r):
                labels = r["value"].get("brushlabels") or []
                if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
                    raise FormatError(where, f"result {r.get('id')}: 'brushlabels' is not a list of names")
                names |= set(labels)
                tags.append((r.get("from_name"), r.get("to_name")))
        chosen.append((task, results, image_reference(task, where)))
    out.class_names, out._class_of = class_index(sorted(names), class_names, path, used=names)
    if tags and all(tags[0]):
        out.from_name, out.to_name = tags[0]
    located = [(t, r, ref, locate_image(out.images_dir, ref)) for t, r, ref in chosen]
    missing = [ref for _, _, ref, p in located if p is None]
    if missing:
        raise missing_images_error(path, out.images_dir, missing)
    out._tasks = [({k: v for k, v in t.items() if k not in ("annotations", "predictions")}, r, p)
                  for t, r, _, p in located]  # type: ignore[misc]
    return out


def write_labelstudio(out: str | os.PathLike, export: LabelStudioExport, completions: Iterable[Completion],
                      overwrite: bool = False, model_version: str = "lmae") -> Written:
    """Write completions as Label Studio pre-annotations ``OUT/predictions.json`` (atomically)."""
    tasks = []
    with atomic_folder(out, overwrite) as tmp:
        for c in completions:
            label = check_completion(c, len(export.class_names), str(out))
            results = []
            for cls in np.unique(label).tolist():
                if cls >= len(export.class_names):
                    continue  # 255: unknown, in no result
                mask = label == cls
                result = {"id": f"{c.meta.key}-{cls}", "type": "brushlabels", "from_name": export.from_name,
                          "to_name": export.to_name, "original_width": c.meta.width,
                          "original_height": c.meta.height, "image_rotation": 0,
                          "value": {"format": "rle", "rle": mask_to_rle(mask),
                                    "brushlabels": [export.class_names[cls]]}}
                score = region_score(c.score, mask)
                if score is not None:
                    result["score"] = score
                results.append(result)
            prediction = {"model_version": model_version, "result": results}
            score = region_score(c.score, None)
            if score is not None:
                prediction["score"] = score
            tasks.append({"data": c.meta.record.get("data", {}), "predictions": [prediction]})
        write_file(tmp / LS_OUTPUT, json.dumps(json_ready(tasks)).encode())
    return Written(Path(out), Path(out) / LS_OUTPUT, len(tasks), [])
