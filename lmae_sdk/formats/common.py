"""What every annotation-tool format shares: the error, the warnings a reader counts, the
items it yields, what a writer is given, class matching, the overlap rule, region scores,
finding images, and atomic output folders.

Numpy and Pillow only; the formats' own libraries (pycocotools) load inside their modules.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..labels import IMAGE_EXTS, UNKNOWN, InputError


class FormatError(InputError):
    """An annotation export that cannot be read as its format says (or output that cannot be
    written); the message names the file and the problem.  A ``ValueError``, as every bad
    input of the SDK is."""


@dataclass(frozen=True)
class FormatWarning:
    """Something a reader handled by a documented rule rather than refused: ``kind`` is one of
    ``overlap`` (pixels claimed by two classes, made unknown), ``clipped`` (polygons reaching
    outside the image, clipped), ``unannotated`` (an image with no annotation: all unknown),
    ``unused_category`` (a category outside the class list that no annotation uses),
    ``unknown_written`` (a writer found unknown pixels its format cannot mark as unknown);
    ``count`` is pixels, polygons or images as the kind says; ``where`` names the image or file."""

    kind: str
    where: str
    count: int
    message: str


@dataclass(frozen=True)
class ItemMeta:
    """What a writer needs to write one image back: ``key`` (the image's id in the export:
    COCO image id, CVAT item name, Label Studio task id), its size, and ``record``, the
    export's own record of the image (COCO image entry, Label Studio task, CVAT ``{"name"}``)."""

    key: str
    width: int
    height: int
    record: dict = field(default_factory=dict, compare=False)


class ExportItem(NamedTuple):
    """One image of an export: its file, its partial label (H, W) uint8 with 255 = unknown,
    and what writing it back needs."""

    image_path: Path
    partial: np.ndarray
    meta: ItemMeta


class Completion(NamedTuple):
    """A completed label to write back: the item's ``meta``, the label (H, W) uint8 (255 =
    still unknown) and an optional ``score``: a float (the image's score, given to each of
    its annotations) or an (H, W) confidence in [0, 1] (each annotation scores the mean
    confidence of its pixels, the image the mean of all)."""

    meta: ItemMeta
    label: np.ndarray
    score: float | np.ndarray | None = None


@dataclass(frozen=True)
class Written:
    """What a writer wrote: the output folder, the main file in it, images written, and
    warnings (``unknown_written``)."""

    folder: Path
    main_file: Path
    images: int
    warnings: list[FormatWarning]


@dataclass
class AnnotationExport:
    """A read export: its format, the class names that the partial labels' ids index, the
    colours where the format has them, and the warnings counted so far.  Iterating yields
    :class:`ExportItem` one image at a time (masks are decoded lazily); warnings grow as it
    goes.  Subclasses hold what their writer needs."""

    format: str
    source: Path
    class_names: list[str]
    palette: list[list[int]] | None = None
    warnings: list[FormatWarning] = field(default_factory=list)

    def __iter__(self) -> Iterator[ExportItem]:
        return self._items()

    def _items(self) -> Iterator[ExportItem]:  # pragma: no cover - every format overrides it
        raise NotImplementedError

    def warning_counts(self) -> dict[str, int]:
        """{kind: summed count} of the warnings so far."""
        totals: Counter = Counter()
        for w in self.warnings:
            totals[w.kind] += w.count
        return dict(totals)


def class_index(export_names: Iterable[str], class_names: Sequence[str] | None, where: Path | str,
                used: set[str] | None = None, warnings: list[FormatWarning] | None = None
                ) -> tuple[list[str], dict[str, int]]:
    """(class names, {export name: class id}).  Without ``class_names`` the export's names are
    the classes, in the export's order.  With them, names match exactly; an export name that
    is not a class is an error when annotations use it (``used``, None = all are used), and a
    ``unused_category`` warning otherwise."""
    export_names = list(export_names)
    if class_names is None:
        dup = sorted({n for n in export_names if export_names.count(n) > 1})
        if dup:
            raise FormatError(where, f"category names {dup} appear more than once")
        return list(export_names), {n: i for i, n in enumerate(export_names)}
    names = list(class_names)
    index = {n: i for i, n in enumerate(names)}
    outside = [n for n in dict.fromkeys(export_names) if n not in index]
    bad = [n for n in outside if used is None or n in used]
    if bad:
        raise FormatError(where, f"categories {bad} are not among the class names {names}")
    if outside and warnings is not None:
        warnings.append(FormatWarning("unused_category", str(where), len(outside),
                                      f"categories {outside} are not classes; no annotation uses them"))
    return names, index


