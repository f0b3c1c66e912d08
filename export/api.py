"""Checkpoints -> one model bundle (``manifest.json`` + graph files).

``export_bundle`` exports every (checkpoint, mask ratio, precision, backend) as one
manifest engine entry named ``m{ratio}_{precision}_{backend}``.  Each entry is
replaced atomically: its files are written into a temporary folder inside the bundle,
checked (onnx.checker, TensorRT readiness, parity against torch), then moved in with
``os.replace``, and the manifest is rewritten with ``bundle.write_manifest``.  A failed
export leaves the bundle as it was.

Precision: fp32 is always exported; ``fp16=True`` adds an fp16 engine per ratio.  The
fp16 ONNX graph computes in float16 (LayerNorm in float32) with float32 inputs and
outputs; the fp16 TensorRT engine is built from the fp32 ONNX graph with
``BuilderFlag.FP16`` and normalization layers pinned to fp32.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import onnx
import torch

from lmae_sdk import bundle as B
from lmae_sdk.boundaries import BoundarySpec, net_from_state, weights_sha256
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint
from lmae_sdk.masking import num_masked
from lmae_sdk.model import LMAEConfig
from lmae_sdk.pipeline import CompletionSettings, SettingsError

from .aux_engines import build_aux_engine
from .fusion_graph import export_fusion_graph
from .graphs import decoder_input_names, encoder_input_names
from .onnx_export import DEFAULT_OPSET, ExportError, export_boundary_onnx, export_onnx, external_files, op_list
from .quantize import export_int8_boundary
from .readiness import check_trt_readiness, write_checked_graph
from .verify import ort_runners, trt_runners, verify_boundary, verify_engine

PARTS = ("encoder", "decoder")
BOUNDARY_FILE = "boundary_fp32.onnx"


def engine_name(mask_ratio: float, precision: str, backend: str) -> str:
    return f"m{mask_ratio:g}_{precision}_{backend}"


def file_name(part: str, mask_ratio: float, precision: str, backend: str) -> str:
    ext = "engine" if backend == "tensorrt" else "onnx"
    return f"{part}_m{mask_ratio:g}_{precision}.{ext}"


def shared_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The manifest's top level from a checkpoint: the model's geometry and normalization,
    and its completion settings (:class:`lmae_sdk.pipeline.CompletionSettings`, which
    refuses a retired finishing rule with what to run)."""
    cfg = LMAEConfig.from_dict(ckpt["config"])
    try:
        settings = CompletionSettings.from_dict(ckpt, source)
    except SettingsError as e:
        raise ExportError(str(e)) from None
    return {
        **settings.to_dict(),
        "image_size": [int(x) for x in ckpt["image_size"]],
        "patch_size": int(ckpt["patch_size"]),
        "num_patches": cfg.num_patches,
        "normalization": ckpt["normalization"],
        # host-side propagation for the prior planes (None: the model has no prior)
        "prior_mode": cfg.prior_mode if cfg.prior else None,
        # the boundary net's spec and weight fingerprint (lmae fit-boundaries), or None
        "boundary": _boundary_shared(ckpt),
    }


