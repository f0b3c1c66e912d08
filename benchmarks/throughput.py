"""Throughput: images/s and latency of L-MAE completion, end-to-end and engine-only.

    python benchmarks/throughput.py --presets tiny,small --batch-sizes 1,4,16,32 --threads 2
    python benchmarks/throughput.py --smoke          # seconds, CI

For every (preset, backend, batch size), side by side:

* **end-to-end** (e2e): ``LMAECompleter.complete_batch`` over image / partial-label files on
  disk (decode, prepare, route, engine, finish) plus writing the completed PNGs to a temp
  folder, as ``lmae complete`` does: labels only, and with ``--confidence`` the confidence
  maps too.  Throughput from one streaming run over ``--images`` files; latency p50 / p95
  from isolated calls of exactly one batch (files in -> PNGs out).
* **engine-only**: the backend's encoder + decoder call on ready, stacked arrays (the same
  engine, the same K).

``--lanes N``: e2e completes N batches side by side (``complete_batch(lanes=N)``, engines on
threads / N threads each); engine-only is then the better of one call on all threads and N
one-lane calls side by side (the median of three rounds over as many images as the e2e
stream), so e2e / engine compares with the best the engine does alone.

Plus peak RSS while each cell ran, model FLOPs per image (``FlopCounterMode`` on
encode + decode: matmuls / convs only), this machine's fp32 matmul peak on the same thread
count, and the share of it the engine reaches (roofline share).  Backends: torch eager, ONNX
Runtime CPU, and where present ORT CUDA (fp32 / fp16), torch CUDA, TensorRT fp32 / fp16;
an absent one is listed with the reason it was skipped.  Weights are random (speed does not
depend on them).  Inputs are synthetic CamVid-sized scenes (JPEG + partial PNG) unless
``--data`` names a dataset (its val split is used).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (PeakRSS, machine_info, max_rss_mb, new_figure, out_paths, percentiles,  # noqa: E402
                                plot_available, random_checkpoint, save_figure, set_threads, table, write_json)

ALL_BACKENDS = ("torch", "ort-cpu", "torch-cuda", "ort-cuda", "ort-cuda-fp16", "trt-fp32", "trt-fp16")
TARGETS = {
    "ort_vs_torch_e2e": 1.5,  # ORT CPU e2e / torch e2e at batch 16 (small)
    "e2e_vs_engine": 0.8,  # e2e / engine-only
    "engine_vs_roofline": 0.4,  # engine-only GFLOP/s / matmul peak
}


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
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from lmae_sdk.training.datasets import load_dataset

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
    from lmae_sdk.runtime.completer import LMAECompleter

    if plan["source"] == "pt":
        return LMAECompleter.load(pt, backend="torch", device=plan["device"], threads=threads)
    kw = {k: plan[k] for k in ("device", "precision") if k in plan}
    return LMAECompleter.load(bundle, backend=plan["backend"], threads=threads, **kw)


def engine_feed(completer, pairs: list[tuple[Path, Path]], mask_ratio: float) -> dict[str, np.ndarray]:
    """Stacked model inputs + mask plan for ``pairs`` on the ``mask_ratio`` engine."""
    from lmae_sdk.labels import read_image, read_label
    from lmae_sdk.masking import MaskPlan
    from lmae_sdk.preprocess import ModelInputs, prepare, route

    cfg = completer.cfg
    inputs, plans = [], []
    for ip, lp in pairs:
        img = read_image(ip)
        inp = prepare(img, read_label(lp)[0], cfg, completer.label_resize, boundary=completer.boundary_map(img))
        inputs.append(inp)
        plans.append(route(inp, cfg, mask_ratio, "background_first", completer.unknown_threshold,
                           completer.background_index))
    inp, plan = ModelInputs.stack(inputs), MaskPlan.stack(plans)
    return {"image": inp.image, "label_planes": inp.label_planes, "prior": inp.prior, "ids_keep": plan.ids_keep,
            "ids_mask": plan.ids_mask, "ids_restore": plan.ids_restore}


def run_e2e(completer, pairs, out_dir: Path, batch_size: int, workers: int, lanes: int = 1,
            confidence: bool = False) -> tuple[float, dict]:
    """Seconds to complete ``pairs`` and write them as ``lmae complete`` does: the labels, and
    with ``confidence`` the confidence PNGs too (``--confidence-dir``)."""
    from collections import Counter

    from lmae_sdk.labels import confidence_png as _confidence_png
    from lmae_sdk.labels import atomic_write_bytes, write_label

    used: Counter = Counter()
    passes = 0

    def save(r) -> None:  # on the completer's workers, as `lmae complete` writes
        if confidence:
            atomic_write_bytes(out_dir / f"conf_{Path(r.name).name}", _confidence_png(r.confidence))
        write_label(out_dir / Path(r.name).name, r.label, r.palette)

    t0 = time.perf_counter()
    for r in completer.complete_batch(pairs, batch_size=batch_size, workers=workers, on_result=save, lanes=lanes,
                                      confidence=confidence):
        used.update({f"{m:g}": n for m, n in r.engines.items()})
        passes = max(passes, r.passes)
    return time.perf_counter() - t0, {"engine_runs": dict(used), "max_passes": passes}


def stage_profile(completer, pairs, out_dir: Path, mask_ratio: float, confidence: bool = False) -> dict[str, float]:
    """Serial per-image seconds of each e2e stage over ``pairs`` (one batch): where time goes."""
    from lmae_sdk.labels import confidence_png as _confidence_png
    from lmae_sdk.labels import atomic_write_bytes, read_image, read_label, write_label
    from lmae_sdk.masking import MaskPlan
    from lmae_sdk.preprocess import ModelInputs, finish, prepare, propagate_for, route

    cfg = completer.cfg
    fusion = completer.fusion
    eng = completer.engines[round(mask_ratio, 6)].backend
    t: dict[str, float] = {k: 0.0 for k in ("decode", "boundaries", "prepare", "route", "engine", "finish", "write")}
    imgs, labs, inputs, plans, props = [], [], [], [], []
    for ip, lp in pairs:
        t0 = time.perf_counter()
        img, lab = read_image(ip), read_label(lp)[0]
        tb = time.perf_counter()
        bmap = completer.boundary_map(img)  # None unless the model has a boundary net
        t1 = time.perf_counter()
        t["decode"] += tb - t0
        t["boundaries"] += t1 - tb
        # as the completer: one propagation serves the prior and the finish (near-copy / fusion)
        prop = propagate_for(cfg, lab, img, class_costs=fusion is not None, boundary=bmap)
        props.append(prop)
        inp = prepare(img, lab, cfg, completer.label_resize, propagated=prop)
        t2 = time.perf_counter()
        plan = route(inp, cfg, mask_ratio, "background_first", completer.unknown_threshold, completer.background_index)
        t3 = time.perf_counter()
        t["prepare"] += t2 - t1
        t["route"] += t3 - t2
        imgs.append(img), labs.append(lab), inputs.append(inp), plans.append(plan)
    inp, plan = ModelInputs.stack(inputs), MaskPlan.stack(plans)
    feed = {"image": inp.image, "label_planes": inp.label_planes, "prior": inp.prior, "ids_keep": plan.ids_keep,
            "ids_mask": plan.ids_mask, "ids_restore": plan.ids_restore}
    t0 = time.perf_counter()
    logits = eng.run(feed)
    t["engine"] += time.perf_counter() - t0
    for i, lab in enumerate(labs):
        t0 = time.perf_counter()
        out, conf = finish(logits[i], lab, near_copy_px=completer.near_copy_px, propagated=props[i],
                           near_copy_min_prob=completer.near_copy_min_prob, fusion=fusion, confidence=confidence)
        t1 = time.perf_counter()
        if confidence:
            atomic_write_bytes(out_dir / f"profile_conf_{i:04d}.png", _confidence_png(conf))
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


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--batch-sizes", default="1,4,16,32")
    ap.add_argument("--backends", default=",".join(ALL_BACKENDS),
                    help=f"subset of {','.join(ALL_BACKENDS)}; absent ones are skipped with a reason")
    ap.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads and prep workers")
    ap.add_argument("--prep-workers", type=int, default=0,
                    help="threads that decode / prepare / finish / write (0 = --threads); on a small CPU, "
                         "engine threads + prep workers = cores keeps the engine fed")
    ap.add_argument("--confidence", action="store_true",
                    help="e2e also computes and writes the confidence maps (lmae complete --confidence-dir); "
                         "default: labels only, as lmae complete writes by default")
    ap.add_argument("--lanes", type=int, default=1,
                    help="batches completed side by side (complete_batch lanes), each engine on threads / lanes "
                         "threads; engine-only is then the better of lanes concurrent calls and one call on all "
                         "threads")
    ap.add_argument("--lane-threads", type=int, default=0,
                    help="engine threads per lane (0 = threads / lanes; more oversubscribes the cores: on 2 "
                         "cores 2 lanes x 2 threads ran at 0.85x of 2 x 1, RESULTS section 1)")
    ap.add_argument("--images", type=int, default=32, help="images in the e2e stream (at least 2 batches)")
    ap.add_argument("--reps", type=int, default=5, help="timed engine-only calls per batch size")
    ap.add_argument("--latency-reps", type=int, default=3, help="isolated e2e batches per batch size")
    ap.add_argument("--input-size", default="360x480", help="HxW of the synthetic input scenes")
    ap.add_argument("--model-size", default=None, help="HxW model input (default: the preset's 224x288)")
    ap.add_argument("--num-classes", type=int, default=11)
    ap.add_argument("--prior-mode", default=None, choices=["euclidean", "geodesic"],
                    help="host-side propagation for the prior planes (default: the preset's)")
    ap.add_argument("--checkpoint", default=None, metavar="CKPT",
                    help="time this trained checkpoint (one --presets name labels it) instead of random weights: "
                         "e2e then includes its own finish rule (near-copy or pixel fusion) on real predictions")
    ap.add_argument("--compare-fusion", action="store_true",
                    help="with a --checkpoint that has pixel fusion: also time it without (rows '<backend>-nofusion')")
    ap.add_argument("--mask-ratio", type=float, default=0.5, help="the engine measured engine-only")
    ap.add_argument("--engines", default="0.5,0.75", help="mask ratios of the checkpoint / bundle engines")
    ap.add_argument("--hole-ratio", type=float, default=0.35, help="unknown share of the partial labels")
    ap.add_argument("--data", default=None, help="dataset root: use its val split instead of synthetic scenes")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--legacy-export", action="store_true",
                    help="TorchScript ONNX exporter (fast to export) instead of the default dynamo exporter")
    ap.add_argument("--workdir", default=None, help="keep inputs / checkpoints / bundles here (default: temp)")
    ap.add_argument("--out", default=None, help="JSON path (PNG next to it); default benchmarks/results/")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, tiny sizes, batch 1,2: seconds")
    a = ap.parse_args(argv)
    if a.smoke:
        a.presets, a.batch_sizes, a.images, a.reps, a.latency_reps = "tiny", "1,2", 4, 2, 1
        a.input_size, a.model_size, a.num_classes, a.matmul_n = "96x128", "64x96", 5, 256
        a.backends = ",".join(b for b in a.backends.split(",") if b in ("torch", "ort-cpu"))
        a.threads = min(a.threads, 1)
        a.engines, a.legacy_export = "0.5", True
    return a


def _hw(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    h, w = s.lower().split("x")
    return int(h), int(w)


def _target_rows(results: list[dict], presets: list[str], batch_sizes: list[int]) -> dict[str, Any]:
    preset = "small" if "small" in presets else presets[-1]
    bs = 16 if 16 in batch_sizes else max(batch_sizes)
    note = "" if (preset == "small" and bs == 16) else f" (measured at preset {preset}, batch {bs}: the target is small @ 16)"
    cell = {r["backend"]: r for r in results if r["preset"] == preset and r["batch_size"] == bs}
    out: dict[str, Any] = {"preset": preset, "batch_size": bs, "note": note.strip() or None, "checks": []}

    def check(name, value, target, what):
        ok = None if value is None else bool(value >= target)
        out["checks"].append({"name": name, "what": what, "value": value, "target": target,
                              "status": "n/a" if ok is None else ("PASS" if ok else "FAIL")})

    ort, tor = cell.get("ort-cpu"), cell.get("torch")
    check("ort_vs_torch_e2e", ort["e2e_ips"] / tor["e2e_ips"] if ort and tor else None, TARGETS["ort_vs_torch_e2e"],
          "ORT CPU e2e / torch e2e")
    main = ort or tor
    check("e2e_vs_engine", main["e2e_ips"] / main["engine_ips"] if main else None, TARGETS["e2e_vs_engine"],
          f"e2e / engine-only ({main['backend'] if main else '-'})")
    check("engine_vs_roofline", main["roofline_share"] if main else None, TARGETS["engine_vs_roofline"],
          f"engine-only GFLOP/s / fp32 matmul peak ({main['backend'] if main else '-'})")
    return out


def main(argv=None) -> dict[str, Any]:
    a = parse_args(argv)
    set_threads(a.threads)
    presets = [p for p in a.presets.split(",") if p]
    batch_sizes = sorted({int(b) for b in a.batch_sizes.split(",") if b})
    backends = [b for b in a.backends.split(",") if b]
    engines = sorted({float(m) for m in a.engines.split(",") if m} | {a.mask_ratio})
    json_path, png_path = out_paths(a.out, "throughput", a.smoke)

    tmp = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="lmae-throughput-"))
    tmp.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"benchmark": "throughput", "smoke": a.smoke, "args": vars(a),
                               "machine": machine_info(a.threads)}
    try:
        t0 = time.perf_counter()
        peak = matmul_peak_gflops(a.threads, a.matmul_n)
        peak["gflops_first"] = peak["gflops"]
        print(f"fp32 matmul peak ({a.matmul_n}^3, {a.threads} thread(s)): {peak['gflops']:.1f} GFLOP/s", flush=True)
        n_files = max(a.images, 4 * max(batch_sizes), max(batch_sizes) * max(a.latency_reps, 1))
        pairs, inputs_meta = make_inputs(tmp / "inputs", n_files, _hw(a.input_size), a.num_classes, a.hole_ratio,
                                         a.data)
        num_classes = inputs_meta["num_classes"]
        payload.update({"matmul_peak": peak, "inputs": inputs_meta, "targets": TARGETS})

        skipped: dict[str, str] = {}
        plans: dict[str, dict] = {}
        for b in backends:
            plan, why = backend_plan(b)
            if plan is None:
                skipped[b] = why
                print(f"skip {b}: {why}", flush=True)
            else:
                plans[b] = plan
        payload["skipped_backends"] = skipped

        if a.checkpoint and len(presets) != 1:
            raise SystemExit("--checkpoint times one model: give one --presets name to label it")
        results, flops, exports, profiles = [], {}, {}, {}
        for preset in presets:
            kw = {"img_size": _hw(a.model_size)} if a.model_size else {}
            from lmae_sdk.model import make_config

            prior = {"prior_mode": a.prior_mode} if a.prior_mode else {}
            cfg = make_config(preset, num_classes, **prior)
            size, prior_mode = kw.get("img_size") or cfg.img_size, cfg.prior_mode
            if a.checkpoint:
                from lmae_sdk.checkpoint import load_checkpoint
                from lmae_sdk.model import LMAEConfig

                ck = load_checkpoint(a.checkpoint)
                cfg = LMAEConfig.from_dict(ck["config"])
                size, prior_mode, pt = cfg.img_size, cfg.prior_mode, Path(a.checkpoint)
                payload["checkpoint"] = {"path": str(pt), "pixel_fusion": bool(ck.get("fusion")),
                                         "near_copy_px": ck.get("near_copy_px", 0.0)}
            else:
                pt = random_checkpoint(tmp / f"{preset}.pt", preset, num_classes, size, engines, **prior)
            flops[preset] = model_flops(pt, a.mask_ratio)
            flops[preset]["prior_mode"] = prior_mode
            print(f"\n== preset {preset}: {flops[preset]['params'] / 1e6:.2f}M params, model {size[0]}x{size[1]}, "
                  f"prior {prior_mode}, "
                  f"{flops[preset]['per_image'] / 1e9:.2f} GFLOP/image at m={a.mask_ratio} "
                  f"(refine head {flops[preset]['refine_head'] / 1e9:.2f})", flush=True)
            bundle = None
            if any(p["source"] == "bundle" for p in plans.values()):
                from lmae_sdk.export.api import export_bundle

                gpu = any(b in plans for b in ("ort-cuda-fp16", "trt-fp16"))
                trt = any(b.startswith("trt") for b in plans)
                te = time.perf_counter()
                bundle = tmp / f"{preset}_bundle"
                export_bundle(pt, bundle, mask_ratios=engines, fp16=gpu, trt=trt, verify=False, lint=False,
                              max_batch=max(batch_sizes), legacy=a.legacy_export)
                exports[preset] = {"seconds": time.perf_counter() - te, "fp16": gpu, "tensorrt": trt,
                                   "exporter": "legacy" if a.legacy_export else "dynamo"}
            lanes = max(1, a.lanes)
            lane_threads = a.lane_threads or max(1, a.threads // lanes)
            for b0, plan in plans.items():
                try:
                    full = load_completer(plan, pt, bundle, a.threads) if lanes > 1 else None
                    completer = load_completer(plan, pt, bundle, lane_threads)
                except Exception as e:  # e.g. a GPU wheel that cannot load CUDA
                    skipped[f"{b0}@{preset}"] = f"{type(e).__name__}: {e}"
                    print(f"skip {b0} ({preset}): {e}", flush=True)
                    continue

                def lane_mode(on: bool, torch_backend=plan["source"] == "pt") -> None:
                    if torch_backend and lanes > 1:  # torch's thread count is process-wide
                        set_threads(lane_threads if on else a.threads)
                fusion = completer.fusion
                # --compare-fusion: the same engines again without pixel fusion, side by side
                runs = [(b0, fusion)] + ([(f"{b0}-nofusion", None)] if a.compare_fusion and fusion else [])
                pbs = min(16, max(batch_sizes))
                for b, fusion_used in runs:
                    completer.fusion = fusion_used
                    if full is not None:
                        full.fusion = fusion_used
                    for bs in batch_sizes:
                        n_stream = max(a.images, 4 * bs)  # >= 2 chunks of 2 * bs: prep overlaps inference
                        cell = bench_cell(completer, pairs, tmp / "run", bs, n_stream, a.reps, a.latency_reps,
                                          a.prep_workers or max(1, a.threads), a.mask_ratio, lanes, full, lane_mode,
                                          a.confidence)
                        gfl = flops[preset]["per_image"] * cell["engine_ips"] / 1e9
                        cell.update({"preset": preset, "backend": b, "providers": completer.providers,
                                     "engine_gflops": gfl, "roofline_share": gfl / peak["gflops"],
                                     "e2e_vs_engine": cell["e2e_ips"] / cell["engine_ips"]})
                        results.append(cell)
                        print(f"  {b:>13} bs={bs:<3} e2e {cell['e2e_ips']:7.2f} img/s  engine "
                              f"{cell['engine_ips']:7.2f} img/s  ({cell['e2e_vs_engine']:.2f})  roofline "
                              f"{100 * cell['roofline_share']:.0f}%  rss {cell['peak_rss_mb']:.0f} MB", flush=True)
                    lane_mode(False)  # the profile's engine call on all threads, as engine-only
                    profiles[f"{preset}/{b}"] = stage_profile(full or completer, pairs[:pbs], tmp / "run",
                                                              a.mask_ratio, a.confidence)
                del completer, full
        # the peak again at the end (a busy machine can spoil one measurement): keep the best
        peak_end = matmul_peak_gflops(a.threads, a.matmul_n)
        if peak_end["gflops"] > peak["gflops"]:
            peak.update(peak_end)
        peak["gflops_start_end"] = [payload["matmul_peak"].get("gflops_first", peak["gflops"]), peak_end["gflops"]]
        for cell in results:
            cell["roofline_share"] = cell["engine_gflops"] / peak["gflops"]
        payload.update({"flops": flops, "exports": exports, "results": results, "stage_profile": profiles,
                        "process_max_rss_mb": max_rss_mb(), "seconds": time.perf_counter() - t0})
        payload["target_checks"] = _target_rows(results, presets, batch_sizes) if results else None
    finally:
        if not a.workdir:
            shutil.rmtree(tmp, ignore_errors=True)

    _print_report(payload)
    write_json(json_path, payload)
    print(f"\nwrote {json_path}")
    if not a.no_plot and plot_available() and payload["results"]:
        _plot(payload, png_path)
        print(f"wrote {png_path}")
    return payload


def _print_report(p: dict[str, Any]) -> None:
    m = p["machine"]
    print(f"\nmachine: {m['cpu_model']}, {m['cpu_affinity']} cores, threads={m['threads']}, load {m['load_average_1_5_15']}, "
          f"gpu={m['gpu']}; torch {m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}; {m['date']}")
    cols = [("preset", "preset"), ("backend", "backend"), ("batch_size", "bs"), ("e2e_ips", "e2e img/s"),
            ("e2e_latency_ms_p50", "e2e p50 ms"), ("e2e_latency_ms_p95", "e2e p95 ms"),
            ("engine_ips", "engine img/s"), ("engine_latency_ms_p50", "eng p50 ms"),
            ("engine_latency_ms_p95", "eng p95 ms"), ("e2e_vs_engine", "e2e/eng"), ("engine_gflops", "GFLOP/s"),
            ("roofline_share", "roofline"), ("peak_rss_mb", "peak RSS MB")]
    print(table(p["results"], cols))
    for preset, f in p["flops"].items():
        print(f"{preset}: {f['per_image'] / 1e9:.2f} GFLOP/image (encoder {f['encoder'] / 1e9:.2f}, decoder "
              f"{f['decoder'] / 1e9:.2f}, of which refine head {f['refine_head'] / 1e9:.2f}), "
              f"{f['params'] / 1e6:.2f}M params, prior {f.get('prior_mode', 'euclidean')}"
              + (f"; boundary net {f['boundary_net'] / 1e9:.2f} GFLOP/image" if f.get("boundary_net") else ""))
    print(f"matmul peak: {p['matmul_peak']['gflops']:.1f} GFLOP/s")
    for b, why in p["skipped_backends"].items():
        print(f"skipped {b}: {why}")
    for k, prof in p["stage_profile"].items():
        s = prof["seconds_per_image"]
        print(f"profile {k} (batch {prof['batch']}, serial, ms/image): " +
              ", ".join(f"{st} {1e3 * v:.1f} ({100 * prof['share'][st]:.0f}%)" for st, v in s.items()))
    tc = p.get("target_checks")
    if tc:
        print("\ntargets" + (f" {tc['note']}" if tc["note"] else "") + ":")
        for c in tc["checks"]:
            v = "-" if c["value"] is None else f"{c['value']:.2f}"
            print(f"  {c['what']}: {v} (target >= {c['target']}) {c['status']}")


def _plot(p: dict[str, Any], path: Path) -> None:
    presets = list(p["flops"])
    fig, axes = new_figure(len(presets), 5.5, 4.0)
    for ax, preset in zip(axes, presets):
        rows = [r for r in p["results"] if r["preset"] == preset]
        for i, b in enumerate(dict.fromkeys(r["backend"] for r in rows)):
            rb = [r for r in rows if r["backend"] == b]
            x = [r["batch_size"] for r in rb]
            color = f"C{i}"
            ax.plot(x, [r["e2e_ips"] for r in rb], "o-", color=color, label=f"{b} e2e")
            ax.plot(x, [r["engine_ips"] for r in rb], "s--", color=color, label=f"{b} engine")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{preset} ({p['flops'][preset]['per_image'] / 1e9:.1f} GFLOP/img)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    m = p["machine"]
    fig.suptitle(f"L-MAE throughput, {m['cpu_model']}, {m['threads']} thread(s)", fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
