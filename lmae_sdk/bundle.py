"""The model bundle's ``manifest.json``: the one contract between export and runtime.

A bundle is a folder::

    bundle/
      manifest.json
      encoder_m0.5_fp32.onnx   decoder_m0.5_fp32.onnx
      encoder_m0.7_fp32.onnx   ...   (*.engine for TensorRT)
      boundary_fp32.onnx       (models with a boundary net: one graph for every engine)
      boundary_int8.onnx       (optional: the same graph in int8, run by ONNX Runtime on CPUs)
      fusion_fp32.onnx         (bundles with pixel fusion: the scorer of its candidate rows)

Top level: what every engine shares (classes, image size, patch size, normalization,
unknown index, label down-sampling, routing threshold).  ``engines``: one entry per
(mask ratio, precision, backend) with its K, files, sha256 and producer versions.
The runtime never guesses what the manifest does not say.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import LMAEConfig
from .inputs import unknown_index_problem
from .labels import IMAGENET_MEAN, IMAGENET_STD, LABEL_RESIZE_MODES, atomic_write_bytes

BUNDLE_FORMAT = "lmae-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
# keys every engine of a bundle must agree on (they define pre/post-processing): the model's
# geometry and normalization, and its completion settings (lmae_sdk.pipeline.CompletionSettings)
SHARED_KEYS = ("class_names", "palette", "image_size", "patch_size", "num_patches", "normalization",
               "unknown_index", "label_resize", "unknown_threshold", "background_index", "prior_mode", "fusion",
               "boundary")
# absent from bundles written before they existed; the runtime then reads the engines' model_config
# (prior_mode), has no pixel fusion (fusion) or no boundary net (boundary)
OPTIONAL_SHARED_KEYS = ("prior_mode", "fusion", "boundary")
# with "boundary" (the net's spec and weight fingerprint): the graph file, written by export
BOUNDARY_GRAPH = "boundary_graph"
# with "fusion": the graph that scores pixel fusion's candidate rows, written by export; a bundle
# without it (exported before it existed) scores them on the host
FUSION_GRAPH = "fusion_graph"
ENGINE_KEYS = ("name", "mask_ratio", "num_visible", "num_patches", "precision", "backend", "encoder", "decoder",
               "inputs", "model_config", "producer")


# the image normalization every L-MAE graph is trained with: what checkpoints record and
# what the runtime computes (labels.normalize_image)
NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1 / 255}


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


def file_entry(path: Path) -> dict[str, Any]:
    """A graph file's manifest entry: name, sha256 and size."""
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def fusion_sha256(fusion: dict[str, Any]) -> str:
    """A fingerprint of a pixel fusion's weights and rules (its manifest dict, without ``info``)."""
    keep = {k: v for k, v in fusion.items() if k != "info"}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


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
    if data.get("boundary") and not data.get(BOUNDARY_GRAPH):
        raise BundleError(f"{path}: the models use a boundary net but the manifest has no {BOUNDARY_GRAPH}")
    for key, what in ((BOUNDARY_GRAPH, "boundary graph"), (FUSION_GRAPH, "fusion graph")):
        g = data.get(key) or {}
        for entry, kind in ((g, what), (g.get("tensorrt"), f"{what} TensorRT engine"), (g.get("int8"), f"int8 {what}")):
            if entry and verify_files:
                _check_file(path, root / entry["file"], entry.get("sha256"), kind)
    g = data.get(FUSION_GRAPH)
    if g:
        if not data.get("fusion") or g.get("fusion_sha256") != fusion_sha256(data["fusion"]):
            raise BundleError(f"{path}: fusion graph file {g['file']} was made from another pixel fusion than the "
                              f"manifest's: re-export the bundle")
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


def _check_file(manifest: Path, f: Path, sha256: str | None, what: str) -> None:
    if not f.is_file():
        raise BundleError(f"{manifest}: {what} file {f.name} is missing")
    if sha256 and sha256_file(f) != sha256:
        raise BundleError(f"{manifest}: {what} file {f.name} fails its sha256 check")


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


