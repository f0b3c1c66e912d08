"""The model bundle's ``manifest.json``: the one contract between export and runtime.

A bundle is a folder::

    bundle/
      manifest.json
      encoder_m0.5_fp32.onnx   decoder_m0.5_fp32.onnx
      encoder_m0.7_fp32.onnx   ...   (*.engine for TensorRT)
      boundary_fp32.onnx       (models with a boundary net: one graph for every engine)

Top level: what every engine shares (classes, image size, patch size, normalization,
unknown index, label down-sampling, routing threshold).  ``engines``: one entry per
(mask ratio, precision, backend) with its K, files, sha256 and producer versions.
The runtime never guesses what the manifest does not say.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .labels import atomic_write_bytes

BUNDLE_FORMAT = "lmae-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
# keys every engine of a bundle must agree on (they define pre/post-processing)
SHARED_KEYS = ("class_names", "palette", "image_size", "patch_size", "num_patches", "normalization",
               "unknown_index", "label_resize", "unknown_threshold", "background_index", "near_copy_px",
               "near_copy_min_prob", "prior_mode", "fusion", "boundary")
# absent from bundles written before they existed; the runtime then reads the engines' model_config
# (prior_mode), copies unconditionally (near_copy_min_prob = 0), has no pixel fusion (fusion) or
# no boundary net (boundary)
OPTIONAL_SHARED_KEYS = ("prior_mode", "near_copy_min_prob", "fusion", "boundary")
# with "boundary" (the net's spec and weight fingerprint): the graph file, written by export
BOUNDARY_GRAPH = "boundary_graph"
ENGINE_KEYS = ("name", "mask_ratio", "num_visible", "num_patches", "precision", "backend", "encoder", "decoder",
               "inputs", "model_config", "producer")


class BundleError(ValueError):
    pass


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    root: Path
    data: dict[str, Any]

    @property
    def engines(self) -> list[dict[str, Any]]:
        return self.data["engines"]

    @property
    def class_names(self) -> list[str]:
        return self.data["class_names"]

    @property
    def num_classes(self) -> int:
        return len(self.data["class_names"])

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.data["image_size"]
        return int(h), int(w)

    def file(self, engine: dict[str, Any], part: str) -> Path:
        return self.root / engine[part]["file"]

    def find(self, mask_ratio: float | None = None, backend: str | None = None,
             precision: str | None = None) -> list[dict[str, Any]]:
        out = self.engines
        if mask_ratio is not None:
            out = [e for e in out if abs(e["mask_ratio"] - mask_ratio) < 1e-6]
        if backend is not None:
            out = [e for e in out if e["backend"] == backend]
        if precision is not None:
            out = [e for e in out if e["precision"] == precision]
        return out


def new_manifest(shared: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in SHARED_KEYS if k not in shared]
    if missing:
        raise BundleError(f"manifest is missing shared keys {missing}")
    return {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, **{k: shared[k] for k in SHARED_KEYS},
            "engines": []}


def read_manifest(root: str | os.PathLike, verify_files: bool = True) -> Manifest:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e})") from None
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not an lmae bundle manifest")
    if data.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format version {data.get('format_version')!r} is not supported "
                          f"(this lmae-sdk reads version {BUNDLE_VERSION})")
    missing = [k for k in SHARED_KEYS + ("engines",) if k not in data and k not in OPTIONAL_SHARED_KEYS]
    if missing:
        raise BundleError(f"{path}: missing keys {missing}")
    if data.get("boundary"):
        g = data.get(BOUNDARY_GRAPH)
        if not g:
            raise BundleError(f"{path}: the models use a boundary net but the manifest has no {BOUNDARY_GRAPH}")
        f = root / g["file"]
        if verify_files and not f.is_file():
            raise BundleError(f"{path}: boundary graph file {f.name} is missing")
        if verify_files and g.get("sha256") and sha256_file(f) != g["sha256"]:
            raise BundleError(f"{path}: boundary graph file {f.name} fails its sha256 check")
    for e in data["engines"]:
        miss = [k for k in ENGINE_KEYS if k not in e]
        if miss:
            raise BundleError(f"{path}: engine {e.get('name')!r} is missing keys {miss}")
        if verify_files:
            for part in ("encoder", "decoder"):
                f = root / e[part]["file"]
                if not f.is_file():
                    raise BundleError(f"{path}: engine {e['name']!r}: {part} file {f.name} is missing")
                if e[part].get("sha256") and sha256_file(f) != e[part]["sha256"]:
                    raise BundleError(f"{path}: engine {e['name']!r}: {part} file {f.name} fails its sha256 check")
    return Manifest(root, data)


def write_manifest(root: str | os.PathLike, data: dict[str, Any]) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())
    return path


def upsert_engine(data: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """Replace the entry with the same name, or add it; returns ``data``."""
    data["engines"] = [e for e in data["engines"] if e["name"] != engine["name"]] + [engine]
    data["engines"].sort(key=lambda e: (e["mask_ratio"], e["backend"], e["precision"]))
    return data


def check_compatible(existing: dict[str, Any], shared: dict[str, Any], where: str) -> None:
    """Engines in one bundle must share their pre/post-processing."""
    diff = [k for k in SHARED_KEYS if existing.get(k) != shared.get(k)]
    if diff:
        raise BundleError(f"{where}: cannot join this bundle: it differs in {diff}")
