"""The measurements behind ``benchmarks/throughput.py``: one function per figure.

* :func:`matmul_peak_gflops`, :func:`model_flops`: what the machine and the model allow;
* :func:`make_inputs`: image / partial-label files on disk (synthetic or a dataset's val);
* :func:`backend_plan`, :func:`load_completer`: a backend name -> a loaded ``LMAECompleter``;
* :func:`bench_cell`: e2e (``complete_batch`` over files, PNGs written) and engine-only
  figures of one backend at one batch size;
* :func:`stage_profile`: where the e2e time of one batch goes, stage by stage.

The engine-only feed and the stage profile run the steps of :mod:`lmae_sdk.pipeline`
themselves (prepare -> route -> graph inputs -> engine -> finish with the completer's
settings), so they time exactly what the completer runs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._common import PeakRSS, percentiles


# --------------------------------------------------------------------------------------
# measurements that do not depend on the model
# --------------------------------------------------------------------------------------
def matmul_peak_gflops(threads: int, n: int = 2048, reps: int = 8) -> dict[str, float]:
    """Best-of-``reps`` fp32 ``torch.matmul`` (n x n) @ (n x n) on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "threads": threads, "seconds": best, "gflops": 2 * n**3 / best / 1e9}


def model_flops(ckpt_path: Path, mask_ratio: float) -> dict[str, Any]:
    """FLOPs of one image through encode + decode (FlopCounterMode: matmul / conv / bmm)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint
    from lmae_sdk.model import count_parameters

    ck = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ck)
    cfg = model.cfg
    h, w = cfg.img_size
    L, K = cfg.num_patches, cfg.num_visible(mask_ratio)
    perm = torch.randperm(L)[None]
    keep, mask = perm[:, :K].sort(dim=1).values, perm[:, K:].sort(dim=1).values
    restore = torch.argsort(torch.cat([keep, mask], dim=1), dim=1)
    img = torch.randn(1, 3, h, w)
    planes = torch.rand(1, cfg.num_classes, h, w)
    prior = torch.rand(1, cfg.prior_channels, h, w) if cfg.prior else None
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc_enc:
            latent = model.encode(img, planes, keep, prior)
        with FlopCounterMode(display=False) as fc_dec:
            model.decode(latent, img, mask, restore, planes, prior)
    enc, dec = int(fc_enc.get_total_flops()), int(fc_dec.get_total_flops())
    refine = 0
    if cfg.refine_width > 0:  # the full-resolution conv head, for the profile
        with torch.inference_mode(), FlopCounterMode(display=False) as fc_ref:
            x = torch.randn(1, cfg.num_classes * 2 + 3 + cfg.prior_channels, h, w)
            model.refine(x)
        refine = int(fc_ref.get_total_flops())
    boundary = 0
    if ck.get("boundary_net"):  # host-side graph, before propagation; not part of "per_image" (the engine's)
        from lmae_sdk.boundaries import BoundarySpec, boundary_probabilities, net_from_state

        spec = BoundarySpec.from_dict(ck["boundary_net"])
        with torch.inference_mode(), FlopCounterMode(display=False) as fc_b:  # twice with flip averaging
            boundary_probabilities(net_from_state(spec, ck["boundary_net"]["state_dict"]),
                                   torch.zeros(1, 3, *spec.size), spec.flip_average)
        boundary = int(fc_b.get_total_flops())
    return {"per_image": enc + dec, "encoder": enc, "decoder": dec, "refine_head": refine,
            "params": count_parameters(model), "img_size": list(cfg.img_size), "L": L, "K": K,
            "boundary_net": boundary}


# --------------------------------------------------------------------------------------
# inputs on disk
# --------------------------------------------------------------------------------------
def make_inputs(root: Path, n: int, size: tuple[int, int], num_classes: int, hole_ratio: float,
                data: str | None) -> tuple[list[tuple[Path, Path]], dict[str, Any]]:
    """``n`` (image JPEG, partial PNG) pairs: synthetic scenes, or a dataset's val split."""
    import cv2

    from lmae_sdk.degrade import degrade
    from lmae_sdk.labels import read_label, write_label

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[Path, Path]] = []
    if data:
        from lmae_sdk.datasets import load_dataset

        info = load_dataset(data, ("val",))
        src = info.pairs["val"]
        for i in range(n):
            img_p, lab_p = src[i % len(src)]
            lab, _ = read_label(lab_p)
            partial = degrade(lab, hole_ratio, "random", np.random.default_rng([0, i]), patch=32)
            dst = root / "labels" / f"{i:04d}.png"
            write_label(dst, partial)
            pairs.append((Path(img_p), dst))
        meta = {"source": str(data), "split": "val", "num_classes": info.num_classes}
    else:
        from lmae_sdk.synthetic import synth_pair

        rng = np.random.default_rng(0)
        for i in range(n):
            img, lab = synth_pair(rng, size)
            lab = (lab.astype(np.int64) * (num_classes - 1) // 4).astype(np.uint8)  # spread over the class ids
            partial = degrade(lab, hole_ratio, "random", np.random.default_rng([0, i]), patch=32)
            ip, lp = root / "images" / f"{i:04d}.jpg", root / "labels" / f"{i:04d}.png"
            cv2.imwrite(str(ip), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            write_label(lp, partial)
            pairs.append((ip, lp))
        meta = {"source": "synthetic", "size_hw": list(size), "num_classes": num_classes}
    meta.update({"images": n, "hole_ratio": hole_ratio, "degrade": "random, patch 32"})
    return pairs, meta


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------
def backend_plan(name: str) -> tuple[dict[str, Any] | None, str | None]:
    """(LMAECompleter.load kwargs, None) or (None, why it is skipped here)."""
    from lmae_sdk.runtime.backends import ort_available, ort_cuda_available, trt_available

    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:
        cuda = False
    if name == "torch":
        return {"source": "pt", "backend": "torch", "device": "cpu"}, None
    if name == "torch-cuda":
        return ({"source": "pt", "backend": "torch", "device": "cuda"}, None) if cuda else (None, "torch sees no CUDA GPU")
    if name == "ort-cpu":
        return ({"source": "bundle", "backend": "onnxruntime", "device": "cpu", "precision": "fp32"}, None) \
            if ort_available() else (None, "onnxruntime is not installed")
    if name in ("ort-cuda", "ort-cuda-fp16"):
        if not ort_cuda_available():
            return None, "onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu and a GPU)"
        if not cuda:
            return None, "no CUDA GPU visible"
        return {"source": "bundle", "backend": "onnxruntime", "device": "cuda",
                "precision": "fp16" if name.endswith("fp16") else "fp32"}, None
    if name in ("trt-fp32", "trt-fp16"):
        if not trt_available():
            return None, "TensorRT is not installed or no CUDA GPU is visible"
        return {"source": "bundle", "backend": "tensorrt", "precision": name.split("-")[1]}, None
    return None, f"unknown backend {name!r}"


def load_completer(plan: dict[str, Any], pt: Path, bundle: Path | None, threads: int):
    from lmae_sdk.runtime import LMAECompleter

    if plan["source"] == "pt":
        return LMAECompleter.load(pt, backend="torch", device=plan["device"], threads=threads)
    kw = {k: plan[k] for k in ("device", "precision") if k in plan}
    return LMAECompleter.load(bundle, backend=plan["backend"], threads=threads, **kw)


def without_fusion(completer) -> None:
    """Make ``completer`` finish by the argmax (its pixel fusion set aside): ``--compare-fusion``."""
    completer.settings = dataclasses.replace(completer.settings, fusion=None)


def engine_feed(completer, pairs: list[tuple[Path, Path]], mask_ratio: float) -> dict[str, np.ndarray]:
    """The graph inputs of ``pairs`` (stacked) on the ``mask_ratio`` engine: the pipeline's
    prepare -> mask plan (Background-First, as routing plans it) -> graph inputs."""
    from lmae_sdk.labels import read_image, read_label
    from lmae_sdk.pipeline import graph_inputs, prepare
    from lmae_sdk.routing import mask_plan

    cfg, st = completer.cfg, completer.settings
    inputs, plans = [], []
    for ip, lp in pairs:
        img = read_image(ip)
        inp = prepare(img, read_label(lp)[0], cfg, st.label_resize, st.unknown_index,
                      boundary=completer.boundary_map(img))
        inputs.append(inp)
        plans.append(mask_plan(inp, cfg, mask_ratio, "background_first", st.unknown_threshold, st.background_index))
    return graph_inputs(inputs, plans, stacked=True)


def run_e2e(completer, pairs, out_dir: Path, batch_size: int, workers: int, lanes: int = 1,
            confidence: bool = False) -> tuple[float, dict]:
    """Seconds to complete ``pairs`` and write them as ``lmae complete`` does: the labels, and
    with ``confidence`` the confidence PNGs too (``--confidence-dir``)."""
    from collections import Counter

    from lmae_sdk.labels import atomic_write_bytes, confidence_png, write_label

    used: Counter = Counter()
    passes = 0

    def save(r) -> None:  # on the completer's workers, as `lmae complete` writes
        if confidence:
            atomic_write_bytes(out_dir / f"conf_{Path(r.name).name}", confidence_png(r.confidence))
        write_label(out_dir / Path(r.name).name, r.label, r.palette)

    t0 = time.perf_counter()
    for r in completer.complete_batch(pairs, batch_size=batch_size, workers=workers, on_result=save, lanes=lanes,
                                      confidence=confidence):
        used.update({f"{m:g}": n for m, n in r.engines.items()})
        passes = max(passes, r.passes)
    return time.perf_counter() - t0, {"engine_runs": dict(used), "max_passes": passes}


def stage_profile(completer, pairs, out_dir: Path, mask_ratio: float, confidence: bool = False) -> dict[str, float]:
    """Serial per-image seconds of each e2e stage over ``pairs`` (one batch): where time goes.

    The pipeline's steps as the completer runs them, each timed: decode, the boundary map
    (models with a boundary net), prepare (one propagation serves the prior and pixel
    fusion), route (restricted to the ``mask_ratio`` engine), the engine on the stacked
    graph inputs, finish with ``completer.settings``, write."""
    from lmae_sdk.labels import atomic_write_bytes, confidence_png, read_image, read_label, write_label
    from lmae_sdk.pipeline import finish, graph_inputs, prepare, propagate_for
    from lmae_sdk.routing import route_image

    cfg, st = completer.cfg, completer.settings
    fused = st.fusion is not None
    eng = completer.engines[round(mask_ratio, 6)].backend
    t: dict[str, float] = {k: 0.0 for k in ("decode", "boundaries", "prepare", "route", "engine", "finish", "write")}
    labs, inputs, plans, props = [], [], [], []
    for ip, lp in pairs:
        t0 = time.perf_counter()
        img, lab = read_image(ip), read_label(lp)[0]
        tb = time.perf_counter()
        bmap = completer.boundary_map(img)  # None unless something reads the boundary net's map
        t1 = time.perf_counter()
        t["decode"] += tb - t0
        t["boundaries"] += t1 - tb
        prop = propagate_for(cfg, lab, img, st.unknown_index, fused, bmap) if cfg.prior or fused else None
        inp = prepare(img, lab, cfg, st.label_resize, st.unknown_index, prop, bmap)
        t2 = time.perf_counter()
        plan = route_image(inp, cfg, (mask_ratio,), st.unknown_threshold, st.background_index, force_final=True).plan
        t3 = time.perf_counter()
        t["prepare"] += t2 - t1
        t["route"] += t3 - t2
        labs.append(lab), props.append(prop), inputs.append(inp), plans.append(plan)
    feed = graph_inputs(inputs, plans, stacked=True)
    t0 = time.perf_counter()
    logits = eng.run(feed)
    t["engine"] += time.perf_counter() - t0
    for i, lab in enumerate(labs):
        t0 = time.perf_counter()
        out, conf = finish(logits[i], lab, st, props[i], confidence=confidence, scorer=completer.fusion_scorer)
        t1 = time.perf_counter()
        if confidence:
            atomic_write_bytes(out_dir / f"profile_conf_{i:04d}.png", confidence_png(conf))
        write_label(out_dir / f"profile_{i:04d}.png", out)
        t["write"] += time.perf_counter() - t1
        t["finish"] += t1 - t0
    n = max(len(pairs), 1)
    per = {k: v / n for k, v in t.items()}
    total = sum(per.values())
    return {"seconds_per_image": per, "share": {k: v / total for k, v in per.items()}, "batch": len(pairs)}


def concurrent_engine_ips(eng, feed: dict[str, np.ndarray], reps: int, lanes: int) -> float:
    """Images/s of ``lanes`` threads calling the engine side by side (as complete_batch's lanes)."""
    from concurrent.futures import ThreadPoolExecutor

    bs = len(feed["ids_keep"])
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(lambda _: eng.run(feed), range(lanes)))  # warm-up on every lane
        t0 = time.perf_counter()
        list(pool.map(lambda _: [eng.run(feed) for _ in range(reps)], range(lanes)))
        return lanes * reps * bs / (time.perf_counter() - t0)


def bench_cell(completer, pairs, work: Path, bs: int, n_stream: int, reps: int, lat_reps: int, workers: int,
               mask_ratio: float, lanes: int = 1, full_engine=None,
               set_lane_threads: Callable[[bool], None] | None = None, confidence: bool = False) -> dict[str, Any]:
    """e2e and engine-only figures of one backend at batch ``bs``.

    ``lanes > 1``: the completer's engines run on ``threads / lanes`` threads and e2e runs
    ``lanes`` batches side by side; engine-only is then the better of ``lanes`` concurrent
    calls and one call of ``full_engine`` (the same engine on every thread), so e2e / engine
    compares e2e with the best the engine does alone.  ``set_lane_threads(True / False)``
    switches torch's process-wide thread count between the two."""
    out_dir = work / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    eng = completer.engines[round(mask_ratio, 6)].backend
    lane_mode = set_lane_threads or (lambda on: None)
    extra: dict[str, Any] = {}
    with PeakRSS() as mem:
        # engine-only on ready arrays; one call on all threads
        feed = engine_feed(completer, pairs[:bs], mask_ratio)
        single = full_engine.engines[round(mask_ratio, 6)].backend if full_engine is not None else eng
        lane_mode(False)
        single.run(feed)  # warm-up (allocator, ORT arenas, lazy init)
        lat = []
        for _ in range(reps):
            t0 = time.perf_counter()
            single.run(feed)
            lat.append(time.perf_counter() - t0)
        lane_mode(True)
        eng_p = percentiles(lat)
        engine_ips = bs / eng_p["p50"]
        if lanes > 1:
            # three rounds, as many images in all as the e2e stream; the median round counts:
            # this machine's speed drifts (one round of 5 batches per lane swung by +-10% here)
            lane_reps = max(reps, -(-n_stream // (3 * lanes * bs)))
            rounds = [concurrent_engine_ips(eng, feed, lane_reps, lanes) for _ in range(3)]
            lanes_ips = float(np.median(rounds))
            extra = {"engine_ips_one_call": engine_ips, "engine_ips_lanes": lanes_ips,
                     "engine_ips_lanes_rounds": rounds, "engine_lanes_images": 3 * lane_reps * lanes * bs}
            engine_ips = max(engine_ips, lanes_ips)
        # e2e: warm-up batch, then the stream, then isolated batches for latency
        run_e2e(completer, pairs[:bs], out_dir, bs, workers, lanes, confidence)
        stream = pairs[:n_stream]
        total, used = run_e2e(completer, stream, out_dir, bs, workers, lanes, confidence)
        e2e_lat = []
        for r in range(lat_reps):
            s = (r * bs) % max(len(pairs) - bs + 1, 1)
            dt, _ = run_e2e(completer, pairs[s: s + bs], out_dir, bs, workers, lanes, confidence)
            e2e_lat.append(dt)
    e2e_p = percentiles(e2e_lat)
    return {
        "batch_size": bs,
        "engine_ips": engine_ips,
        "engine_latency_ms_p50": 1e3 * eng_p["p50"], "engine_latency_ms_p95": 1e3 * eng_p["p95"],
        "e2e_ips": len(stream) / total, "e2e_images": len(stream), "e2e_seconds": total,
        "e2e_latency_ms_p50": 1e3 * e2e_p["p50"], "e2e_latency_ms_p95": 1e3 * e2e_p["p95"],
        "e2e_isolated_ips": bs / e2e_p["p50"],
        "peak_rss_mb": mem.peak, "rss_before_mb": mem.start,
        "routing": used, "engine_reps": reps, "e2e_latency_reps": lat_reps, "lanes": lanes, **extra,
    }
