"""The review queue of ``lmae complete --review``: completed labels ranked by how uncertain
their filled pixels are, most uncertain first, so that a reviewer opens those first.

Per image, over its *filled* pixels (unknown in the partial label and given a class; pixels
that ``--min-confidence`` left unknown are counted apart, as ``left_unknown``):

* ``uncertain_share``: the share whose confidence is below the level (``--review-below``);
* ``mean_entropy``: the mean of :func:`top_share_entropy`, in nats (0 .. ln N);
* per class, among the filled pixels given that class, the share below the level.

The queue is sorted by :data:`SORT_KEY`.  Entropy: the finishing step keeps only the chosen
class's probability (argmax: its softmax probability; pixel fusion: its softmax share over
the candidate classes), so the entropy is that of the flattest distribution with this top
probability (:func:`top_share_entropy`), an upper bound on the true entropy.

Resume: each completed image leaves a small record, ``OUT/.lmae-review/<stem>.json``
(:class:`ReviewRecords`, written atomically before the label, whose presence marks the image
finished), keyed by the run (:func:`run_key`) and the level.  A rerun builds the queue from
the records of every image of the run, those of earlier runs included; an image without a
valid record (completed without ``--review``, or at another level) is completed again.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .labels import atomic_write_bytes, read_label

REVIEW_CSV = "review.csv"
REVIEW_JSON = "review.json"
RECORDS = ".lmae-review"  # per-image records, one JSON each
QUEUE_FORMAT, RECORD_FORMAT, FORMAT_VERSION = "lmae-review", "lmae-review-image", 1
SORT_KEY = "uncertain_share desc, then mean_entropy desc, then image name"
ENTROPY_RULE = ("entropy of the flattest class distribution with the pixel's confidence as its top probability "
                "(the rest spread evenly over the other classes), in nats: an upper bound on the true entropy")


class ReviewError(ValueError):
    """A review queue file that cannot be used (names the file and the problem)."""


# ------------------------------------------------------------------ scoring (pure)
def top_share_entropy(confidence: np.ndarray, num_classes: int) -> np.ndarray:
    """Per pixel, the entropy (nats) of the distribution that gives the chosen class the
    probability ``confidence`` and each of the other ``num_classes - 1`` classes an even share
    of the rest: 0 at confidence 1, ln N at 1/N (uniform).  The largest entropy any
    distribution with that top probability has."""
    if num_classes < 2:
        return np.zeros(np.shape(confidence), np.float64)
    p = np.clip(np.asarray(confidence, np.float64), 1.0 / num_classes, 1.0)
    rest = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        rest_term = np.where(rest > 0, rest * np.log(rest / (num_classes - 1)), 0.0)
    return -p * np.log(p) - rest_term


@dataclass
class ImageScore:
    """How uncertain one image's completion is (counts, so that it can be stored and summed)."""

    filled: int  # hole pixels given a class
    uncertain: int  # ... of them below the level
    entropy_sum: float  # sum of top_share_entropy over the filled pixels
    left_unknown: int  # hole pixels left unknown (--min-confidence)
    class_filled: list[int]  # filled pixels given each class
    class_uncertain: list[int]  # ... of them below the level

    @property
    def uncertain_share(self) -> float:
        return self.uncertain / self.filled if self.filled else 0.0

    @property
    def mean_entropy(self) -> float:
        return self.entropy_sum / self.filled if self.filled else 0.0

    @property
    def class_shares(self) -> list[float | None]:
        """Per class the share below the level among its filled pixels (None: none filled)."""
        return [u / f if f else None for f, u in zip(self.class_filled, self.class_uncertain)]

    def to_dict(self) -> dict[str, Any]:
        return {"filled": self.filled, "uncertain": self.uncertain, "entropy_sum": self.entropy_sum,
                "left_unknown": self.left_unknown, "class_filled": self.class_filled,
                "class_uncertain": self.class_uncertain}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageScore":
        return cls(int(d["filled"]), int(d["uncertain"]), float(d["entropy_sum"]), int(d["left_unknown"]),
                   [int(v) for v in d["class_filled"]], [int(v) for v in d["class_uncertain"]])


