"""A small synthetic segmentation dataset (no downloads): the demo's data and the tests'.

Scenes of textured class-coloured shapes over a background, with thin bars as the
'thin class', written in the folder layout ``ROOT/{train,val}/{images,labels}`` plus
``classes.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .labels import atomic_write_bytes, write_label

SYNTH_CLASSES = ["background", "disc", "box", "bar", "blob"]
SYNTH_PALETTE = [[0, 0, 0], [220, 60, 60], [60, 200, 60], [240, 220, 40], [60, 80, 230]]
_BASE_RGB = np.array([[90, 90, 90], [200, 70, 60], [70, 180, 80], [230, 210, 60], [70, 90, 210]], np.float32)


def synth_pair(rng: np.random.Generator, size: tuple[int, int] = (96, 128), classes: int = len(SYNTH_CLASSES)
               ) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 (H, W, 3), label uint8 (H, W)) scene with the first ``classes`` classes
    (2 to 5) of :data:`SYNTH_CLASSES`."""
    if not 2 <= classes <= len(SYNTH_CLASSES):
        raise ValueError(f"classes must be 2..{len(SYNTH_CLASSES)}, got {classes}")
    h, w = size
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        c = int(rng.integers(1, classes))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        if c == 1:
            cv2.circle(label, (cx, cy), int(rng.integers(h // 10, h // 4)), c, -1)
        elif c == 2:
            bh, bw = int(rng.integers(h // 8, h // 3)), int(rng.integers(w // 8, w // 3))
            cv2.rectangle(label, (cx, cy), (cx + bw, cy + bh), c, -1)
        elif c == 3:  # thin structure, 2-4 px wide
            cv2.line(label, (cx, 0), (cx + int(rng.integers(-20, 20)), h - 1), c, int(rng.integers(2, 5)))
        else:
            axes = (int(rng.integers(w // 12, w // 5)), int(rng.integers(h // 12, h // 5)))
            cv2.ellipse(label, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
    rgb = _BASE_RGB[label] + rng.normal(0, 18, (h, w, 3)).astype(np.float32)
    rgb += np.linspace(-20, 20, w, dtype=np.float32)[None, :, None]  # lighting gradient
    return np.clip(rgb, 0, 255).astype(np.uint8), label


def make_synthetic_dataset(root: str | Path, n_train: int = 48, n_val: int = 16, size: tuple[int, int] = (96, 128),
                           seed: int = 0, classes: int = len(SYNTH_CLASSES), grey: bool = False) -> Path:
    """Write the dataset under ``root``; ``grey``: single-channel images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lab = synth_pair(rng, size, classes)
            pixels = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if grey else cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".png", pixels)
            atomic_write_bytes(root / split / "images" / f"{split}_{i:04d}.png", buf.tobytes())
            write_label(root / split / "labels" / f"{split}_{i:04d}.png", lab)
    meta = {"classes": SYNTH_CLASSES[:classes], "palette": SYNTH_PALETTE[:classes], "ignore_index": 255}
    atomic_write_bytes(root / "classes.json", json.dumps(meta, indent=1).encode())
    return root
