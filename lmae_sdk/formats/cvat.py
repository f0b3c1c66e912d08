"""CVAT "Segmentation mask 1.1" exports in and out.

The layout (CVAT's docs, "Segmentation Mask" format)::

    labelmap.txt                     # "label:r,g,b:parts:actions" lines, '#' comments
    ImageSets/Segmentation/<subset>.txt  # item names without extension (default.txt)
    SegmentationClass/<name>.png     # class colours (RGB or palette), or labelmap line indices (grey)
    SegmentationObject/<name>.png    # instances (not read: the classes are what completion needs)
    JPEGImages/<name>.jpg            # when exported with images

Colour rule.  CVAT paints every pixel that no shape covers in the colour of its
"background" label (``background:0,0,0::`` as CVAT writes it; black when the labelmap has no
label named background).  That colour therefore means "not annotated": its pixels are unknown
(255), unless the class list names the label of that colour, in which case they are that
class (a VOC-style model whose classes include "background" accepts that unannotated pixels
are background).  Without class names the classes are the labelmap's labels less
"background".  Every other colour maps to its label, by name, to the class of that name;
a colour missing from the labelmap, or whose label is not a class, is an error naming the
PNG.  Items listed in ImageSets without a PNG or an image are an error naming them.  An
export without labelmap.txt is a Pascal VOC layout (format ``voc``), not read here.

Writing: the same layout under ``OUT`` (labelmap.txt as read, a line added for a class it
lacked; RGB PNGs; the subset lists); pixels still unknown get the "not annotated" colour
(counted as ``unknown_written`` when that colour is a class, and so reads back as it).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..datasets import voc_colour
from ..labels import UNKNOWN
from .common import (AnnotationExport, Completion, ExportItem, FormatError, FormatWarning, ItemMeta, Written,
                     atomic_folder, check_completion, check_image_size, class_index, find_image,
                     missing_images_error, write_file)

LABELMAP = "labelmap.txt"
LABELMAP_HEADER = "# label:color_rgb:parts:actions"
MASKS = "SegmentationClass"
SUBSETS = Path("ImageSets") / "Segmentation"
UNANNOTATED_LABEL = "background"


@dataclass(frozen=True)
class LabelmapEntry:
    name: str
    rgb: tuple[int, int, int]
    line: str  # as written, to write back unchanged


def read_labelmap(path: Path) -> list[LabelmapEntry]:
    """The labelmap's labels in order (a label's line index is its grey-mask value)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"unreadable labelmap ({type(e).__name__}: {e})") from None
    entries: list[LabelmapEntry] = []
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.strip().split(":")
        try:
            rgb = tuple(int(v) for v in fields[1].split(","))
        except (IndexError, ValueError):
            rgb = ()
        if len(fields) < 2 or not fields[0] or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise FormatError(path, f"line {no} {line!r}: expected 'label:r,g,b:parts:actions'")
        entries.append(LabelmapEntry(fields[0], rgb, line.strip()))  # type: ignore[arg-type]
    for attr in ("name", "rgb"):
        values = [getattr(e, attr) for e in entries]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise FormatError(path, f"labels with the same {'name' if attr == 'name' else 'colour'}: {dup}")
    if not entries:
        raise FormatError(path, "no labels")
    return entries


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.int64)
    return rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]


