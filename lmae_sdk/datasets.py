"""Dataset layouts on disk -> lists of (image, label) file pairs, class names, palette.

Supported: folder pairs ``ROOT/{split}/{images,labels}`` (same stem, optional
``classes.json``), Pascal VOC (``JPEGImages``, ``SegmentationClass``,
``ImageSets/Segmentation/{split}.txt``), Cityscapes (``leftImg8bit/{split}``,
``gtFine/{split}/*_labelTrainIds.png``) and splits given as annotation-tool exports
(``coco``, ``cvat``, ``labelstudio``: :mod:`lmae_sdk.formats.dataset`, converted once into
label PNGs in a cache folder).  255 = void / unknown everywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .labels import IMAGE_EXTS

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]


LAYOUTS = ("folder", "voc", "cityscapes", "coco", "cvat", "labelstudio")  # --layout (and auto)


class DatasetError(ValueError):
    pass


@dataclass
class DatasetInfo:
    root: Path
    layout: str
    class_names: list[str]
    palette: list[list[int]] | None = None
    background_index: int | None = None  # the class named background (VOC: 0), else None
    pairs: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # rules a reader applied, e.g. "train: 3 unannotated"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def voc_colour(index: int) -> list[int]:
    """The Pascal VOC palette's colour of ``index`` (its bits spread over r, g and b)."""
    r = g = b = 0
    c = index
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return [r, g, b]


def _voc_palette(n: int = 256) -> list[list[int]]:
    return [voc_colour(i) for i in range(n)]


def detect_layout(root: Path) -> str:
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    return "folder"


def pair_folder(images_dir: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    """Pairs by stem; unpaired files, and a stem that two images (or labels) share, are an
    error that names them."""
    from .inputs import ambiguous_stems, stem_clash

    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: missing images folder")
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: missing labels folder")
    for folder, exts, what in ((images_dir, IMAGE_EXTS, "images"), (labels_dir, (".png",), "labels")):
        clashes = ambiguous_stems(folder, exts)
        if clashes:
            stem, files = next(iter(clashes.items()))
            more = f" ({len(clashes) - 1} more stems like it)" if len(clashes) > 1 else ""
            raise DatasetError(f"{folder}: {stem_clash(stem, files, what)}{more}")
    imgs = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    labs = {p.stem: p for p in sorted(labels_dir.iterdir()) if p.suffix.lower() == ".png"}
    no_label = sorted(set(imgs) - set(labs))
    no_image = sorted(set(labs) - set(imgs))
    if no_label or no_image:
        raise DatasetError(f"{images_dir.parent}: unpaired files: images without label {no_label[:5]}"
                           f"{'...' if len(no_label) > 5 else ''}, labels without image {no_image[:5]}"
                           f"{'...' if len(no_image) > 5 else ''}")
    if not imgs:
        raise DatasetError(f"{images_dir}: no images")
    return [(imgs[s], labs[s]) for s in sorted(imgs)]


def read_classes_json(path: Path) -> tuple[list[str], list[list[int]] | None]:
    """A folder dataset's ``classes.json``: its class names and palette (None without one)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object with a 'classes' list, found a {type(meta).__name__}")
    names, palette = meta.get("classes"), meta.get("palette")
    if names is None:
        raise DatasetError(f"{path}: no 'classes' list (the class names, in id order)")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: 'classes' must be a list of class names (strings), got {str(names)[:80]}")
    if palette is not None and not (isinstance(palette, list) and all(
            isinstance(c, list) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c)
            for c in palette)):
        raise DatasetError(f"{path}: 'palette' must be a list of [r, g, b] colours (integers 0..255), "
                           f"got {str(palette)[:80]}")
    return names, palette


def dataset_layout(root: Path) -> str:
    """``--layout auto``: an annotation export in ``ROOT/train`` (COCO or Label Studio JSON,
    CVAT ``labelmap.txt``) names its format; otherwise :func:`detect_layout`."""
    from .formats.dataset import split_format

    return split_format(root / "train") or detect_layout(root)


def load_dataset(root: str | Path, splits: tuple[str, ...] = ("train", "val"), layout: str = "auto",
                 cache_dir: str | Path | None = None) -> DatasetInfo:
    """The dataset at ``root`` in ``layout`` (auto: :func:`dataset_layout`).  ``cache_dir``:
    where splits given as annotation exports are converted to label PNGs (default:
    :func:`lmae_sdk.formats.dataset.default_cache_dir`)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    layout = dataset_layout(root) if layout == "auto" else layout
    if layout in ("coco", "cvat", "labelstudio"):
        from .formats.dataset import load_export_dataset

        return load_export_dataset(root, splits, layout, None if cache_dir is None else Path(cache_dir))
    if layout == "folder":
        names, palette = None, None
        cj = root / "classes.json"
        if cj.is_file():
            names, palette = read_classes_json(cj)
        info = DatasetInfo(root, layout, names or [], palette)
        for s in splits:
            if not (root / s).is_dir():
                raise DatasetError(f"{root}: missing split folder {s!r} (expected {root / s / 'images'})")
            info.pairs[s] = pair_folder(root / s / "images", root / s / "labels")
        if not info.class_names:
            raise DatasetError(f"{root}: no classes.json; write one with a 'classes' list")
        bg = [i for i, n in enumerate(info.class_names) if n.lower() == "background"]
        info.background_index = bg[0] if bg else None
        return info
    if layout == "voc":
        info = DatasetInfo(root, layout, list(VOC_CLASSES), _voc_palette()[:21], background_index=0)
        for s in splits:
            lst = root / "ImageSets" / "Segmentation" / f"{s}.txt"
            if not lst.is_file():
                raise DatasetError(f"{lst}: missing split list")
            stems = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
            pairs = [(root / "JPEGImages" / f"{t}.jpg", root / "SegmentationClass" / f"{t}.png") for t in stems]
            missing = [str(p) for pr in pairs for p in pr if not p.is_file()]
            if missing:
                raise DatasetError(f"{lst}: {len(missing)} listed files missing, e.g. {missing[:3]}")
            info.pairs[s] = pairs
        return info
    if layout == "cityscapes":
        info = DatasetInfo(root, layout, list(CITYSCAPES_CLASSES), None)
        for s in splits:
            idir = root / "leftImg8bit" / s
            if not idir.is_dir():
                raise DatasetError(f"{idir}: missing split folder")
            pairs = []
            for img in sorted(idir.rglob("*_leftImg8bit.png")):
                stem = img.name[: -len("_leftImg8bit.png")]
                lab = root / "gtFine" / s / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
                if not lab.is_file():
                    raise DatasetError(f"{img}: no label {lab} (run cityscapesscripts createTrainIdLabelImgs)")
                pairs.append((img, lab))
            if not pairs:
                raise DatasetError(f"{idir}: no images")
            info.pairs[s] = pairs
        return info
    raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {list(LAYOUTS)} or 'auto'")