def _boundary_shared(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    entry = ckpt.get("boundary_net")
    if not entry:
        return None
    return {**BoundarySpec.from_dict(entry).to_dict(), "weights_sha256": weights_sha256(entry["state_dict"])}


def with_boundary_flip_average(ckpt: dict[str, Any], flip_average: bool | None) -> dict[str, Any]:
    """The checkpoint with its boundary net's flip averaging set (None, or no boundary net: as is)."""
    entry = ckpt.get("boundary_net")
    if flip_average is None or not entry:
        return ckpt
    spec = replace(BoundarySpec.from_dict(entry), flip_average=flip_average)
    rest = {k: v for k, v in entry.items() if k not in ("version", "flip_average")}
    return {**ckpt, "boundary_net": {**rest, **spec.to_dict()}}


def _boundary_net(ckpt: dict[str, Any]) -> tuple[BoundarySpec, torch.nn.Module]:
    spec = BoundarySpec.from_dict(ckpt["boundary_net"])
    return spec, net_from_state(spec, ckpt["boundary_net"]["state_dict"])


def _export_boundary(out: Path, ckpt: dict[str, Any], opset: int, legacy: bool, lint: bool,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Write ``boundary_fp32.onnx`` into ``out`` (atomically, after a parity check against
    torch); returns its manifest entry."""
    spec, net = _boundary_net(ckpt)

    def write(f: Path) -> None:
        log(f"exporting the boundary net ({spec.size[0]}x{spec.size[1]}) -> {f.name}")
        export_boundary_onnx(net, spec, f, opset=opset, dynamo=not legacy)

    ready, parity = write_checked_graph(out, BOUNDARY_FILE, write, lambda f: verify_boundary(net, spec, f), lint,
                                        log, "torch")
    return {**B.file_entry(out / BOUNDARY_FILE), "inputs": ["image"], "outputs": ["boundary"],
            "readiness": ready.to_dict(), "parity": parity}


def _producer(opset: int, legacy: bool, trt_version: str | None = None, gpu: str | None = None) -> dict[str, Any]:
    try:
        import onnxruntime as ort  # noqa: PLC0415
        ort_v = ort.__version__
    except ImportError:
        ort_v = None
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort_v, "opset": opset,
            "exporter": "legacy" if legacy else "dynamo", "tensorrt": trt_version, "gpu": gpu}


@dataclass(frozen=True)
class ExportOptions:
    """What an export builds (``lmae-export``'s options).

    ``mask_ratios`` overrides each checkpoint's trained ratios (one engine per ratio, each
    with its own K); ``fp16`` adds fp16 graphs; ``trt`` also builds TensorRT engines (fails
    before writing anything when TensorRT or a CUDA GPU is missing) with profiles up to
    ``max_batch`` and ``workspace_gb`` of builder workspace; ``verify`` checks parity
    against torch (also on ``data``, a dataset root, when given); ``legacy``: the
    TorchScript exporter instead of dynamo; ``lint``: polygraphy lint in the readiness check;
    ``boundary_flip_average``: whether the boundary graph averages each image's map with its
    mirror image's (None: as the net was fitted; False halves the graph's work at a small cost
    in quality, benchmarks/RESULTS.md section 3); ``boundary_int8``: also write the boundary
    graph in int8, calibrated on ``data``'s train images (:mod:`export.quantize`), which ONNX
    Runtime runs on CPUs.
    """

    mask_ratios: tuple[float, ...] | None = None
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    trt: bool = False
    max_batch: int = 32
    verify: bool = True
    data: str | os.PathLike | None = None
    legacy: bool = False
    workspace_gb: float = 4.0
    lint: bool = True
    boundary_flip_average: bool | None = None
    boundary_int8: bool = False


def export_bundle(ckpts: list[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  options: ExportOptions | None = None, *, log: Callable[[str], None] | None = None,
                  exported: list[dict[str, Any]] | None = None, **overrides: Any) -> B.Manifest:
    """Export checkpoints into the bundle ``out_dir`` (default ``<first ckpt stem>_bundle``),
    as ``options`` (:class:`ExportOptions`; keyword ``overrides`` replace its fields, e.g.
    ``export_bundle([ckpt], out, mask_ratios=[0.5], verify=False)``).  ``exported`` (a list)
    receives the entries written by this call.  Returns the re-read, sha-checked manifest.
    """
    opts = replace(options or ExportOptions(), **overrides)
    mask_ratios, opset, fp16, trt, max_batch = opts.mask_ratios, opts.opset, opts.fp16, opts.trt, opts.max_batch
    verify, data, legacy, workspace_gb, lint = opts.verify, opts.data, opts.legacy, opts.workspace_gb, opts.lint
    log = log or (lambda s: None)
    if opts.boundary_int8 and data is None:
        raise ValueError("the int8 boundary graph needs a dataset to calibrate on (ExportOptions.data, "
                         "lmae-export --data)")
    if isinstance(ckpts, (str, os.PathLike)):
        ckpts = [ckpts]
    ckpts = [Path(c) for c in ckpts]
    if not ckpts:
        raise ValueError("no checkpoint given")
    trt_mod = None
    if trt:
        from .tensorrt_build import gpu_name, require_tensorrt  # noqa: PLC0415
        trt_mod = require_tensorrt()  # before anything is written
    out = Path(out_dir) if out_dir is not None else ckpts[0].with_name(f"{ckpts[0].stem}_bundle")

    # ---- plan everything and refuse conflicts before writing -------------------------
    loaded = [(p, with_boundary_flip_average(load_checkpoint(p), opts.boundary_flip_average)) for p in ckpts]
    shared = shared_from_checkpoint(loaded[0][1], str(loaded[0][0]))
    for p, ck in loaded[1:]:
        B.check_compatible(shared, shared_from_checkpoint(ck, str(p)), str(p))
    if (out / B.MANIFEST).is_file():
        data_m = B.read_manifest(out, verify_files=False).data
        B.check_compatible(data_m, shared, str(ckpts[0]))
    else:
        if out.exists() and not out.is_dir():
            raise B.BundleError(f"{out}: exists and is not a folder")
        data_m = B.new_manifest(shared)
    precisions = ["fp32"] + (["fp16"] if fp16 else [])
    backends = ["onnxruntime"] + (["tensorrt"] if trt else [])
    jobs: list[tuple[Path, dict[str, Any], float]] = []
    names: dict[str, Path] = {}
    for p, ck in loaded:
        cfg = LMAEConfig.from_dict(ck["config"])
        ratios = list(dict.fromkeys(float(r) for r in (mask_ratios if mask_ratios else ck.get("mask_ratios") or [0.5])))
        for r in ratios:
            nm = num_masked(cfg.num_patches, r)  # validates the range
            if cfg.num_patches - nm < 1:
                raise ValueError(f"mask ratio {r} leaves no visible patch (L = {cfg.num_patches})")
            for prec in precisions:
                for be in backends:
                    n = engine_name(r, prec, be)
                    if n in names and names[n] != p:
                        raise B.BundleError(f"engine {n} would come from both {names[n].name} and {p.name}; "
                                            f"export them at different mask ratios or into different bundles")
                    names[n] = p
            jobs.append((p, ck, r))

    out.mkdir(parents=True, exist_ok=True)
    if shared["boundary"] and not (data_m.get(B.BOUNDARY_GRAPH) and (out / data_m[B.BOUNDARY_GRAPH]["file"]).is_file()):
        data_m[B.BOUNDARY_GRAPH] = _export_boundary(out, loaded[0][1], opset, legacy, lint, log)
        B.write_manifest(out, data_m)
    if shared["boundary"] and opts.boundary_int8:
        graph = data_m[B.BOUNDARY_GRAPH]
        int8 = graph.get("int8") or {}
        if not (int8.get("fp32_sha256") == graph["sha256"] and (out / int8["file"]).is_file()):
            spec, net = _boundary_net(loaded[0][1])
            graph["int8"] = export_int8_boundary(out, graph, net, spec, data, lint, log)
            B.write_manifest(out, data_m)
    fusion_graph = data_m.get(B.FUSION_GRAPH)
    if shared["fusion"] and not (fusion_graph and (out / fusion_graph["file"]).is_file()
                                 and fusion_graph.get("fusion_sha256") == B.fusion_sha256(shared["fusion"])):
        data_m[B.FUSION_GRAPH] = export_fusion_graph(out, shared["fusion"], lint, log)
        B.write_manifest(out, data_m)
    if trt:  # the boundary and fusion graphs run on TensorRT too
        for key in (B.BOUNDARY_GRAPH, B.FUSION_GRAPH):
            graph = data_m.get(key)
            built = (graph or {}).get("tensorrt") or {}
            if graph and not (built.get("onnx_sha256") == graph["sha256"] and (out / built["file"]).is_file()):
                graph["tensorrt"] = {**build_aux_engine(out, key, graph, max_batch, workspace_gb, log),
                                     "onnx_sha256": graph["sha256"]}
                B.write_manifest(out, data_m)
    trt_v = getattr(trt_mod, "__version__", None) if trt_mod else None
    gpu = gpu_name() if trt_mod else None
    producer = _producer(opset, legacy, trt_v, gpu)
    for p, ck, ratio in jobs:
        model = model_from_checkpoint(ck)
        cfg = model.cfg
        common = dict(label_resize=shared["label_resize"], threshold=shared["unknown_threshold"],
                      background_index=shared["background_index"])
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out))
        try:
            onnx_files: dict[str, dict[str, Path]] = {}
            entries: list[tuple[dict[str, Any], list[Path]]] = []
            for prec in precisions:
                t0 = time.time()
                files: dict[str, Path] = {}
                for part in PARTS:
                    f = tmp / file_name(part, ratio, prec, "onnxruntime")
                    log(f"exporting {p.name} m={ratio:g} {prec} {part} -> {f.name}")
                    export_onnx(model, f, part, ratio, opset=opset, dynamo=not legacy, fp16=(prec == "fp16"),
                                class_names=shared["class_names"])
                    files[part] = f
                onnx_files[prec] = files
                ready = {part: check_trt_readiness(files[part], lint=lint) for part in PARTS}
                for part in PARTS:
                    if not ready[part].ok:
                        log(f"warning: {files[part].name} is not TensorRT-ready: {ready[part].problems}")
                parity: dict[str, Any] = {"verified": False}
                if verify:
                    log(f"verifying {engine_name(ratio, prec, 'onnxruntime')} against torch")
                    parity = verify_engine(model, ratio, *ort_runners(files["encoder"], files["decoder"]), prec,
                                           data=data, **common)
                    parity["verified"] = True
                    if not parity["passed"]:
                        raise ExportError(f"{engine_name(ratio, prec, 'onnxruntime')}: ONNX Runtime agrees with torch "
                                          f"on {parity['argmax_agreement']:.4%} of pixels (< "
                                          f"{parity['min_agreement']:.2%}); max |diff| {parity['max_abs_diff']:.3g}")
                entry = _entry(ratio, prec, "onnxruntime", cfg, files, producer, p, parity, time.time() - t0)
                entry["readiness"] = {part: ready[part].to_dict() for part in PARTS}
                moved = [f for part in PARTS for f in [files[part]] + external_files(files[part])]
                entries.append((entry, moved))
            if trt:
                from .tensorrt_build import build_engine  # noqa: PLC0415
                for prec in precisions:
                    t0 = time.time()
                    files = {}
                    for part in PARTS:
                        f = tmp / file_name(part, ratio, prec, "tensorrt")
                        log(f"building TensorRT {prec} {part} -> {f.name}")
                        build_engine(onnx_files["fp32"][part], f, fp16=(prec == "fp16"), max_batch=max_batch,
                                     workspace_gb=workspace_gb, metadata={"mask_ratio": ratio, "part": part})
                        files[part] = f
                    parity = {"verified": False}
                    if verify:
                        parity = verify_engine(model, ratio, *trt_runners(files["encoder"], files["decoder"]), prec,
                                               data=data, **common)
                        parity["verified"] = True
                        if not parity["passed"]:
                            raise ExportError(f"{engine_name(ratio, prec, 'tensorrt')}: TensorRT agrees with torch "
                                              f"on {parity['argmax_agreement']:.4%} of pixels")
                    entry = _entry(ratio, prec, "tensorrt", cfg, files, producer, p, parity, time.time() - t0)
                    entry["max_batch"] = max_batch
                    moved = [path for part in PARTS
                             for path in (files[part], files[part].with_name(files[part].name + ".json"))]
                    entries.append((entry, [m for m in moved if m.exists()]))
            # ---- commit: move files in, then rewrite the manifest -------------------
            for entry, moved in entries:
                for f in moved:
                    os.replace(f, out / f.name)
                for part in PARTS:
                    entry[part] = B.file_entry(out / entry[part]["file"])
                B.upsert_engine(data_m, entry)
                B.write_manifest(out, data_m)
                log(f"wrote {entry['name']}")
                if exported is not None:
                    exported.append(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return B.read_manifest(out, verify_files=True)


def _entry(ratio: float, prec: str, backend: str, cfg: LMAEConfig, files: dict[str, Path],
           producer: dict[str, Any], ckpt: Path, parity: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "name": engine_name(ratio, prec, backend),
        "mask_ratio": float(ratio),
        "num_visible": cfg.num_visible(ratio),
        "num_patches": cfg.num_patches,
        "precision": prec,
        "backend": backend,
        "encoder": {"file": files["encoder"].name},
        "decoder": {"file": files["decoder"].name},
        "inputs": {"encoder": encoder_input_names(cfg), "decoder": decoder_input_names(cfg)},
        "outputs": {"encoder": ["latent"], "decoder": ["logits"]},
        "model_config": cfg.to_dict(),
        "producer": dict(producer),
        "source_checkpoint": ckpt.name,
        "parity": parity,
        "export_seconds": round(seconds, 2),
    }


def graph_ops(bundle_dir: str | os.PathLike, entry: dict[str, Any]) -> dict[str, list[str]]:
    """Op types of an ONNX entry's graphs (empty for TensorRT engines)."""
    if entry["backend"] != "onnxruntime":
        return {}
    return {part: op_list(Path(bundle_dir) / entry[part]["file"]) for part in PARTS}