@dataclass
class CvatExport(AnnotationExport):
    """A read CVAT mask export."""

    images_dir: Path | None = None
    labelmap: list[LabelmapEntry] = field(default_factory=list)
    unannotated_rgb: tuple[int, int, int] = (0, 0, 0)
    entry_class: list[int] = field(default_factory=list)  # per labelmap line: class id, 255, or -1 (not a class)
    _items_list: list[tuple[str, str, Path, Path]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self._items_list)

    def _items(self) -> Iterator[ExportItem]:
        for name, subset, mask_path, image_path in self._items_list:
            label = self._label(mask_path)
            meta = ItemMeta(name, label.shape[1], label.shape[0], {"name": name, "subset": subset})
            check_image_size(image_path, meta.width, meta.height, str(mask_path))
            if (label == UNKNOWN).all():
                self.warnings.append(FormatWarning("unannotated", str(mask_path), 1, "no annotation: all unknown"))
            yield ExportItem(image_path, label, meta)

    def _label(self, mask_path: Path) -> np.ndarray:
        try:
            with Image.open(mask_path) as im:
                grey = im.mode in ("L", "I", "I;16")  # values are labelmap line indices
                values = np.asarray(im if grey else im.convert("RGB"))
        except Exception as e:  # Pillow raises many types for truncated files
            raise FormatError(mask_path, f"unreadable mask ({type(e).__name__}: {e})") from None
        if grey:
            keys, entry_of = values.astype(np.int64), {i: i for i in range(len(self.labelmap))}
        else:
            keys, entry_of = _pack(values), {int(_pack(e.rgb)): i for i, e in enumerate(self.labelmap)}
        uniq, inverse = np.unique(keys, return_inverse=True)
        lut = np.empty(len(uniq), np.uint8)
        for i, key in enumerate(uniq.tolist()):
            entry = entry_of.get(key)
            if entry is None and not grey and key == int(_pack(self.unannotated_rgb)):
                lut[i] = UNKNOWN  # black without a background label: not annotated
                continue
            if entry is None:
                what = f"value {key}" if grey else f"colour {((key >> 16) & 255, (key >> 8) & 255, key & 255)}"
                raise FormatError(mask_path, f"{what} is not in {LABELMAP} ({len(self.labelmap)} labels)")
            cls = self.entry_class[entry]
            if cls < 0:
                raise FormatError(mask_path, f"label {self.labelmap[entry].name!r} is not among the class names "
                                             f"{self.class_names}")
            lut[i] = cls
        return lut[inverse.reshape(keys.shape)]


def _item_names(root: Path) -> list[tuple[str, str]]:
    """(name, subset) of the listed items; without lists, every mask PNG as subset default."""
    lists = sorted((root / SUBSETS).glob("*.txt")) if (root / SUBSETS).is_dir() else []
    if not lists:
        return [(p.relative_to(root / MASKS).with_suffix("").as_posix(), "default")
                for p in sorted((root / MASKS).rglob("*.png"))]
    seen: dict[str, str] = {}
    for lst in lists:
        for line in lst.read_text(encoding="utf-8").splitlines():
            name = line.strip().split(" ")[0] if line.strip() else ""
            if name:
                seen.setdefault(name, lst.stem)
    return list(seen.items())