def score_image(partial: np.ndarray, label: np.ndarray, confidence: np.ndarray, num_classes: int, level: float,
                unknown: int = 255) -> ImageScore:
    """The :class:`ImageScore` of one completion: ``partial`` and ``label`` (H, W) class ids
    (``unknown`` = unknown), ``confidence`` (H, W) in [0, 1]; a pixel is uncertain below ``level``."""
    if not partial.shape == label.shape == confidence.shape:
        raise ValueError(f"partial {partial.shape}, label {label.shape} and confidence {confidence.shape} differ "
                         f"in size")
    hole = partial == unknown
    filled = hole & (label != unknown)
    cls = label[filled].astype(np.intp)
    if cls.size and cls.max() >= num_classes:
        raise ValueError(f"class id {int(cls.max())} in a label of {num_classes} classes")
    conf = confidence[filled]
    low = conf < level
    return ImageScore(filled=int(cls.size), uncertain=int(np.count_nonzero(low)),
                      entropy_sum=float(top_share_entropy(conf, num_classes).sum()),
                      left_unknown=int(np.count_nonzero(hole)) - int(cls.size),
                      class_filled=np.bincount(cls, minlength=num_classes).tolist(),
                      class_uncertain=np.bincount(cls[low], minlength=num_classes).tolist())


@dataclass
class QueueEntry:
    image: str  # the image's file name
    label_file: str  # the completed label's file name in --out
    score: ImageScore


def rank(entries: Sequence[QueueEntry]) -> list[QueueEntry]:
    """Most uncertain first (:data:`SORT_KEY`); an image with no filled pixel goes last."""
    return sorted(entries, key=lambda e: (-e.score.uncertain_share, -e.score.mean_entropy, e.image))


# ------------------------------------------------------------------ the queue files
@dataclass
class QueueSettings:
    """What the queue was made with (its JSON's ``settings``; ``lmae visualize --review``
    reads the folders, classes and palette from it)."""

    level: float
    class_names: list[str]
    palette: list[list[int]] | None
    model: str
    model_sha256: str | None
    folders: dict[str, str | None]  # images, labels, out, confidence_dir
    unknown_index: int = 255

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "sort_key": SORT_KEY, "entropy": ENTROPY_RULE, "model": self.model,
                "model_sha256": self.model_sha256, "classes": list(self.class_names), "palette": self.palette,
                "unknown_index": self.unknown_index, **self.folders}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def entry_dict(rank_no: int, e: QueueEntry, class_names: list[str]) -> dict[str, Any]:
    s = e.score
    return {"rank": rank_no, "image": e.image, "label_file": e.label_file, "filled_pixels": s.filled,
            "uncertain_share": _r(s.uncertain_share), "mean_entropy": _r(s.mean_entropy),
            "uncertain_pixels": s.uncertain, "left_unknown": s.left_unknown,
            "class_uncertain_share": {n: _r(v) for n, v in zip(class_names, s.class_shares)},
            "class_filled_pixels": dict(zip(class_names, s.class_filled))}


