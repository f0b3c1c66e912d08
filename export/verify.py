"""Parity of exported graphs against the torch model (fp32 reference).

Inputs go through the runtime's pipeline (:func:`lmae_sdk.pipeline.prepare`,
:func:`lmae_sdk.routing.mask_plan`, :func:`lmae_sdk.pipeline.graph_inputs`): random partial
labels over random images, and, with ``data``, real (image, label) pairs degraded by
``degrade.degrade``.
Reported per engine: max |logit difference| and argmax agreement over all pixels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lmae_sdk.labels import UNKNOWN
from lmae_sdk.masking import MaskPlan
from lmae_sdk.model import LMAE
from lmae_sdk.pipeline import ModelInputs, graph_inputs, prepare
from lmae_sdk.routing import mask_plan

from .graphs import decoder_input_names, encoder_input_names

# an fp32 engine below this argmax agreement fails the export; fp16 is checked against its own
FP32_MIN_AGREEMENT = 0.9999
FP16_MIN_AGREEMENT = 0.99

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Case:
    """A batch: per image its model inputs and mask plan."""

    inputs: list[ModelInputs]
    plans: list[MaskPlan]


def _random_partial(rng: np.random.Generator, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    coarse = rng.integers(0, n, size=(max(1, h // 16), max(1, w // 16)))
    lab = np.kron(coarse, np.ones((16, 16), dtype=np.int64))[:h, :w]
    lab = np.pad(lab, ((0, h - lab.shape[0]), (0, w - lab.shape[1])), mode="edge").astype(np.uint8)
    hole = np.kron(rng.random((max(1, h // 8), max(1, w // 8))) < rng.uniform(0.2, 0.7),
                   np.ones((8, 8), dtype=bool))[:h, :w]
    hole = np.pad(hole, ((0, h - hole.shape[0]), (0, w - hole.shape[1])), mode="edge")
    lab[hole] = UNKNOWN
    lab[0, 0] = 0  # at least one known pixel
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return img, lab


def random_cases(model: LMAE, mask_ratio: float, n: int = 4, seed: int = 0, label_resize: str = "soft",
                 threshold: float = 0.5, background_index: int | None = None, batch: int = 2) -> list[Case]:
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    items, plans = [], []
    for i in range(n):
        # vary the image size so resizing is exercised too
        size = (cfg.img_size[0] + 8 * (i % 2), cfg.img_size[1] - 8 * (i % 3))
        img, lab = _random_partial(rng, cfg.num_classes, size)
        mi = prepare(img, lab, cfg, label_resize, boundary=_flat_boundary(cfg, lab.shape))
        items.append(mi)
        plans.append(mask_plan(mi, cfg, mask_ratio, threshold=threshold, background_index=background_index,
                               rng=rng))
    return _batch(items, plans, batch)


def data_cases(model: LMAE, mask_ratio: float, data: str | os.PathLike, n: int = 8, seed: int = 0,
               label_resize: str = "soft", threshold: float = 0.5, background_index: int | None = None,
               batch: int = 2) -> list[Case]:
    from lmae_sdk.degrade import degrade  # noqa: PLC0415
    from lmae_sdk.labels import read_image, read_label  # noqa: PLC0415
    from lmae_sdk.datasets import load_dataset  # noqa: PLC0415

    cfg = model.cfg
    root = Path(data)
    splits = [s for s in ("val", "test", "train") if (root / s).is_dir()] or ["val"]
    info = load_dataset(root, splits=(splits[0],))
    pairs = info.pairs[splits[0]][:n]
    rng = np.random.default_rng(seed)
    items, plans = [], []
    for img_p, lab_p in pairs:
        img = read_image(img_p)
        lab, _ = read_label(lab_p)
        lab = lab.copy()
        lab[(lab >= cfg.num_classes) & (lab != UNKNOWN)] = UNKNOWN
        partial = degrade(lab, float(rng.uniform(0.3, 0.7)), "random", rng, background_index=background_index)
        mi = prepare(img, partial, cfg, label_resize, boundary=_flat_boundary(cfg, partial.shape))
        items.append(mi)
        plans.append(mask_plan(mi, cfg, mask_ratio, threshold=threshold, background_index=background_index,
                               rng=rng))
    return _batch(items, plans, batch)


def _flat_boundary(cfg, shape: tuple[int, int]) -> np.ndarray | None:
    """A no-boundary map for models whose step cost has a boundary term: parity compares
    graphs on the same inputs, whatever the map."""
    return np.zeros((2, *shape), np.float32) if cfg.geodesic_boundary_weight > 0 else None


def verify_boundary(net: torch.nn.Module, spec, path: str | os.PathLike, tolerance: float = 1e-3,
                    seed: int = 0) -> dict[str, Any]:
    """ONNX Runtime against torch on the boundary graph: max |probability difference| over
    two random images."""
    from lmae_sdk.boundaries import boundary_input  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    x = np.stack([boundary_input(rng.integers(0, 256, (*spec.size, 3), dtype=np.uint8), spec) for _ in range(2)])
    diff = float(boundary_differences(net, spec, _ort_session(path, 1), x).max())
    return {"max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance, "verified": True}


def boundary_differences(net: torch.nn.Module, spec, session, x: np.ndarray) -> np.ndarray:
    """|ONNX Runtime's boundary probabilities - torch's| on the net's inputs ``x`` (B, 3, h, w)."""
    from lmae_sdk.boundaries import boundary_probabilities  # noqa: PLC0415

    got = session.run(None, {"image": x})[0]
    with torch.no_grad():
        want = boundary_probabilities(net, torch.from_numpy(x), spec.flip_average).numpy()
    return np.abs(got - want)


