"""Dataset splits given as annotation-tool exports (layouts ``coco``, ``cvat``,
``labelstudio`` of :func:`lmae_sdk.datasets.load_dataset`).

A split folder ``DATA/<split>/`` holds one export:

* ``coco``: ``instances.json`` (any one COCO JSON in the folder or its ``annotations/``;
  panoptic: ``panoptic.json`` + the ``panoptic/`` PNGs) and the images in ``images/``;
* ``labelstudio``: one Label Studio JSON export and the images in ``images/`` (else beside it);
* ``cvat``: an unzipped CVAT "Segmentation mask 1.1" export (``labelmap.txt``,
  ``SegmentationClass/``, ``ImageSets/Segmentation/``, ``JPEGImages/``).

The classes: ``DATA/classes.json`` (``classes``, optional ``palette``) when present, else
those of the train split's export (COCO categories in id order, the CVAT labelmap less
"background", the Label Studio labels sorted by name); every split is read with that list
and a category outside it is an error naming it.  Pixels no annotation covers are unknown
(255): partial labels are what completion models learn from.

Each split is converted once into 8-bit label PNGs in a cache folder (the inputs are never
written to; DATA may be read-only): ``load_dataset``'s ``cache_dir``, else ``$LMAE_CACHE_DIR``,
else ``$XDG_CACHE_HOME/lmae`` (``~/.cache/lmae``), else a folder in the system's temp
folder.  A conversion is keyed by the split's annotation files (paths, sizes, modification
times; the images are not part of it), the class list and the reader's version, and is
finished when its ``index.json`` is there (written last, the folder renamed into place), so
every later load (train, calibrate, each stage of a fit) reuses it; deleting the cache
only costs a new conversion.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..datasets import DatasetError, DatasetInfo, read_classes_json
from ..labels import encode_png
from .common import json_kind
from .cvat import LABELMAP

EXPORT_LAYOUTS = ("coco", "cvat", "labelstudio")
CACHE_ENV = "LMAE_CACHE_DIR"
CONVERSION_VERSION = 1  # bump when a reader's output changes: older conversions are then not reused
INDEX = "index.json"
IMAGE_FOLDERS = ("images", "JPEGImages")  # not part of a split's fingerprint


def split_format(split: Path) -> str | None:
    """The export format a split folder holds, None when it holds none (a folder-layout
    split, with ``labels/``, never does)."""
    if not split.is_dir() or (split / "labels").is_dir():
        return None
    if (split / LABELMAP).is_file():
        return "cvat"
    kinds = {json_kind(p) for sub in (split, split / "annotations") if sub.is_dir()
             for p in sub.glob("*.json") if not p.name.startswith(".")} - {None}
    if len(kinds) > 1:
        raise DatasetError(f"{split}: holds both {sorted(kinds)} JSON files; keep one export per split")
    return kinds.pop() if kinds else None


def default_cache_dir() -> Path:
    """Where conversions go by default (see the module's docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmae"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"lmae-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def annotation_fingerprint(path: Path) -> str:
    """What an export's annotations are, cheaply: for a folder, sha256 over its files outside
    its image folders (relative path, size, modification time); for a file (a JSON), sha256
    of its bytes, plus the folder of the same name beside it (a panoptic export's PNGs)."""
    h = hashlib.sha256()
    folder = path
    if path.is_file():
        h.update(hashlib.sha256(path.read_bytes()).digest())
        folder = path.with_suffix("")
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if p.is_file() and rel.parts[0] not in IMAGE_FOLDERS and not p.name.startswith("."):
                st = p.stat()
                h.update(f"{rel.as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class ConvertedSplit:
    """A split's conversion: the classes its labels index, their colours (or None), the
    (image, label PNG) pairs and the reader's warnings ({kind: count})."""

    class_names: list[str]
    palette: list[list[int]] | None
    pairs: list[tuple[Path, Path]]
    warnings: dict[str, int]


def _read_index(folder: Path) -> ConvertedSplit | None:
    try:
        data = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        pairs = [(Path(img), folder / lab) for img, lab in data["pairs"]]
        return ConvertedSplit(list(data["class_names"]), data.get("palette"), pairs, dict(data.get("warnings", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unfinished: converted again


def _convert(split: Path, fmt: str, class_names: Sequence[str] | None, folder: Path) -> None:
    """Read the split's export and write its label PNGs and index.json into ``folder``."""
    from ..extras import MissingExtra
    from . import read_annotations

    images = split / "images" if (split / "images").is_dir() else None
    try:
        export = read_annotations(split, fmt, images, class_names)
        pairs, used = [], set()
        for i, item in enumerate(export):
            name = item.image_path.stem if item.image_path.stem not in used else f"{item.image_path.stem}~{i}"
            used.add(name)
            (folder / f"{name}.png").write_bytes(encode_png(item.partial))
            pairs.append([str(item.image_path.resolve()), f"{name}.png"])
    except (ValueError, MissingExtra) as e:  # FormatError names the file and the problem
        raise DatasetError(f"{split} ({fmt} layout): {e}") from None
    if not pairs:
        raise DatasetError(f"{split} ({fmt} layout): the export lists no image")
    index = {"format": fmt, "source": str(split), "class_names": export.class_names, "palette": export.palette,
             "warnings": export.warning_counts(), "pairs": pairs}
    (folder / INDEX).write_text(json.dumps(index), encoding="utf-8")


def converted_split(split: Path, fmt: str, class_names: Sequence[str] | None, cache: Path) -> ConvertedSplit:
    """The split's conversion from the cache, made first when missing."""
    split = split.resolve()
    key = hashlib.sha256(json.dumps([CONVERSION_VERSION, fmt, str(split), annotation_fingerprint(split),
                                     list(class_names) if class_names is not None else None]).encode()).hexdigest()
    target = cache / f"{split.parent.name}-{split.name}-{key[:20]}"
    found = _read_index(target)
    if found is not None and all(img.is_file() for img, _ in found.pairs):
        return found
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache))
    except OSError as e:
        raise DatasetError(f"{cache}: cannot write the converted labels there ({e.strerror or e}); set "
                           f"{CACHE_ENV} to a writable folder") from None
    try:
        _convert(split, fmt, class_names, tmp)
        os.chmod(tmp, 0o755)
        if target.exists():  # an unfinished or stale conversion (images moved): replaced
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first: use it
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _read_index(target)
    if found is None:
        raise DatasetError(f"{target}: the converted labels of {split} could not be stored")
    missing = [str(img) for img, _ in found.pairs if not img.is_file()]
    if missing:
        raise DatasetError(f"{split}: {len(missing)} images of the export are missing, e.g. {missing[:3]}")
    return found


def load_export_dataset(root: Path, splits: Sequence[str], fmt: str, cache_dir: Path | None = None) -> DatasetInfo:
    """:func:`lmae_sdk.datasets.load_dataset` for a dataset whose splits are ``fmt`` exports."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    names: list[str] | None = None
    palette = None
    if (root / "classes.json").is_file():
        names, palette = read_classes_json(root / "classes.json")
    order = list(splits) if names is not None else ["train", *[s for s in splits if s != "train"]]
    info = DatasetInfo(root, fmt, [], palette)
    for s in order:
        split = root / s
        if not split.is_dir():
            why = "" if s in splits else " (its export gives the classes: or write DATA/classes.json)"
            raise DatasetError(f"{root}: missing split folder {s!r}{why}")
        found = split_format(split)
        if found != fmt:
            raise DatasetError(f"{split}: holds {'a ' + found + ' export' if found else 'no annotation export'}; "
                               f"the {fmt} layout expects one in every split")
        conv = converted_split(split, fmt, names, cache)
        if names is None:
            names, info.palette = conv.class_names, conv.palette
        if s in splits:
            info.pairs[s] = conv.pairs
            info.notes += [f"{s}: {count} {kind}" for kind, count in sorted(conv.warnings.items())]
    info.class_names = list(names or [])
    bg = [i for i, n in enumerate(info.class_names) if n.lower() == "background"]
    info.background_index = bg[0] if bg else None
    return info