def read_cvat(export: str | os.PathLike, images_dir: str | os.PathLike | None = None,
              class_names: Sequence[str] | None = None) -> CvatExport:
    """Read a CVAT Segmentation mask 1.1 export folder (unzipped); ``images_dir`` defaults to
    the export's ``JPEGImages``; ``class_names`` default to the labelmap's labels less
    "background" (see the module's colour rule)."""
    root = Path(export)
    if root.is_file() and root.name == LABELMAP:
        root = root.parent
    if not (root / LABELMAP).is_file():
        raise FormatError(root, f"no {LABELMAP}: not a CVAT mask export (a folder without one is Pascal VOC)")
    if not (root / MASKS).is_dir():
        raise FormatError(root, f"no {MASKS} folder")
    entries = read_labelmap(root / LABELMAP)
    names = [e.name for e in entries]
    bg = [e for e in entries if e.name.lower() == UNANNOTATED_LABEL]
    unannotated_rgb = bg[0].rgb if bg else (0, 0, 0)
    unannotated = [e.name for e in entries if e.rgb == unannotated_rgb]
    default = [n for n in names if n.lower() != UNANNOTATED_LABEL]
    out = CvatExport("cvat", root, [], unannotated_rgb=unannotated_rgb, labelmap=entries)
    # labels that are not classes fail only where a mask uses them (projects hold box-only labels too)
    out.class_names, index = class_index(default if class_names is None else names, class_names, root / LABELMAP,
                                         used=set())
    out.entry_class = [index[e.name] if e.name in index else (UNKNOWN if e.name in unannotated else -1)
                       for e in entries]
    palette = {index[e.name]: list(e.rgb) for e in entries if e.name in index}
    taken = [e.rgb for e in entries]
    for c in range(len(out.class_names)):  # a class the labelmap lacks gets a colour no label has
        if c not in palette:
            palette[c] = new_colour(c, taken)
            taken.append(tuple(palette[c]))
    out.palette = [palette[c] for c in range(len(out.class_names))]
    out.images_dir = Path(images_dir) if images_dir is not None else root / "JPEGImages"
    items = _item_names(root)
    if not items:
        raise FormatError(root, f"no items: no ImageSets lists and no {MASKS} PNGs")
    no_mask = [n for n, _ in items if not (root / MASKS / f"{n}.png").is_file()]
    if no_mask:
        raise FormatError(root / SUBSETS, f"{len(no_mask)} listed items have no {MASKS} PNG: {no_mask[:10]}")
    if not out.images_dir.is_dir():
        raise FormatError(root, f"images folder {out.images_dir} not found (export with images, or name the folder)")
    located = [(n, s, find_image(out.images_dir, n)) for n, s in items]
    missing = [n for n, _, p in located if p is None]
    if missing:
        raise missing_images_error(root, out.images_dir, missing)
    out._items_list = [(n, s, root / MASKS / f"{n}.png", p) for n, s, p in located]  # type: ignore[misc]
    return out


def new_colour(class_id: int, taken: Iterable[Sequence[int]]) -> list[int]:
    """A colour no label has: the Pascal VOC colour of the first free index from ``class_id``."""
    taken_set = {tuple(t) for t in taken} | {(0, 0, 0)}
    i = class_id + 1
    while tuple(voc_colour(i)) in taken_set:
        i += 1
    return voc_colour(i)


def _png_rgb(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def write_cvat(out: str | os.PathLike, export: CvatExport, completions: Iterable[Completion],
               overwrite: bool = False) -> Written:
    """Write completions as a CVAT Segmentation mask 1.1 folder ``out`` (atomically), ready
    to zip and import."""
    out = Path(out)
    lines = [LABELMAP_HEADER] + [e.line for e in export.labelmap]
    named = {e.name for e in export.labelmap}
    for cls, name in enumerate(export.class_names):
        if name not in named:
            lines.append(f"{name}:{','.join(str(v) for v in export.palette[cls])}::")  # type: ignore[index]
    colours = np.array(list(export.palette or []) + [[0, 0, 0]] * (256 - len(export.palette or [])), np.uint8)
    colours[UNKNOWN] = export.unannotated_rgb
    unknown_is_class = any(e.rgb == export.unannotated_rgb and 0 <= cls != UNKNOWN
                           for e, cls in zip(export.labelmap, export.entry_class))
    subsets: dict[str, list[str]] = {}
    warnings: list[FormatWarning] = []
    with atomic_folder(out, overwrite) as tmp:
        write_file(tmp / LABELMAP, ("\n".join(lines) + "\n").encode())
        for c in completions:
            label = check_completion(c, len(export.class_names), str(out))
            name = str(c.meta.record.get("name", c.meta.key))
            unknown = int((label == UNKNOWN).sum())
            if unknown and unknown_is_class:
                warnings.append(FormatWarning("unknown_written", name, unknown,
                                              f"{unknown} unknown pixels written in the colour of a class"))
            write_file(tmp / MASKS / f"{name}.png", _png_rgb(colours[label]))
            subsets.setdefault(str(c.meta.record.get("subset", "default")), []).append(name)
        for subset, names in subsets.items():
            write_file(tmp / SUBSETS / f"{subset}.txt", ("\n".join(names) + "\n").encode())
    return Written(out, out / LABELMAP, sum(len(v) for v in subsets.values()), warnings)
