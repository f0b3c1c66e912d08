"""TensorRT engines of a bundle's auxiliary graphs: the boundary net and the fusion's scoring.

With ``lmae-export --trt`` every graph of the bundle runs on TensorRT: besides the encoder
and decoder of each engine entry, the boundary graph (``boundary_fp32.engine``, batch
axis dynamic) and the fusion graph (``fusion_fp32.engine``, rows axis dynamic up to
:data:`FUSION_MAX_ROWS` per call).  Each engine is built from its ONNX graph, checked
against ONNX Runtime on random inputs, then moved into the bundle; its entry goes under
the graph's manifest entry as ``tensorrt`` (file, sha256, bytes, max_batch, parity).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lmae_sdk.bundle import file_entry

from .onnx_export import ExportError

# rows per call of the fusion engine (one 360x480 image with half its pixels unknown gives ~1e5)
FUSION_MAX_ROWS = 1 << 18
# the largest |difference| from ONNX Runtime each graph may show (TensorRT's fp32 may use TF32)
TOLERANCE = {"boundary_graph": 5e-3, "fusion_graph": 2e-2}


def _random_feed(session, batch: int, rng: np.random.Generator, index_max: int) -> dict[str, np.ndarray]:
    feed = {}
    for i in session.get_inputs():
        shape = [batch] + [int(d) for d in i.shape[1:]]
        if i.type == "tensor(int64)":
            feed[i.name] = rng.integers(0, index_max + 1, shape).astype(np.int64)
        else:
            feed[i.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feed


def engine_parity(onnx_path: Path, engine_path: Path, batch: int, tolerance: float, seed: int = 0) -> dict[str, Any]:
    """TensorRT against ONNX Runtime on one random batch: max |difference| of every output."""
    import onnxruntime as ort  # noqa: PLC0415

    from lmae_sdk.trt_engine import TrtEngine  # noqa: PLC0415

    from .tensorrt_build import engine_device_memory, require_tensorrt  # noqa: PLC0415

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    index_max = int(session.get_modelmeta().custom_metadata_map.get("lmae.index_max", 0))
    feed = _random_feed(session, batch, np.random.default_rng(seed), index_max)
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    got = TrtEngine(engine_path, engine_device_memory(), require_tensorrt()).run(feed)
    diff = max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)
    return {"max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance, "verified": True,
            "batch": batch}


def build_aux_engine(out: Path, key: str, entry: dict[str, Any], max_batch: int, workspace_gb: float,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Build the TensorRT engine of the graph in manifest entry ``entry`` (``key``:
    ``boundary_graph`` or ``fusion_graph``), check it, move it into ``out``; returns the
    engine's entry (to store as ``entry["tensorrt"]``)."""
    from .tensorrt_build import build_engine  # noqa: PLC0415

    onnx_path = out / entry["file"]
    name = Path(entry["file"]).with_suffix(".engine").name
    rows = key == "fusion_graph"
    limit = FUSION_MAX_ROWS if rows else max_batch
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out))
    try:
        f = tmp / name
        log(f"building TensorRT fp32 {key.replace('_', ' ')} -> {f.name}")
        build_engine(onnx_path, f, max_batch=limit, opt_batch=limit // 4 if rows else 1,
                     workspace_gb=workspace_gb, metadata={"part": key})
        parity = engine_parity(onnx_path, f, 4096 if rows else 1, TOLERANCE[key])
        if not parity["passed"]:
            raise ExportError(f"{name}: TensorRT differs from ONNX Runtime by {parity['max_abs_diff']:.3g} "
                              f"(> {parity['tolerance']:g})")
        for moved in (f, f.with_name(f.name + ".json")):
            if moved.exists():
                os.replace(moved, out / moved.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**file_entry(out / name), "max_batch": limit, "parity": parity}