def _batch(items: list[ModelInputs], plans: list[MaskPlan], batch: int) -> list[Case]:
    return [Case(items[i: i + batch], plans[i: i + batch]) for i in range(0, len(items), batch)]


def feeds(case: Case, cfg) -> tuple[dict[str, np.ndarray], Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """(encoder feed, latent -> decoder feed) in the contract's names."""
    pool = graph_inputs(case.inputs, case.plans)
    enc = {k: pool[k] for k in encoder_input_names(cfg)}

    def dec(latent: np.ndarray) -> dict[str, np.ndarray]:
        d = {**pool, "latent": latent.astype(np.float32)}
        return {k: d[k] for k in decoder_input_names(cfg)}

    return enc, dec


@torch.no_grad()
def torch_logits(model: LMAE, case: Case) -> np.ndarray:
    f = {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v))
         for k, v in graph_inputs(case.inputs, case.plans).items()}
    lat = model.encode(f["image"], f["label_planes"], f["ids_keep"], f["prior"])
    return model.decode(lat, f["image"], f["ids_mask"], f["ids_restore"], f["label_planes"], f["prior"]).numpy()


def _ort_session(path: str | os.PathLike, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runners(encoder: str | os.PathLike, decoder: str | os.PathLike, threads: int = 1) -> tuple[Runner, Runner]:
    es, ds = _ort_session(encoder, threads), _ort_session(decoder, threads)
    return (lambda f: es.run(["latent"], f)[0]), (lambda f: ds.run(["logits"], f)[0])


def trt_runners(encoder: str | os.PathLike, decoder: str | os.PathLike) -> tuple[Runner, Runner]:
    """The engines on :class:`lmae_sdk.trt_engine.TrtEngine` (the runtime's runner)."""
    from lmae_sdk.trt_engine import TrtEngine  # noqa: PLC0415

    from .tensorrt_build import engine_device_memory, require_tensorrt  # noqa: PLC0415

    trt, memory = require_tensorrt(), engine_device_memory()
    e, d = TrtEngine(encoder, memory, trt), TrtEngine(decoder, memory, trt)
    return (lambda f: e.run(f)["latent"]), (lambda f: d.run(f)["logits"])


def compare(model: LMAE, cases: list[Case], enc: Runner, dec: Runner) -> dict[str, Any]:
    cfg = model.cfg
    max_diff, agree, total, n = 0.0, 0, 0, 0
    for c in cases:
        ref = torch_logits(model, c)
        ef, df = feeds(c, cfg)
        got = dec(df(enc(ef)))
        if got.shape != ref.shape:
            raise AssertionError(f"logits shape {got.shape} != torch {ref.shape}")
        max_diff = max(max_diff, float(np.abs(got.astype(np.float64) - ref).max()))
        eq = got.argmax(1) == ref.argmax(1)
        agree += int(eq.sum())
        total += eq.size
        n += ref.shape[0]
    return {"samples": n, "max_abs_diff": max_diff, "argmax_agreement": agree / max(total, 1)}


def verify_engine(model: LMAE, mask_ratio: float, enc: Runner, dec: Runner, precision: str,
                  data: str | os.PathLike | None = None, n_random: int = 4, n_data: int = 8, seed: int = 0,
                  label_resize: str = "soft", threshold: float = 0.5,
                  background_index: int | None = None) -> dict[str, Any]:
    """The manifest's ``parity`` entry; ``passed`` is False below the precision's threshold."""
    kw = dict(label_resize=label_resize, threshold=threshold, background_index=background_index)
    out: dict[str, Any] = {"reference": "torch fp32", "random": compare(
        model, random_cases(model, mask_ratio, n_random, seed, **kw), enc, dec), "data": None}
    if data is not None:
        out["data"] = compare(model, data_cases(model, mask_ratio, data, n_data, seed, **kw), enc, dec)
        out["data"]["source"] = Path(data).name
    parts = [out["random"]] + ([out["data"]] if out["data"] else [])
    out["max_abs_diff"] = max(p["max_abs_diff"] for p in parts)
    out["argmax_agreement"] = min(p["argmax_agreement"] for p in parts)
    out["min_agreement"] = FP32_MIN_AGREEMENT if precision == "fp32" else FP16_MIN_AGREEMENT
    out["passed"] = out["argmax_agreement"] >= out["min_agreement"]
    return out
