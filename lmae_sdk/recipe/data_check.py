"""The data check of ``lmae fit``: every pair of both splits is looked at before any training.

Every label is read fully (8-bit single-channel or palette, class ids within the class list,
255 = unknown); of every image only the header is read (its size, and whether Pillow knows
the file), plus its last bytes: a PNG or JPEG that lacks its end marker is decoded to tell a
truncated file from one with trailing data.  The check collects every problem, one line
naming the file, and :func:`check_dataset` raises one :class:`DatasetError` with them; a
label without any known pixel is a warning, a split without any known pixel a problem.

It also counts what the plan reports: each split's share of known pixels, the share of its
class-boundary pixels that are unknown, which of its labels are complete
(:func:`lmae_sdk.degrade.complete_boundaries`), and the train split's commonest image size.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lmae_sdk.datasets import DatasetError, DatasetInfo
from lmae_sdk.degrade import complete_boundaries, unlabelled_boundary_pixels
from lmae_sdk.labels import UNKNOWN, InputError, read_image, read_label
from lmae_sdk.recipe.plan import DataFacts

MAX_LISTED_PROBLEMS = 20
MIN_CLASSES = 2
MAX_CLASSES = UNKNOWN  # 8-bit labels: ids 0..254, 255 is unknown
TAIL_BYTES = 64
END_MARKERS = {".png": b"IEND", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9"}


@dataclass
class DataReport:
    """What the check found: the plan's facts, each split's share of known pixels, the
    problems (each a line naming its file) and the warnings."""

    num_classes: int
    train: int
    val: int
    image_size: tuple[int, int]  # the train split's commonest (h, w); (0, 0) when no train label was readable
    known_share: dict[str, float]  # split -> share of its label pixels that are not unknown (255)
    classes_in_train: list[int]  # the class ids the train labels hold
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    boundaries_unknown: dict[str, float] = field(default_factory=dict)  # split -> unknown share of boundary pixels
    complete_labels: dict[str, list[int]] = field(default_factory=dict)  # split -> indices of its complete labels

    def facts(self) -> DataFacts:
        return DataFacts(self.num_classes, self.train, self.val, self.image_size, dict(self.known_share),
                         dict(self.boundaries_unknown), {k: list(v) for k, v in self.complete_labels.items()})


@dataclass
class _PairResult:
    problems: list[str]
    size: tuple[int, int] | None = None  # the label's (h, w), when readable
    counts: np.ndarray | None = None  # pixels per label value (256), when readable
    boundary: tuple[int, int] = (0, 0)  # (class-boundary pixels, those unknown): unlabelled_boundary_pixels


def _image_header(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """The image's (h, w) from its header, or the problem."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        return None, "image file not found"
    except Exception as e:  # Pillow raises many types for files it does not know
        return None, f"unreadable image ({type(e).__name__}: {e})"
    marker = END_MARKERS.get(path.suffix.lower())
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - TAIL_BYTES))
            complete = marker in f.read()
        if not complete:  # truncated, or data after the end marker: decoding tells
            try:
                read_image(path)
            except InputError as e:
                return None, e.problem
    return (h, w), None


def _inspect_pair(image: Path, label: Path, num_classes: int, class_source: str) -> _PairResult:
    problems: list[str] = []
    image_size, image_problem = _image_header(image)
    if image_problem:
        problems.append(f"{image}: {image_problem}")
    try:
        lab, _ = read_label(label)
    except InputError as e:
        return _PairResult(problems + [f"{label}: {e.problem}"])
    counts = np.bincount(lab.ravel(), minlength=256)
    ids = (np.flatnonzero(counts[num_classes:UNKNOWN]) + num_classes).tolist()
    if ids:
        shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
        problems.append(f"{label}: class ids {shown} beyond the {num_classes} classes of {class_source} "
                        f"(ids 0..{num_classes - 1}; {UNKNOWN} = unknown)")
    if image_size is not None and image_size != lab.shape:
        problems.append(f"{image}: image size {image_size[1]}x{image_size[0]} (w x h) differs from its label's "
                        f"{lab.shape[1]}x{lab.shape[0]} ({label.name})")
    return _PairResult(problems, lab.shape, counts, unlabelled_boundary_pixels(lab))


