"""Loading what a completer is built from (:class:`LoadedModel`): a bundle folder (its
manifest is the contract) or a ``.pt`` checkpoint (the torch backend), and the choice of
backend for ``backend="auto"``.  ``LMAECompleter.load`` calls :func:`load`."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..boundary_map import BoundarySpec
from ..bundle import (BOUNDARY_GRAPH, FUSION_GRAPH, BundleError, Manifest, check_contract, check_graph, check_model,
                      engine_config, read_manifest)
from ..extras import require_torch
from ..masking import num_masked
from ..pipeline import CompletionSettings, SettingsError
from .backends import (BACKENDS, BackendError, Engine, OrtBackend, OrtBoundaries, OrtFusionScorer, TorchBackend,
                       TrtBackend, TrtBoundaries, TrtFusionScorer, ort_available, ort_cuda_available, trt_available)

if TYPE_CHECKING:
    import numpy as np

    from ..config import LMAEConfig
    from ..fusion_rows import RowScorer

log = logging.getLogger("lmae_sdk.runtime")

PRECISION_PREFERENCE = {"cpu": ("fp32", "fp16"), "gpu": ("fp16", "fp32")}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """What ``LMAECompleter.load`` builds the completer from (its constructor's arguments)."""

    cfg: LMAEConfig
    engines: list[Engine]
    settings: CompletionSettings
    boundaries: Callable[[np.ndarray], np.ndarray] | None = None  # image -> (2, H, W) class-boundary map
    fusion_scorer: RowScorer | None = None  # the bundle's fusion graph (None: pixel fusion scores on the host)
    source: str = ""
    backend_name: str = ""


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """What ``LMAECompleter.load`` was asked for (see its docstring)."""

    backend: str = "auto"
    device: str | None = None
    threads: int = 0  # ONNX Runtime's intra-op threads (0: all cores); torch runs on the process's setting
    precision: str | None = None
    mask_ratios: Sequence[float] | None = None
    unknown_index: int | None = None
    pixel_fusion: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")

    def settings(self, d: dict[str, Any], source: str) -> CompletionSettings:
        """The completion settings of a checkpoint or manifest, with this load's overrides."""
        try:
            settings = CompletionSettings.from_dict(d, source)
            if self.unknown_index is not None:
                settings = replace(settings, unknown_index=int(self.unknown_index))
        except SettingsError as e:
            raise BundleError(str(e)) from None
        return settings if self.pixel_fusion else replace(settings, fusion=None)


def load(path: Path, opts: LoadOptions) -> LoadedModel:
    if path.is_file():
        if opts.backend not in ("auto", "torch"):
            raise BackendError(f"{path} is a .pt checkpoint: it runs on the torch backend; export a bundle "
                               f"(lmae-export) for {opts.backend}")
        return from_checkpoint(path, opts)
    man = read_manifest(path)
    check_contract(man)
    return from_bundle(man, opts)


def from_checkpoint(path: Path, opts: LoadOptions, manifest: Manifest | None = None) -> LoadedModel:
    """A ``.pt`` on the torch backend; ``manifest``: the bundle that holds it, whose shared
    settings the checkpoint must agree with and which then decide the host work."""
    require_torch(f"{path.name}: the torch backend (a .pt checkpoint)")
    import torch

    from ..boundaries import boundaries_from_checkpoint
    from ..checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    settings_from, source = ckpt, str(path)
    if manifest is not None:
        check_model(manifest, ckpt["config"], f"checkpoint {path}", ckpt.get("normalization"), "config")
        _check_boundary_net(manifest, ckpt, path)
        settings_from, source = manifest.data, str(manifest.root)
    settings = opts.settings(settings_from, source)
    model = model_from_checkpoint(ckpt, path)
    cfg = model.cfg
    device = opts.device or ("cuda" if cuda_available() else "cpu")
    ratios = sorted({float(m) for m in (opts.mask_ratios or ckpt["mask_ratios"])})
    names = cfg.graph_inputs()
    engines = [Engine(m, cfg.num_visible(m), num_masked(cfg.num_patches, m),
                      TorchBackend(model, m, cfg.num_visible(m), names, device)) for m in ratios]
    # torch's thread count is the process's, left to the caller (backends.set_torch_threads): opts.threads is
    # not applied
    log.info("backend torch on %s (%s), engines m=%s, %d torch threads (the process's setting)", device, path.name,
             ratios, torch.get_num_threads())
    return LoadedModel(cfg, engines, settings, boundaries=boundaries_from_checkpoint(ckpt, device, str(path)),
                       source=source, backend_name="torch")


def from_bundle(man: Manifest, opts: LoadOptions) -> LoadedModel:
    kinds = {e["backend"] for e in man.engines}
    ckpt = bundle_checkpoint(man)
    if opts.backend == "auto":
        return _auto(man, opts, kinds, ckpt)
    if opts.backend == "torch":
        if ckpt is None:
            raise BackendError(f"{man.root}: the torch backend needs the .pt checkpoint; this bundle holds "
                               f"{sorted(kinds)} engines only (pass the .pt path instead)")
        ratios = opts.mask_ratios or sorted({e["mask_ratio"] for e in man.engines}) or None
        return from_checkpoint(ckpt, replace(opts, mask_ratios=ratios), manifest=man)
    if opts.backend not in kinds:
        raise BackendError(f"{man.root}: the bundle holds no {opts.backend} engines (it has {sorted(kinds)})")
    chosen = _choose_engines(man, opts)
    first = next(iter(chosen.values()))  # its config agrees with the manifest (load's check_contract)
    cfg = engine_config(first["model_config"], f"{man.root}: engine {first['name']!r}")
    engines = [_engine(man, e, m, opts) for m, e in sorted(chosen.items())]
    d = man.data
    boundaries, fusion_scorer = _aux_graphs(man, opts)
    log.info("backend %s (%s), providers %s, engines %s", opts.backend, opts.device or "cpu",
             engines[0].backend.providers, [(en.mask_ratio, chosen[en.mask_ratio]["precision"]) for en in engines])
    return LoadedModel(cfg, engines, opts.settings(d, str(man.root / "manifest.json")), boundaries=boundaries,
                       fusion_scorer=fusion_scorer, source=str(man.root), backend_name=engines[0].backend.name)


def _aux_graphs(man: Manifest, opts: LoadOptions) -> tuple[Any, Any]:
    """(boundary map runner or None, fusion row scorer or None) of a bundle: on TensorRT
    when the engines run there and the bundle holds the graphs' TensorRT engines (``lmae-export
    --trt``), else on ONNX Runtime: the engines' device, CUDA for a TensorRT bundle when
    onnxruntime-gpu sees a GPU.  On ONNX Runtime's CPU provider the boundary graph runs in int8
    where the bundle holds it (``lmae-export --boundary-int8``), unless fp32 is asked for
    (``precision="fp32"``).  A bundle exported without a fusion graph scores on the host."""
    d, trt = man.data, opts.backend == "tensorrt"
    device = (opts.device or "cpu") if opts.backend == "onnxruntime" else ("cuda" if ort_cuda_available() else "cpu")
    boundaries = fusion_scorer = None
    if d.get("boundary"):
        graph, spec = d[BOUNDARY_GRAPH], BoundarySpec.from_dict(d["boundary"], str(man.root))
        int8 = graph.get("int8") if device == "cpu" and opts.precision != "fp32" else None
        boundaries = TrtBoundaries(man.root / graph["tensorrt"]["file"], spec) if trt and graph.get("tensorrt") \
            else OrtBoundaries(man.root / (int8 or graph)["file"], spec, device)
    graph = d.get(FUSION_GRAPH)
    if opts.pixel_fusion and graph:
        fusion_scorer = TrtFusionScorer(man.root / graph["tensorrt"]["file"]) if trt and graph.get("tensorrt") \
            else OrtFusionScorer(man.root / graph["file"], device)
    return boundaries, fusion_scorer


def _auto(man: Manifest, opts: LoadOptions, kinds: set[str], ckpt: Path | None) -> LoadedModel:
    """TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU > torch, from what is installed and
    what the bundle holds; the first that loads."""
    choices = []
    if "tensorrt" in kinds and trt_available():
        choices.append(("tensorrt", "cuda"))
    if "onnxruntime" in kinds and ort_cuda_available() and (opts.device or "cuda").startswith("cuda"):
        choices.append(("onnxruntime", "cuda"))
    if "onnxruntime" in kinds and ort_available():
        choices.append(("onnxruntime", "cpu"))
    if ckpt is not None:
        choices.append(("torch", opts.device))
    if not choices:
        raise BackendError(f"{man.root}: no usable backend: the bundle holds {sorted(kinds)} engines; "
                           f"install onnxruntime (pip install 'lmae-sdk[cpu]') or tensorrt")
    errors = []
    for name, dev in choices:
        try:
            out = from_bundle(man, replace(opts, backend=name, device=dev))
        except BackendError as e:  # e.g. the GPU wheel without a working CUDA: next choice
            log.warning("backend %s (%s) unavailable: %s", name, dev, e)
            errors.append(f"{name}: {e}")
            continue
        log.info("auto backend: %s (candidates %s)", out.backend_name, [c[0] for c in choices])
        return out
    raise BackendError(f"{man.root}: no backend could load: " + "; ".join(errors))


def _choose_engines(man: Manifest, opts: LoadOptions) -> dict[float, dict[str, Any]]:
    """{mask ratio: the manifest entry of the preferred precision} for ``opts.backend``."""
    gpu = opts.backend == "tensorrt" or (opts.device or "cpu").startswith("cuda")
    pref = (opts.precision,) if opts.precision else PRECISION_PREFERENCE["gpu" if gpu else "cpu"]
    chosen: dict[float, dict[str, Any]] = {}
    for e in man.find(backend=opts.backend):
        m = round(float(e["mask_ratio"]), 6)
        if opts.mask_ratios and not any(abs(m - r) < 1e-6 for r in opts.mask_ratios):
            continue
        if e["precision"] not in pref:
            continue
        cur = chosen.get(m)
        if cur is None or pref.index(e["precision"]) < pref.index(cur["precision"]):
            chosen[m] = e
    if not chosen:
        raise BackendError(f"{man.root}: no {opts.backend} engine with precision {list(pref)}"
                           + (f" and mask ratios {list(opts.mask_ratios)}" if opts.mask_ratios else ""))
    return chosen


def _engine(man: Manifest, e: dict[str, Any], m: float, opts: LoadOptions) -> Engine:
    enc, dec = man.file(e, "encoder"), man.file(e, "decoder")
    if opts.backend == "onnxruntime":
        be = OrtBackend(enc, dec, m, e["num_visible"], e["inputs"], opts.device or "cpu", opts.threads, e["precision"])
        for part, sess in be.sessions.items():  # what export wrote into the graph itself
            check_graph(man, e, part, sess.get_modelmeta().custom_metadata_map, [i.name for i in sess.get_inputs()])
    else:
        be = TrtBackend(enc, dec, m, e["num_visible"], e["inputs"], e["precision"])
    return Engine(m, int(e["num_visible"]), int(e["num_patches"]) - int(e["num_visible"]), be)


def bundle_checkpoint(man: Manifest) -> Path | None:
    """The ``.pt`` a bundle holds for the torch backend, if any."""
    ref = man.data.get("checkpoint")
    if isinstance(ref, dict):
        ref = ref.get("file")
    if ref and (man.root / ref).is_file():
        return man.root / ref
    pts = sorted(man.root.glob("*.pt"))
    return pts[0] if len(pts) == 1 else None


def _check_boundary_net(man: Manifest, ckpt: dict[str, Any], path: Path) -> None:
    """The bundle's checkpoint must hold the boundary net the manifest states (spec and
    weights fingerprint), or none when it states none."""
    from ..boundaries import weights_sha256

    entry = ckpt.get("boundary_net")
    has = None if not entry else {**BoundarySpec.from_dict(entry, str(path)).to_dict(),
                                  "weights_sha256": weights_sha256(entry["state_dict"])}
    stated = man.data.get("boundary") or None
    if has != stated:
        raise BundleError(f"{man.root / 'manifest.json'}: manifest boundary {stated!r} contradicts checkpoint {path}: "
                          f"its boundary net is {has!r}")


def cuda_available() -> bool:
    """torch sees a CUDA device (False without torch)."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA install
        return False
