"""The ``.pt`` checkpoint: plain tensors and builtins only, loaded with weights_only=True."""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .labels import IMAGENET_MEAN, IMAGENET_STD, atomic_write_bytes
from .model import LMAE, LMAEConfig

FORMAT = "lmae-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def make_checkpoint(model: LMAE, *, class_names: list[str], palette: list[list[int]] | None,
                    mask_ratios: list[float], label_resize: str, unknown_threshold: float,
                    metrics: dict[str, Any] | None = None, train_args: dict[str, Any] | None = None,
                    background_index: int | None = None) -> dict[str, Any]:
    cfg = model.cfg
    if len(class_names) != cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for {cfg.num_classes} classes")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "palette": palette,
        "mask_ratios": [float(m) for m in mask_ratios],
        "image_size": list(cfg.img_size),
        "patch_size": cfg.patch_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1 / 255},
        "label_resize": label_resize,
        "unknown_index": 255,
        "unknown_threshold": float(unknown_threshold),
        "background_index": background_index,
        "metrics": metrics or {},
        "train_args": train_args or {},
        "torch_version": str(torch.__version__),
        "state_dict": state,
    }


def _builtin(obj: Any) -> Any:
    """numpy scalars / arrays in metrics and arguments -> Python builtins: weights_only
    loading refuses numpy types, so one stray ``np.float64`` would make the file unreadable."""
    if isinstance(obj, dict):
        return {k: _builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_builtin(v) for v in obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return obj


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(_builtin(ckpt), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike) -> Any:
    """The tensors and plain values a torch file holds, read with ``weights_only=True``.

    Anything else is refused with a :class:`CheckpointError` that names the file and says
    why in a few words: missing, empty, not a torch archive, unreadable, or holding Python
    objects (those are never unpickled)."""
    p = Path(path)
    try:
        if not p.exists():
            raise CheckpointError(f"{p}: checkpoint not found")
        if p.is_dir():
            raise CheckpointError(f"{p}: not an lmae checkpoint (a folder, not a file)")
        if p.stat().st_size == 0:
            raise CheckpointError(f"{p}: not an lmae checkpoint (empty file)")
        # torch.save writes a zip archive; anything else (a bare pickle, text, a truncated
        # file) is refused before torch reads it
        if not zipfile.is_zipfile(p):
            raise CheckpointError(f"{p}: not an lmae checkpoint (not a torch checkpoint archive)")
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read the checkpoint ({type(e).__name__}: {e.strerror or e})") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p}: not an lmae checkpoint (refused without loading: {_refusal(e)})") from None
    except Exception as e:
        raise CheckpointError(f"{p}: not an lmae checkpoint (unreadable: {_short_reason(e)})") from None


def _refusal(e: Exception) -> str:
    """What torch's weights-only reader refused, without its advice on loading it anyway."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    what = f"a Python object ({found.group(1)})" if found else "Python objects"
    return f"it stores {what}; lmae checkpoints hold only tensors and plain values"


def _short_reason(e: Exception) -> str:
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    text = " ".join(lines[:2])
    if not text or "weights_only" in text or "pickl" in text.lower():
        return type(e).__name__
    return f"{type(e).__name__}: {text[:160]}"


# what every lmae checkpoint holds, and the type of each
REQUIRED_KEYS = {"config": dict, "class_names": list, "state_dict": dict}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate an lmae checkpoint (:func:`load_state`, then its format, version
    and required keys); never unpickles arbitrary objects."""
    p = Path(path)
    ckpt = load_state(p)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an lmae checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {ckpt.get('format_version')!r} is not supported "
                              f"(this lmae-sdk reads version {FORMAT_VERSION})")
    bad = [k for k, kind in REQUIRED_KEYS.items() if not isinstance(ckpt.get(k), kind)]
    if bad:
        raise CheckpointError(f"{p}: not an lmae checkpoint (missing or malformed {bad})")
    n = ckpt["config"].get("num_classes")
    if n != len(ckpt["class_names"]):
        raise CheckpointError(f"{p}: not an lmae checkpoint ({len(ckpt['class_names'])} class names for "
                              f"num_classes {n!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], source: str | os.PathLike = "checkpoint") -> LMAE:
    """The model of a loaded checkpoint; a config or weights that do not make an L-MAE
    model raise :class:`CheckpointError` naming ``source``."""
    try:
        model = LMAE(LMAEConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: not an lmae checkpoint (its model does not load: "
                              f"{_short_reason(e)})") from None
    return model.eval()