def class_source(info: DatasetInfo) -> str:
    """Where the class list comes from, for messages."""
    return str(info.root / "classes.json") if info.layout == "folder" else f"the {info.layout} layout"


def inspect_dataset(info: DatasetInfo) -> DataReport:
    """Look at every pair of every split of ``info``; never raises for what it finds."""
    source = class_source(info)
    n = info.num_classes
    problems: list[str] = []
    warnings: list[str] = []
    if n < MIN_CLASSES:
        problems.append(f"{source}: lists {n} class{'' if n == 1 else 'es'} {info.class_names}; a completer needs "
                        f"at least {MIN_CLASSES}")
    if n > MAX_CLASSES:
        problems.append(f"{source}: lists {n} classes; 8-bit labels hold at most {MAX_CLASSES} "
                        f"(ids 0..{MAX_CLASSES - 1}, {UNKNOWN} = unknown)")
    known_share: dict[str, float] = {}
    boundaries_unknown: dict[str, float] = {}
    complete_labels: dict[str, list[int]] = {}
    totals: dict[str, np.ndarray] = {}
    sizes: Counter[tuple[int, int]] = Counter()
    for split, pairs in info.pairs.items():
        total = np.zeros(256, np.int64)
        edges = np.zeros(2, np.int64)
        complete_labels[split] = []
        for index, (image, label) in enumerate(pairs):
            r = _inspect_pair(image, label, n, source)
            problems += r.problems
            if r.counts is None:
                continue
            total += r.counts
            edges += r.boundary
            if complete_boundaries(r.boundary):
                complete_labels[split].append(index)
            if split == "train":
                sizes[r.size] += 1  # type: ignore[index]
            if r.counts[UNKNOWN] == r.counts.sum():
                warnings.append(f"{label}: no known pixel (every pixel is {UNKNOWN}); it adds nothing to {split}")
        pixels = int(total.sum())
        known_share[split] = (pixels - int(total[UNKNOWN])) / pixels if pixels else 0.0
        totals[split] = total
        boundaries_unknown[split] = float(edges[1] / edges[0]) if edges[0] else 0.0
        if pixels and known_share[split] == 0.0:
            problems.append(f"{info.root} ({split} split): no label holds a known pixel (every pixel is {UNKNOWN})")
    present = np.flatnonzero(totals.get("train", np.zeros(256))[:min(n, UNKNOWN)]).tolist()
    if "train" in totals and n >= MIN_CLASSES and len(present) < MIN_CLASSES and known_share["train"] > 0:
        names = [info.class_names[i] for i in present]
        problems.append(f"{info.root} (train split): the labels hold {len(present)} of the {n} classes of {source} "
                        f"({', '.join(names)}); training needs at least {MIN_CLASSES} classes present")
    image_size = sizes.most_common(1)[0][0] if sizes else (0, 0)
    return DataReport(n, len(info.pairs.get("train", [])), len(info.pairs.get("val", [])), image_size,
                      known_share, present, problems, warnings, boundaries_unknown, complete_labels)


def problems_message(root: Path, problems: list[str], limit: int = MAX_LISTED_PROBLEMS) -> str:
    lines = [f"{root}: the data check found {len(problems)} problem{'' if len(problems) == 1 else 's'} "
             f"(nothing was trained):"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def check_dataset(info: DatasetInfo) -> DataReport:
    """:func:`inspect_dataset`, raising one :class:`DatasetError` that lists the problems."""
    report = inspect_dataset(info)
    if report.problems:
        raise DatasetError(problems_message(info.root, report.problems))
    return report