class ClassMasks:
    """Masks of one image, class by class, merged by the overlap rule: a pixel claimed by one
    class has that class, by two or more different classes is unknown (counted), by none is
    unknown."""

    def __init__(self, height: int, width: int) -> None:
        self.shape = (height, width)
        self._masks: dict[int, np.ndarray] = {}

    def add(self, class_id: int, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape:
            raise ValueError(f"mask shape {mask.shape} is not the image's {self.shape}")
        prev = self._masks.get(class_id)
        self._masks[class_id] = mask.copy() if prev is None else (prev | mask)

    def __len__(self) -> int:
        return len(self._masks)

    def label(self) -> tuple[np.ndarray, int]:
        """(label (H, W) uint8, 255 = unknown; pixels made unknown by overlaps)."""
        label = np.full(self.shape, UNKNOWN, np.uint8)
        claims = np.zeros(self.shape, np.uint8)
        for class_id, mask in self._masks.items():
            label[mask] = class_id
            claims += mask
        overlap = claims > 1
        label[overlap] = UNKNOWN
        return label, int(overlap.sum())


def note_overlap(warnings: list[FormatWarning], where: str, pixels: int) -> None:
    if pixels:
        warnings.append(FormatWarning("overlap", where, pixels,
                                      f"{pixels} pixels annotated with different classes are unknown"))


def region_score(score: float | np.ndarray | None, mask: np.ndarray | None) -> float | None:
    """The score of one annotation: a float score as it is, the mean confidence over ``mask``
    (the whole image when None) of a confidence array, None without a score."""
    if score is None:
        return None
    if np.ndim(score) == 0:
        return round(float(score), 6)
    conf = np.asarray(score, np.float64)
    values = conf if mask is None else conf[mask]
    return round(float(values.mean()), 6) if values.size else None


def check_completion(c: Completion, num_classes: int, where: str) -> np.ndarray:
    """The completion's label, checked against its item's size and the class count."""
    label = np.asarray(c.label)
    if label.shape != (c.meta.height, c.meta.width) or label.dtype != np.uint8:
        raise FormatError(where, f"completed label {label.shape} {label.dtype} for image {c.meta.key}; expected "
                                 f"({c.meta.height}, {c.meta.width}) uint8")
    bad = (label >= num_classes) & (label != UNKNOWN)
    if bad.any():
        raise FormatError(where, f"completed label of image {c.meta.key} has class ids "
                                 f"{sorted(np.unique(label[bad]).tolist())[:5]} >= {num_classes}")
    if c.score is not None and np.ndim(c.score) != 0 and np.shape(c.score) != label.shape:
        raise FormatError(where, f"confidence {np.shape(c.score)} for image {c.meta.key}; expected {label.shape}")
    return label


def export_file(path: str | os.PathLike, json_in: Callable[[Path], Path], what: str) -> Path:
    """The export's JSON: ``path`` itself, or the one ``json_in`` finds in the folder ``path``;
    a FormatError naming ``what`` when there is none."""
    path = Path(path)
    if path.is_dir():
        path = json_in(path)
    if not path.is_file():
        raise FormatError(path, f"{what} not found")
    return path


def find_image(images_dir: Path, name: str) -> Path | None:
    """The image ``name`` (a relative path or file name, with or without its extension)
    under ``images_dir``: the path as given, its file name alone, else an image file of that
    name plus an image extension, or of the same stem."""
    rel = Path(name.replace("\\", "/"))
    for p in (images_dir / rel, images_dir / rel.name):
        if p.is_file():
            return p
    for ext in IMAGE_EXTS:
        for p in (images_dir / rel.parent / (rel.name + ext), images_dir / (rel.name + ext),
                  images_dir / rel.with_suffix(ext), images_dir / (rel.stem + ext)):
            if p.is_file():
                return p
    return None


def missing_images_error(where: Path | str, images_dir: Path, missing: list[str]) -> FormatError:
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return FormatError(where, f"{len(missing)} listed images missing from {images_dir}: {missing[:10]}{more}")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image file's header."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # Pillow raises many types for non-image files
        raise FormatError(path, f"unreadable image ({type(e).__name__}: {e})") from None


def check_image_size(path: Path, width: int, height: int, where: str) -> None:
    w, h = image_size(path)
    if (w, h) != (width, height):
        raise FormatError(where, f"image {path} is {w}x{h}, the annotations say {width}x{height}")


@contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling folder to write into; on success it is renamed to ``out`` at once
    (readers never see half an output).  An existing non-empty ``out`` is an error unless
    ``overwrite``, when it is moved aside and removed after the rename.  On failure the
    temporary folder is removed and ``out`` is left as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FormatError(out, "output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FormatError(out, "output folder exists and is not empty (overwrite=True replaces it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; outputs are meant to be shared
        old = None
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file(path: Path, data: bytes) -> None:
    """A file inside a folder made by :func:`atomic_folder` (the folder's rename is the atomic
    step), readable by all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


_COCO_KEYS = (b'"images"', b'"annotations"', b'"categories"')


def json_kind(path: Path, peek: int = 1 << 16) -> str | None:
    """``"coco"`` (an object naming images, annotations or categories near its start),
    ``"labelstudio"`` (a list, as Label Studio exports are) or None, from the file's first
    bytes (a large export is not parsed twice)."""
    try:
        with open(path, "rb") as f:
            head = f.read(peek).lstrip()
    except OSError:
        return None
    if head.startswith(b"["):
        return "labelstudio"
    if head.startswith(b"{") and any(k in head for k in _COCO_KEYS):
        return "coco"
    return None


def json_ready(value: Any) -> Any:
    """numpy scalars and arrays inside ``value`` as plain Python (for json.dumps)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
