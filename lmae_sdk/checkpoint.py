"""The ``.pt`` checkpoint: plain tensors and builtins only, loaded with weights_only=True."""
from __future__ import annotations

import io
import os
import pickle
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
                    background_index: int | None = None, near_copy_px: float = 0.0,
                    near_copy_min_prob: float = 0.0) -> dict[str, Any]:
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
        "near_copy_px": float(near_copy_px),
        "near_copy_min_prob": float(near_copy_min_prob),
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate; never unpickles arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p}: refused: the file needs unpickling of arbitrary objects, which is unsafe "
                              f"({str(e).splitlines()[0]})") from None
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an lmae checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {ckpt.get('format_version')!r} is not supported "
                              f"(this lmae-sdk reads version {FORMAT_VERSION})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> LMAE:
    model = LMAE(LMAEConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
