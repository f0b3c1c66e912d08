"""The boundary graph in int8, for CPUs.

The boundary net is a small convolutional net run at full image size, the largest graph of a
bundle on a CPU.  ONNX Runtime's static quantization (QDQ: int8 weights per output channel,
uint8 activations, their ranges calibrated on the dataset's train images) about halves its
time on a CPU with int8 dot products; the geodesic step cost it feeds moves little
(benchmarks/RESULTS.md section 3).  Weights use 7 of their 8 bits (``reduce_range``), so
that CPUs without VNNI, whose int8 dot products saturate at full range, compute the same.

The int8 graph sits next to the fp32 one (manifest ``boundary_graph.int8``): the runtime
runs it on ONNX Runtime's CPU provider; CUDA and TensorRT keep the fp32 graph.  Its parity
check compares its maps with torch's on images it was not calibrated on (val's, where the
dataset has a val split), by the mean absolute difference of the probabilities.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lmae_sdk.boundaries import BoundarySpec, boundary_input

from .onnx_export import ExportError

INT8_BOUNDARY_FILE = "boundary_int8.onnx"
CALIBRATION_IMAGES = 24  # train images whose activation ranges set the int8 scales
CHECK_IMAGES = 8  # other images (val's, where the dataset has one) the int8 maps are compared on
MEAN_DIFF_TOLERANCE = 0.01  # mean |probability difference| against torch fp32


class Int8BoundaryError(ExportError):
    """The int8 boundary graph could not be made or departs from torch beyond its tolerance."""


def dataset_images(data: str | Path, count: int, splits: tuple[str, ...] = ("train", "val", "test"),
                   offset: float = 0.0) -> list[np.ndarray]:
    """``count`` RGB images spread evenly over the first of ``splits`` the dataset has, each
    ``offset`` of a spacing in (0.5 falls between the images an offset of 0 picks)."""
    from lmae_sdk.datasets import load_dataset  # noqa: PLC0415
    from lmae_sdk.labels import read_image  # noqa: PLC0415

    root = Path(data)
    split = next((s for s in splits if (root / s).is_dir()), splits[0])
    pairs = load_dataset(root, splits=(split,)).pairs[split]
    if not pairs:
        raise ValueError(f"{root}: no images in its {split} split for the int8 boundary graph")
    step = max(1, len(pairs) // max(count, 1))
    return [read_image(pairs[int((i + offset) * step) % len(pairs)][0]) for i in range(min(count, len(pairs)))]


def quantize_boundary_graph(fp32_path: Path, out_path: Path, inputs: list[np.ndarray]) -> None:
    """Write the int8 (QDQ) form of the boundary graph ``fp32_path`` to ``out_path``, its
    activation ranges calibrated on ``inputs`` (the net's (3, h, w) float32 inputs)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,  # noqa: PLC0415
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"image": x[None]} for x in inputs])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix=".tmp-quantize-", dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def int8_parity(net: torch.nn.Module, spec: BoundarySpec, path: Path, images: list[np.ndarray],
                tolerance: float = MEAN_DIFF_TOLERANCE) -> dict[str, Any]:
    """The int8 graph's maps (ONNX Runtime, CPU) against torch fp32 on ``images``."""
    from .verify import _ort_session, boundary_differences  # noqa: PLC0415

    sess = _ort_session(path, 1)
    diffs = [boundary_differences(net, spec, sess, boundary_input(image, spec)[None]) for image in images]
    mean = float(np.mean([d.mean() for d in diffs]))
    return {"mean_abs_diff": mean, "max_abs_diff": float(max(d.max() for d in diffs)), "measure": "mean_abs_diff",
            "tolerance": tolerance, "images": len(images), "passed": mean <= tolerance, "verified": True}


def export_int8_boundary(out: Path, fp32_entry: dict[str, Any], net: torch.nn.Module, spec: BoundarySpec,
                         data: str | Path, lint: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Write ``boundary_int8.onnx`` into ``out`` (atomically, after its parity check) from the
    bundle's fp32 boundary graph; returns its manifest entry (``boundary_graph.int8``)."""
    from lmae_sdk import bundle as B  # noqa: PLC0415

    from .readiness import write_checked_graph  # noqa: PLC0415

    calibration = [boundary_input(im, spec) for im in dataset_images(data, CALIBRATION_IMAGES)]
    held_out = dataset_images(data, CHECK_IMAGES, ("val", "test", "train"), offset=0.5)  # val where there is one

    def write(f: Path) -> None:
        log(f"quantizing the boundary graph to int8 on {len(calibration)} images of {Path(data).name} -> {f.name}")
        quantize_boundary_graph(out / fp32_entry["file"], f, calibration)

    try:
        ready, parity = write_checked_graph(out, INT8_BOUNDARY_FILE, write,
                                            lambda f: int8_parity(net, spec, f, held_out), lint, log, "torch fp32")
    except ExportError as e:
        raise Int8BoundaryError(str(e)) from None
    return {**B.file_entry(out / INT8_BOUNDARY_FILE), "fp32_sha256": fp32_entry["sha256"],
            "calibration": {"images": len(calibration), "data": Path(data).name},
            "readiness": ready.to_dict(), "parity": parity}
