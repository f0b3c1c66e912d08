"""Checks of what a caller hands the completer, made before any work.

An image and a partial label (arrays or files) become an RGB ``(H, W, 3)`` uint8 image and
an ``(H, W)`` uint8 label, or an :class:`~lmae_sdk.labels.InputError` that names the file
(when there is one) and the problem.  The options of a completion (channel order,
``min_confidence``, batch size, tile scale) are checked the same way: a ``ValueError``
that names the parameter and the value it got.  Files paired by stem (an image and its
label share the name before the extension) must leave no doubt which file is meant:
:func:`ambiguous_stems` finds the stems that several files of a folder share.
"""
from __future__ import annotations

import math
import os
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from .labels import IMAGE_EXTS, InputError, check_label_ids, read_image, read_label

CHANNEL_ORDERS = ("rgb", "bgr")
_IMAGE_LAYOUTS = "(H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey"


def check_channels(channels: Any) -> str:
    """The channel order of image arrays: ``"rgb"`` (the default) or ``"bgr"`` (OpenCV's)."""
    if not isinstance(channels, str) or channels not in CHANNEL_ORDERS:
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    return channels


def check_fraction(name: str, value: Any) -> float:
    """A number in [0, 1] (booleans, strings and NaN are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not (
            math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(name: str, value: Any) -> int:
    """An integer >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def unknown_index_problem(value: Any, num_classes: int) -> str | None:
    """What is wrong with ``value`` as the label value of unknown pixels for a model of
    ``num_classes`` classes, or None: it must be an integer in num_classes..255 (labels are
    8-bit, class ids are 0..num_classes-1)."""
    n = num_classes
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if whole and n <= value <= 255:
        return None
    if whole and 0 <= value < n:
        return f"collides with the class ids 0..{n - 1} (unknown pixels need a label value in {n}..255)"
    return f"is not a label value in {n}..255 (labels are 8-bit; class ids are 0..{n - 1})"


def ambiguous_stems(folder: str | os.PathLike, exts: tuple[str, ...] = IMAGE_EXTS) -> dict[str, list[Path]]:
    """{stem: its files, sorted by name} for each stem that several files of ``folder`` with
    one of the extensions ``exts`` share (e.g. ``a.png`` and ``a.jpg``): a pairing by stem
    would pick one of them silently.  Hidden files are skipped, as the pairing skips them."""
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            by_stem.setdefault(p.stem, []).append(p)
    return {stem: files for stem, files in by_stem.items() if len(files) > 1}


def stem_clash(stem: str, files: list[Path], what: str = "images") -> str:
    """The problem of one stem that several files share, naming every one of them."""
    return (f"{len(files)} {what} share the stem {stem!r}: {' and '.join(str(f) for f in files)}; "
            f"keep one so that the pairing by name is not a guess")


def as_rgb_image(image: Any, channels: str = "rgb", path: str | os.PathLike | None = None) -> np.ndarray:
    """An image array -> contiguous RGB (H, W, 3) uint8; ``channels="bgr"`` reverses the
    colour channels of a BGR / BGRA array; grey and alpha are accepted."""
    if image is None:
        raise InputError(path, "image is None; expected a uint8 array or a file path")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(path, f"image dtype {image.dtype}; expected uint8 ({_IMAGE_LAYOUTS})")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise InputError(path, f"image has {image.shape[2]} channels (shape {image.shape}); expected {_IMAGE_LAYOUTS}")
    if image.ndim not in (2, 3):
        raise InputError(path, f"image shape {image.shape}; expected {_IMAGE_LAYOUTS}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise InputError(path, f"image is {w}x{h}; expected at least one pixel")
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(h, w, 1), 3, axis=2)
    elif channels == "bgr":
        image = image[:, :, 2::-1]
    else:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def as_label(partial: Any, path: str | os.PathLike | None = None) -> np.ndarray:
    """A partial label array -> contiguous (H, W) uint8 class ids."""
    if partial is None:
        raise InputError(path, "label is None; expected a uint8 (H, W) array or a file path")
    partial = np.asarray(partial)
    if partial.ndim != 2:
        raise InputError(path, f"label shape {partial.shape}; expected (H, W) class ids")
    if partial.dtype != np.uint8:
        if not np.issubdtype(partial.dtype, np.integer):
            raise InputError(path, f"label dtype {partial.dtype}; expected integer class ids (uint8)")
        if partial.size and (partial.min() < 0 or partial.max() > 255):
            raise InputError(path, f"label values {partial.min()}..{partial.max()} outside 0..255; "
                                   f"expected uint8 class ids")
        partial = partial.astype(np.uint8)
    return np.ascontiguousarray(partial)


def read_pair(image: Any, partial: Any, num_classes: int, unknown: int,
              channels: str = "rgb") -> tuple[np.ndarray, np.ndarray, list | None]:
    """(image, partial label, the label's palette or None) of one pair of arrays or file
    paths, checked: shapes, dtypes, sizes agree, class ids < ``num_classes`` or ``unknown``.
    ``channels`` is the order of an image *array*; image files are decoded to RGB."""
    ipath = image if isinstance(image, (str, os.PathLike)) else None
    lpath = partial if isinstance(partial, (str, os.PathLike)) else None
    palette = None
    if lpath is not None:
        partial, palette = read_label(lpath)
    if ipath is not None:
        image = read_image(ipath)
    image = as_rgb_image(image, "rgb" if ipath is not None else channels, ipath)
    partial = as_label(partial, lpath)
    if image.shape[:2] != partial.shape:
        where = f" (image {ipath})" if ipath is not None else ""
        raise InputError(lpath, f"label size {partial.shape[1]}x{partial.shape[0]} differs from the image's "
                                f"{image.shape[1]}x{image.shape[0]}{where}")
    check_label_ids(partial, num_classes, unknown, lpath)
    return image, partial, palette
