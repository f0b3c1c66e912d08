"""One graph of an L-MAE checkpoint -> one ONNX file.

``torch.onnx.export(..., dynamo=True)`` at opset 18 by default (int64 index inputs;
ONNX Runtime matches torch to ~1e-6); ``dynamo=False`` is the legacy TorchScript
exporter, kept as a fallback (``lmae-export --legacy``).  Only axis 0 ("batch") is
dynamic: K, L, H, W, N are fixed per file.  The model config, mask ratio, K, L and
class names go into ``metadata_props`` (keys ``lmae.*``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from lmae_sdk.boundaries import BoundarySpec
from lmae_sdk.model import LMAE

from .graphs import BoundaryGraph, example_inputs, input_names, make_graph, output_names
from .onnx_passes import gelu_for_fusion

DEFAULT_OPSET = 18
BATCH_AXIS = "batch"
MAX_BATCH_TRACE = 4096
# protobuf's hard limit is 2 GiB; keep a margin for graph structure
SINGLE_FILE_LIMIT = 1_900_000_000


class ExportError(RuntimeError):
    pass


# torch.onnx's dynamo exporter logs "torchvision is not installed. Skipping torchvision::nms"
# (and roi_align, roi_pool, deform_conv2d) on every export when torchvision is absent; the
# graphs use no torchvision op
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


def _not_torchvision_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def _without_torchvision_notice():
    """Drop that notice while the block runs (a filter on torch's logger, removed after)."""
    logger = logging.getLogger(_REGISTRATION_LOGGER)
    logger.addFilter(_not_torchvision_notice)
    try:
        yield
    finally:
        logger.removeFilter(_not_torchvision_notice)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def graph_metadata(model: LMAE, part: str, mask_ratio: float, precision: str, class_names: list[str] | None,
                   exporter: str, opset: int) -> dict[str, str]:
    cfg = model.cfg
    return {
        "lmae.part": part,
        "lmae.model_config": json.dumps(cfg.to_dict()),
        "lmae.mask_ratio": repr(float(mask_ratio)),
        "lmae.num_visible": str(cfg.num_visible(mask_ratio)),
        "lmae.num_patches": str(cfg.num_patches),
        # largest value any int64 index input can hold (ids < L): proves int32 range
        "lmae.index_max": str(cfg.num_patches - 1),
        "lmae.class_names": json.dumps(list(class_names) if class_names is not None else None),
        "lmae.precision": precision,
        "lmae.inputs": json.dumps(input_names(cfg, part)),
        "lmae.outputs": json.dumps(output_names(part)),
        "lmae.exporter": exporter,
        "lmae.opset": str(opset),
    }


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v


def export_onnx(model: LMAE, path: str | os.PathLike, part: str, mask_ratio: float, opset: int = DEFAULT_OPSET,
                dynamo: bool = True, fp16: bool = False, class_names: list[str] | None = None,
                verbose: bool = False) -> Path:
    """Export the ``part`` ("encoder" | "decoder") graph of ``model`` at ``mask_ratio``.

    ``fp16``: weights and compute in float16 (LayerNorm float32), graph I/O float32.
    Returns ``path``; the file is a single self-contained ``.onnx`` when the weights fit
    under 2 GB, else it has external data next to it (``<name>.data``).
    """
    model = model.eval()
    cfg = model.cfg
    graph = make_graph(model, part, half=fp16)
    meta = graph_metadata(model, part, mask_ratio, "fp16" if fp16 else "fp32", class_names,
                          "dynamo" if dynamo else "legacy", opset)
    return _trace(graph, example_inputs(cfg, part, mask_ratio, batch=2), output_names(part), Path(path), meta, opset,
                  dynamo, verbose, part)


def export_boundary_onnx(net: torch.nn.Module, spec: BoundarySpec, path: str | os.PathLike,
                         opset: int = DEFAULT_OPSET, dynamo: bool = True, verbose: bool = False) -> Path:
    """The boundary net (:mod:`lmae_sdk.boundaries`) -> ``image`` (B, 3, h, w) ->
    ``boundary`` (B, 2, h, w) probabilities; static h, w (``spec.size``), dynamic batch."""
    h, w = spec.size
    image = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    meta = {"lmae.part": "boundary", "lmae.boundary": json.dumps(spec.to_dict()), "lmae.inputs": '["image"]',
            "lmae.outputs": '["boundary"]', "lmae.exporter": "dynamo" if dynamo else "legacy", "lmae.opset": str(opset)}
    return _trace(BoundaryGraph(net, spec.flip_average), {"image": image}, ["boundary"], Path(path), meta, opset,
                  dynamo, verbose, "boundary")


def _trace(graph: torch.nn.Module, inputs: dict[str, torch.Tensor], outs: list[str], path: Path,
           meta: dict[str, str], opset: int, dynamo: bool, verbose: bool, part: str) -> Path:
    """Export ``graph`` (its forward takes ``inputs`` by name, in order) with a dynamic batch
    axis, name it, declare static output dims, store ``meta``, check the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(inputs)
    args = tuple(inputs.values())
    big = _param_bytes(graph) >= SINGLE_FILE_LIMIT
    with torch.no_grad():
        out_shape = tuple(graph(*args).shape)
    sink = io.StringIO()
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(sink)
    try:
        with quiet, warnings.catch_warnings(), torch.no_grad(), _without_torchvision_notice():
            warnings.simplefilter("ignore")
            if dynamo:
                batch = torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH_TRACE)
                dyn = {n: {0: batch} for n in names}
                prog = torch.onnx.export(graph, args, dynamo=True, opset_version=opset, input_names=names,
                                         output_names=outs, dynamic_shapes=dyn, verbose=verbose,
                                         optimize=True)
                if prog is None:
                    raise ExportError("torch.onnx.export(dynamo=True) returned no program")
                prog.save(str(path), external_data=big)
            else:
                torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                                  output_names=outs, dynamic_axes={n: {0: BATCH_AXIS} for n in names + outs},
                                  do_constant_folding=True)
    except ExportError:
        raise
    except Exception as e:
        hint = "" if not dynamo else " (try --legacy for the TorchScript exporter)"
        raise ExportError(f"{part} export to ONNX failed: {type(e).__name__}: {e}{hint}") from e

    proto = onnx.load(str(path), load_external_data=True)
    # name the batch axis "batch" everywhere (dynamo may name it s0 / s1)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_AXIS
    # the legacy exporter leaves output dims symbolic: declare them (only batch is dynamic)
    for vi in proto.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == len(out_shape):
            for d, v in zip(list(dims)[1:], out_shape[1:]):
                d.dim_value = int(v)
    gelu_for_fusion(proto)  # ONNX Runtime then fuses each GELU into one kernel
    set_metadata(proto, meta)
    got = [i.name for i in proto.graph.input]
    if got != names:
        raise ExportError(f"{part}: exported inputs {got} differ from the contract {names}")
    if [o.name for o in proto.graph.output] != outs:
        raise ExportError(f"{part}: exported outputs {[o.name for o in proto.graph.output]} differ from {outs}")
    _save(proto, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportError(f"{path.name}: onnx.checker rejects the graph: {e}") from e
    return path


def _save(proto: onnx.ModelProto, path: Path) -> None:
    data = path.with_name(path.name + ".data")
    if proto.ByteSize() < SINGLE_FILE_LIMIT:
        onnx.save_model(proto, str(path), save_as_external_data=False)
        # a stale external-data file from the dynamo writer is no longer referenced
        for cand in (data, path.with_suffix(".onnx.data")):
            if cand.exists():
                cand.unlink()
    else:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)


def op_list(path_or_proto: Any) -> list[str]:
    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(
        str(path_or_proto), load_external_data=False)
    return sorted({n.op_type for n in proto.graph.node})


def external_files(path: str | os.PathLike) -> list[Path]:
    """External-data files a saved ONNX model refers to (empty for a single file)."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    locs = set()
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                locs.add(e.value)
    return [path.parent / x for x in sorted(locs)]
