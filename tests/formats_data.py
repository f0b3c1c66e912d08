"""Small generated exports shared by the format tests (tests/test_formats*.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lmae_sdk.formats import Completion

H, W = 24, 32


def write_images(folder: Path, names: list[str], size=(H, W)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / n)
    return folder


def completions_of(export, score=None):
    return [Completion(item.meta, item.partial, score) for item in export]


def labels_of(export) -> dict[str, np.ndarray]:
    return {item.image_path.name: item.partial for item in export}
