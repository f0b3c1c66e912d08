"""The bundle's fusion graph: pixel fusion's row scoring as ONNX (``fusion_fp32.onnx``).

Inputs ``features`` (R, F) float32 and ``classes`` (R,) int64, output ``scores`` (R,):
the MLP (Gemm, Relu) plus the class bias gathered by class, exactly
:class:`lmae_sdk.fusion_rows.HostRowScorer`'s function (:mod:`lmae_sdk.fusion_rows`
says where the rows come from).  The graph is written from the fusion's weights with
``onnx.helper`` (no tracing), checked for TensorRT readiness like the other graphs, and
checked against the host scorer on random rows before it is moved into the bundle.  Its
manifest entry carries the fingerprint of the fusion it was made from, so that the
runtime refuses a graph that does not match the manifest's fusion.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmae_sdk.bundle import file_entry, fusion_sha256
from lmae_sdk.fusion import PixelFusion
from lmae_sdk.fusion_rows import HostRowScorer

from .onnx_export import set_metadata
from .readiness import write_checked_graph

FUSION_FILE = "fusion_fp32.onnx"
FUSION_OPSET = 18


def fusion_model(fusion: PixelFusion) -> onnx.ModelProto:
    """The scoring graph of ``fusion``: (features (R, F), classes (R,)) -> scores (R,)."""
    inits, nodes = [], []
    x = "features"
    for i, (w, b) in enumerate(fusion.layers):
        inits += [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"w{i}"),
                  numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < len(fusion.layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            x = f"a{i}"
    inits += [numpy_helper.from_array(np.asarray(fusion.class_bias, np.float32), "class_bias"),
              numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes += [helper.make_node("Reshape", [x, "flat"], ["mlp"]),
              helper.make_node("Gather", ["class_bias", "classes"], ["bias"], axis=0),
              helper.make_node("Add", ["mlp", "bias"], ["scores"])]
    width = len(fusion.features)
    graph = helper.make_graph(
        nodes, "lmae_pixel_fusion",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["rows", width]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, ["rows"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["rows"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FUSION_OPSET)],
                              producer_name="lmae-sdk")
    set_metadata(model, {"lmae.part": "fusion", "lmae.fusion_version": str(fusion.version),
                         "lmae.index_max": str(fusion.num_classes - 1)})
    onnx.checker.check_model(model)
    return model


def verify_fusion(fusion: PixelFusion, path: str | os.PathLike, rows: int = 5000, tolerance: float = 1e-4,
                  seed: int = 0) -> dict[str, Any]:
    """ONNX Runtime against the host scorer on random rows: max |score difference| and the
    share of 4-row groups whose best row agrees."""
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (rows, len(fusion.features))).astype(np.float32)
    classes = rng.integers(0, fusion.num_classes, rows).astype(np.int64)
    got = sess.run(None, {"features": features, "classes": classes})[0]
    want = HostRowScorer(fusion)(features, classes)
    diff = float(np.abs(got - want).max())
    same_best = float((got.reshape(-1, 4).argmax(1) == want.reshape(-1, 4).argmax(1)).mean())
    return {"max_abs_diff": diff, "same_best_row": same_best, "tolerance": tolerance, "passed": diff <= tolerance,
            "verified": True}


def export_fusion_graph(out: Path, fusion_dict: dict[str, Any], lint: bool,
                        log: Callable[[str], None]) -> dict[str, Any]:
    """Write ``fusion_fp32.onnx`` into ``out`` (atomically, after the readiness and parity
    checks); returns its manifest entry."""
    fusion = PixelFusion.from_dict(fusion_dict, "fusion")

    def write(f: Path) -> None:
        log(f"exporting the pixel fusion's scoring ({len(fusion.features)} features, "
            f"{fusion.layers[0][0].shape[1]} hidden) -> {f.name}")
        onnx.save(fusion_model(fusion), str(f))

    ready, parity = write_checked_graph(out, FUSION_FILE, write, lambda f: verify_fusion(fusion, f), lint, log,
                                        "the host scorer")
    return {**file_entry(out / FUSION_FILE), "inputs": ["features", "classes"], "outputs": ["scores"],
            "fusion_sha256": fusion_sha256(fusion_dict), "readiness": ready.to_dict(), "parity": parity}
