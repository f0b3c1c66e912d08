"""Throughput: images/s and latency of L-MAE completion, end-to-end and engine-only.

    python benchmarks/throughput.py --presets tiny,small --batch-sizes 1,4,16,32 --threads 2
    python benchmarks/throughput.py --smoke          # seconds, CI

For every (preset, backend, batch size), side by side:

* **end-to-end** (e2e): ``LMAECompleter.complete_batch`` over image / partial-label files on
  disk (decode, prepare, route, engine, finish) plus writing the completed PNGs to a temp
  folder, as ``lmae complete`` does: labels only, and with ``--confidence`` the confidence
  maps too, with ``lmae complete``'s malloc setting (``lmae_sdk.runtime.keep_freed_memory()``,
  applied to this process).  Throughput from one streaming run over ``--images`` files;
  latency p50 / p95 from isolated calls of exactly one batch (files in -> PNGs out).
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

This file is the command line, the run over presets / backends / batch sizes and the
report; the measurements are in ``benchmarks/throughput_cells.py``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (machine_info, max_rss_mb, new_figure, out_paths, plot_available,  # noqa: E402
                                random_checkpoint, save_figure, set_threads, table, write_json)
from benchmarks.throughput_cells import (backend_plan, bench_cell, load_completer, make_inputs,  # noqa: E402
                                         matmul_peak_gflops, model_flops, stage_profile, without_fusion)

ALL_BACKENDS = ("torch", "ort-cpu", "torch-cuda", "ort-cuda", "ort-cuda-fp16", "trt-fp32", "trt-fp16")
TARGETS = {
    "ort_vs_torch_e2e": 1.5,  # ORT CPU e2e / torch e2e at batch 16 (small)
    "e2e_vs_engine": 0.8,  # e2e / engine-only
    "engine_vs_roofline": 0.4,  # engine-only GFLOP/s / matmul peak
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
                    help="images completed side by side (complete_batch lanes), each engine on threads / lanes "
                         "threads; engine-only is then the better of lanes concurrent calls and one call on all "
                         "threads")
    ap.add_argument("--lane-threads", type=int, default=0,
                    help="engine threads per lane (0 = threads / lanes; more oversubscribes the cores: on 2 "
                         "cores 2 lanes x 2 threads ran at 0.85x of 2 x 1, benchmarks/RESULTS.md)")
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
                         "e2e then includes its own finishing rule (pixel fusion when it has one, else the argmax) on real "
                         "predictions")
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
    from lmae_sdk.runtime import keep_freed_memory

    malloc_kept = keep_freed_memory()  # as `lmae complete` does for its process
    presets = [p for p in a.presets.split(",") if p]
    batch_sizes = sorted({int(b) for b in a.batch_sizes.split(",") if b})
    backends = [b for b in a.backends.split(",") if b]
    engines = sorted({float(m) for m in a.engines.split(",") if m} | {a.mask_ratio})
    json_path, png_path = out_paths(a.out, "throughput", a.smoke)

    tmp = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="lmae-throughput-"))
    tmp.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"benchmark": "throughput", "smoke": a.smoke, "args": vars(a),
                               "machine": machine_info(a.threads), "keep_freed_memory": malloc_kept}
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
                from lmae_sdk.config import LMAEConfig

                ck = load_checkpoint(a.checkpoint)
                cfg = LMAEConfig.from_dict(ck["config"])
                size, prior_mode, pt = cfg.img_size, cfg.prior_mode, Path(a.checkpoint)
                payload["checkpoint"] = {"path": str(pt), "pixel_fusion": bool(ck.get("fusion"))}
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

                # --compare-fusion: the same engines again without pixel fusion, side by side
                runs = [b0] + ([f"{b0}-nofusion"] if a.compare_fusion and completer.fusion is not None else [])
                pbs = min(16, max(batch_sizes))
                for b in runs:
                    if b.endswith("-nofusion"):
                        for c in (completer, full):
                            if c is not None:
                                without_fusion(c)
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