# --------------------------------------------------------------------------------------
# the contract: the manifest's top level against what each engine records
# --------------------------------------------------------------------------------------
def engine_config(config: dict[str, Any], where: str) -> LMAEConfig:
    """An engine's (or checkpoint's) model config; fields this version does not know are
    dropped (written by a newer exporter), an invalid config is a BundleError."""
    known = {f.name for f in dataclasses.fields(LMAEConfig)}
    try:
        return LMAEConfig.from_dict({k: v for k, v in config.items() if k in known})
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: invalid model config ({e})") from None


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_model(man: Manifest, config: dict[str, Any], where: str,
                normalization: dict[str, Any] | None = None, config_name: str = "model_config") -> LMAEConfig:
    """Refuse a model (an engine's ``model_config``, a checkpoint's ``config``) that
    contradicts the manifest's shared settings; returns its config.  ``where`` names the
    engine and its file; ``normalization``: what the model was trained with (default: every
    L-MAE model's, :data:`NORMALIZATION`)."""
    path, d = man.root / MANIFEST, man.data
    cfg = engine_config(config, where)
    grid_patches = cfg.num_patches

    def refuse(key: str, shown: Any, what: str, value: Any) -> None:
        raise BundleError(f"{path}: manifest {key} {shown} contradicts {where}: its {what} is {value!r}")

    if len(d["class_names"]) != cfg.num_classes:
        refuse("class_names", f"({len(d['class_names'])} names)", f"{config_name} num_classes", cfg.num_classes)
    if not _close(list(d["image_size"]), list(cfg.img_size)):
        refuse("image_size", repr(d["image_size"]), f"{config_name} img_size", list(cfg.img_size))
    if d["patch_size"] != cfg.patch_size:
        refuse("patch_size", repr(d["patch_size"]), f"{config_name} patch_size", cfg.patch_size)
    if d["num_patches"] != grid_patches:
        refuse("num_patches", repr(d["num_patches"]), f"{config_name} num_patches (img_size / patch_size)",
               grid_patches)
    trained = NORMALIZATION if normalization is None else normalization
    if not _close(d["normalization"], trained):
        refuse("normalization", repr(d["normalization"]), "input normalization (the one it was trained with)",
               trained)
    if "prior_mode" in d:  # absent from bundles written before the key existed
        mode = cfg.prior_mode if cfg.prior else None
        if d["prior_mode"] != mode:
            refuse("prior_mode", repr(d["prior_mode"]), f"{config_name} prior_mode", mode)
    return cfg