def queue_csv(ranked: Sequence[QueueEntry], class_names: list[str]) -> bytes:
    """rank, image, label_file, filled_pixels, uncertain_share, mean_entropy, then one
    ``uncertain:<class>`` column per class (empty where the image has no pixel of it filled)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "image", "label_file", "filled_pixels", "uncertain_share", "mean_entropy",
                *(f"uncertain:{n}" for n in class_names)])
    for i, e in enumerate(ranked, 1):
        s = e.score
        w.writerow([i, e.image, e.label_file, s.filled, f"{s.uncertain_share:.6f}", f"{s.mean_entropy:.6f}",
                    *("" if v is None else f"{v:.6f}" for v in s.class_shares)])
    return buf.getvalue().encode()


def queue_json(ranked: Sequence[QueueEntry], settings: QueueSettings, not_scored: dict[str, str]) -> bytes:
    data = {"format": QUEUE_FORMAT, "format_version": FORMAT_VERSION, "settings": settings.to_dict(),
            "images": [entry_dict(i, e, settings.class_names) for i, e in enumerate(ranked, 1)],
            "not_scored": not_scored}
    return (json.dumps(data, indent=1) + "\n").encode()


def read_queue(path: str | Path) -> dict[str, Any]:
    """A ``review.json`` (its ``settings`` and ranked ``images``), checked; ReviewError otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReviewError(f"{path}: unreadable review queue ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != QUEUE_FORMAT:
        raise ReviewError(f"{path}: not a review queue (the review.json that `lmae complete --review` writes)")
    if data.get("format_version") != FORMAT_VERSION:
        raise ReviewError(f"{path}: review queue version {data.get('format_version')!r} is not supported")
    images, settings = data.get("images"), data.get("settings")
    if not isinstance(settings, dict) or not isinstance(images, list) or not all(
            isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("label_file"), str)
            for e in images):
        raise ReviewError(f"{path}: malformed review queue (settings or images)")
    return data


# ------------------------------------------------------------------ per-image records (resume)
def run_key(record: Any) -> str:
    """A fingerprint of what decides a run's labels (a RunRecord's compared parts)."""
    parts = [record.command, record.inputs, record.options, record.model_sha256]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ReviewRecords:
    """The per-image records of one run and level in ``OUT/.lmae-review``: written when an
    image is completed, read back for the queue (of this run and of earlier, interrupted ones)."""

    def __init__(self, out: Path, run: str, settings: QueueSettings) -> None:
        self.out, self.folder = Path(out), Path(out) / RECORDS
        self.run, self.settings, self.unknown = run, settings, settings.unknown_index
        self.level, self.num_classes = float(settings.level), len(settings.class_names)

    def path(self, stem: str) -> Path:
        return self.folder / f"{stem}.json"

    def read(self, stem: str) -> ImageScore | None:
        """The image's score, None where it has no record of this run at this level."""
        try:
            d = json.loads(self.path(stem).read_text())
            if d.get("format") != RECORD_FORMAT or d.get("run") != self.run or d.get("level") != self.level:
                return None
            score = ImageScore.from_dict(d["score"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return score if len(score.class_filled) == self.num_classes else None

    def add(self, stem: str, partial: np.ndarray | Path, label: np.ndarray, confidence: np.ndarray) -> ImageScore:
        """Score a completion against its partial label (an array or its PNG file) and record it."""
        if not isinstance(partial, np.ndarray):
            partial, _ = read_label(partial)
        score = score_image(partial, label, confidence, self.num_classes, self.level, self.unknown)
        record = {"format": RECORD_FORMAT, "run": self.run, "level": self.level, "score": score.to_dict()}
        atomic_write_bytes(self.path(stem), json.dumps(record).encode())
        return score

    def write_queue(self, pairs: Sequence[tuple[Path, Path, str]], failures: dict[str, str]) -> int:
        """review.csv and review.json in the output folder over ``pairs`` (image, partial label,
        stem): every image with a record, ranked; the others listed as not scored (``failures``:
        why, by label file name).  Returns the queue's length."""
        entries, not_scored = [], {}
        for img, lab, stem in pairs:
            score = self.read(stem)
            if score is None:
                not_scored[lab.name] = failures.get(lab.name, "not completed")
            else:
                entries.append(QueueEntry(img.name, f"{stem}.png", score))
        ranked = rank(entries)
        atomic_write_bytes(self.out / REVIEW_CSV, queue_csv(ranked, self.settings.class_names))
        atomic_write_bytes(self.out / REVIEW_JSON, queue_json(ranked, self.settings, not_scored))
        return len(ranked)