def check_contract(man: Manifest) -> None:
    """The runtime's check of a bundle before it loads anything: every engine entry agrees
    with the shared settings (:func:`check_model`) and with itself (L, K), no two entries
    claim the same engine (name, or mask ratio, backend and precision), and the shared
    settings the runtime applies on the host make sense for the engines' classes."""
    path, d = man.root / MANIFEST, man.data
    seen: dict[Any, str] = {}
    for e in man.engines:
        for key, what in ((("name", e["name"]), "the name"),
                          ((round(float(e["mask_ratio"]), 6), e["backend"], e["precision"]),
                           f"mask ratio {float(e['mask_ratio']):g} for {e['backend']} {e['precision']}")):
            if key in seen:
                raise BundleError(f"{path}: engines {seen[key]!r} and {e['name']!r} both have {what}; "
                                  f"the runtime would pick one of them silently: keep one")
            seen[key] = e["name"]
    for e in man.engines:
        where = f"engine {e['name']!r} ({e['encoder']['file']})"
        cfg = check_model(man, e["model_config"], where)
        k = cfg.num_visible(float(e["mask_ratio"]))
        if e["num_patches"] != cfg.num_patches or e["num_visible"] != k:
            raise BundleError(f"{path}: {where}: num_visible {e['num_visible']!r} and num_patches "
                              f"{e['num_patches']!r} contradict its mask ratio {e['mask_ratio']:g} and model_config "
                              f"(num_patches {cfg.num_patches}, K = {k})")
    n = len(d["class_names"])
    u = d["unknown_index"]
    problem = unknown_index_problem(u, n)
    if problem:
        raise BundleError(f"{path}: manifest unknown_index {u!r} {problem}")
    b = d.get("background_index")
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < n):
        raise BundleError(f"{path}: manifest background_index {b!r} is not one of the classes 0..{n - 1}")
    if d["label_resize"] not in LABEL_RESIZE_MODES:
        raise BundleError(f"{path}: manifest label_resize {d['label_resize']!r} is not one of {LABEL_RESIZE_MODES}")
    t = d["unknown_threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
        raise BundleError(f"{path}: manifest unknown_threshold {t!r} is not a number in [0, 1]")


def check_graph(man: Manifest, engine: dict[str, Any], part: str, metadata: dict[str, str],
                input_names: list[str]) -> None:
    """Refuse an engine entry that contradicts its ONNX graph: the inputs the graph takes
    and what export wrote into its ``metadata_props`` (``lmae.*``; graphs without it are
    checked on their inputs only)."""
    path, name, file = man.root / MANIFEST, engine["name"], engine[part]["file"]
    where = f"{path}: engine {name!r}: its graph {file}"
    if list(input_names) != list(engine["inputs"][part]):
        raise BundleError(f"{where} takes inputs {list(input_names)}; the manifest entry says "
                          f"{engine['inputs'][part]}")
    if "lmae.model_config" in metadata:
        graph = json.loads(metadata["lmae.model_config"])
        entry = engine["model_config"]
        for key in sorted(set(graph) | set(entry)):
            if not _close(graph.get(key), entry.get(key)):
                raise BundleError(f"{where} was exported with model_config {key} {graph.get(key)!r}; the manifest "
                                  f"entry says {entry.get(key)!r}")
    for key, entry_value in (("num_visible", engine["num_visible"]), ("num_patches", engine["num_patches"]),
                             ("mask_ratio", engine["mask_ratio"])):
        if f"lmae.{key}" in metadata and not _close(float(metadata[f"lmae.{key}"]), float(entry_value)):
            raise BundleError(f"{where} was exported with {key} {metadata[f'lmae.{key}']}; the manifest entry "
                              f"says {entry_value!r}")


def check_bundle(root: str | os.PathLike) -> Manifest:
    """Every check that loading a bundle makes and that needs no backend, in one call (what
    ``lmae info`` runs): the manifest's keys and files with their sha256
    (:func:`read_manifest`), the contract between its top level and its engine entries
    (:func:`check_contract`), each ONNX Runtime engine's graphs against their entries
    (:func:`check_graph`, read from the graph files themselves), and the completion settings
    and boundary net spec the runtime would apply."""
    from .boundary_map import BoundaryError, BoundarySpec
    from .pipeline import CompletionSettings, SettingsError

    man = read_manifest(root)
    check_contract(man)
    for e in man.engines:
        if e["backend"] != "onnxruntime":  # TensorRT plans hold no ONNX metadata
            continue
        for part in ("encoder", "decoder"):
            metadata, inputs = onnx_graph_header(man.file(e, part))
            check_graph(man, e, part, metadata, inputs)
    where = str(man.root / MANIFEST)
    try:
        CompletionSettings.from_dict(man.data, where)
        if man.data.get("boundary"):
            BoundarySpec.from_dict(man.data["boundary"], where)
    except (SettingsError, BoundaryError) as e:
        raise BundleError(str(e)) from None
    return man


# --------------------------------------------------------------------------------------
# an ONNX graph's metadata and inputs, read from the protobuf without onnx or onnxruntime
# --------------------------------------------------------------------------------------
_MODEL_GRAPH, _MODEL_METADATA = 7, 14  # ModelProto fields
_GRAPH_INITIALIZER, _GRAPH_INPUT = 5, 11  # GraphProto fields
_NAME_OF = {_GRAPH_INPUT: 1, _GRAPH_INITIALIZER: 8}  # ValueInfoProto.name, TensorProto.name


def _varint(buf: Any, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(buf: Any, start: int, end: int):
    """(field number, (start, end)) of each length-delimited field of the protobuf message in
    ``buf[start:end]`` (numbers and fixed-size fields are skipped)."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            i = _varint(buf, i)[1]
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            yield key >> 3, (i, i + n)
            i += n
        else:
            raise ValueError(f"protobuf wire type {wire}")
    if i != end:
        raise ValueError("a field runs past its message")


def _string(buf: Any, span: tuple[int, int], field: int) -> str:
    """The string ``field`` of the message at ``span`` ('' when absent)."""
    return next((bytes(buf[a:b]).decode() for f, (a, b) in _fields(buf, *span) if f == field), "")


def onnx_graph_header(path: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """(``metadata_props``, the names of the graph's inputs that are not initializers: what
    ONNX Runtime lists as its inputs) of an ONNX file; a BundleError when it is not one."""
    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            metadata: dict[str, str] = {}
            names: dict[int, list[str]] = {_GRAPH_INPUT: [], _GRAPH_INITIALIZER: []}
            for field, span in _fields(buf, 0, len(buf)):
                if field == _MODEL_METADATA:
                    metadata[_string(buf, span, 1)] = _string(buf, span, 2)
                elif field == _MODEL_GRAPH:
                    for sub, sub_span in _fields(buf, *span):
                        if sub in names:
                            names[sub].append(_string(buf, sub_span, _NAME_OF[sub]))
    except (OSError, ValueError, IndexError) as e:  # ValueError: mmap of an empty file, bad UTF-8 too
        raise BundleError(f"{p}: not a readable ONNX graph ({type(e).__name__}: {e})") from None
    initializers = set(names[_GRAPH_INITIALIZER])
    return metadata, [n for n in names[_GRAPH_INPUT] if n not in initializers]
