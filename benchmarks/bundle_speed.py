"""The speed of a bundle, as ``lmae complete`` runs it, side by side in one run:

1. **e2e**: ``lmae complete`` with its defaults (plus ``--backend`` / ``--device`` when given)
   over the images and labels, its own report's img/s, and its peak RSS;
2. **where one image's time goes**: the pipeline's steps, serial on one thread over
   ``--profile-images`` images, each timed: decode, boundary graph, propagation and
   planes (host), route, encoder + decoder graphs, the fusion's features and decision
   (host), the fusion graph, write; the share inside graphs, and the host-bound ceiling
   (img/s per CPU core when every graph took no time, as on a fast GPU);
3. **each graph alone**: img/s of the encoder + decoder of every engine, the boundary
   graph and the fusion graph (its rows of each image), one thread, on the same images.

    python benchmarks/bundle_speed.py --bundle B --images DIR --labels DIR [--backend onnxruntime]

Prints a table naming the machine and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import machine_info, write_json  # noqa: E402

STAGES = ("decode", "boundary graph", "propagation", "planes + route", "encoder + decoder graphs",
          "fusion features (host)", "fusion graph", "finish rest (host)", "write")
GRAPH_STAGES = ("boundary graph", "encoder + decoder graphs", "fusion graph")


def run_e2e(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``lmae complete`` in a child process: its report line's img/s and the child's peak RSS."""
    cmd = [sys.executable, "-m", "lmae_sdk.cli", "complete", "--model", str(args.bundle), "--images",
           str(args.images), "--labels", str(args.labels), "--out", str(out), "--quiet"]
    if args.backend != "auto":
        cmd += ["--backend", args.backend]
    if args.device:
        cmd += ["--device", args.device]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    report = next((line for line in text.splitlines() if "img/s]" in line), "")
    found = re.search(r"\[([0-9.]+) img/s\]", report)
    return {"command": " ".join(cmd[1:]), "exit_status": os.waitstatus_to_exitcode(status), "report": report,
            "img_per_s": float(found.group(1)) if found else None, "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


class TimedScorer:
    """The completer's fusion scorer with its seconds counted (the host's scorer where the
    bundle has no fusion graph: its time then counts as host work)."""

    def __init__(self, scorer, fusion) -> None:
        from lmae_sdk.fusion_rows import HostRowScorer

        self.scorer = scorer or HostRowScorer(fusion)
        self.is_graph = scorer is not None
        self.seconds = 0.0
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.scorer(features, classes)
        self.seconds += time.perf_counter() - t0
        self.rows.append((features, classes))
        return out


def profile(completer, pairs: list[tuple[Path, Path]], out: Path) -> dict[str, Any]:
    """Serial seconds per image of each step, as the completer runs them (one thread)."""
    from lmae_sdk.labels import read_image, read_label, write_label
    from lmae_sdk.pipeline import finish, graph_inputs, prepare, propagate_for
    from lmae_sdk.routing import route_image

    cfg, st = completer.cfg, completer.settings
    t = dict.fromkeys(STAGES, 0.0)
    fed: dict[float, list[dict[str, Any]]] = {}
    scorer = TimedScorer(completer.fusion_scorer, st.fusion) if st.fusion is not None else None
    images = []
    for k, (ip, lp) in enumerate(pairs):
        t0 = time.perf_counter()
        img, lab = read_image(ip), read_label(lp)[0]
        t1 = time.perf_counter()
        bmap = completer.boundary_map(img)
        t2 = time.perf_counter()
        prop = propagate_for(cfg, lab, img, st.unknown_index, st.fusion is not None, bmap) \
            if cfg.prior or st.fusion is not None else None
        t3 = time.perf_counter()
        inputs = prepare(img, lab, cfg, st.label_resize, st.unknown_index, prop, bmap)
        decision = route_image(inputs, cfg, completer.mask_ratios, st.unknown_threshold, st.background_index,
                               force_final=True)
        t4 = time.perf_counter()
        feed = graph_inputs([inputs], [decision.plan], stacked=False)
        logits = completer.engines[round(decision.mask_ratio, 6)].backend.run_images(feed)[0]
        t5 = time.perf_counter()
        before = scorer.seconds if scorer else 0.0
        label, _ = finish(logits, lab, st, prop, confidence=False, scorer=scorer)
        t6 = time.perf_counter()
        write_label(out / f"profile_{k:04d}.png", label)
        t7 = time.perf_counter()
        scored = (scorer.seconds - before) if scorer else 0.0
        for stage, seconds in (("decode", t1 - t0), ("boundary graph", t2 - t1), ("propagation", t3 - t2),
                               ("planes + route", t4 - t3), ("encoder + decoder graphs", t5 - t4),
                               ("write", t7 - t6)):
            t[stage] += seconds
        if scorer and scorer.is_graph:
            t["fusion graph"] += scored
            t["fusion features (host)"] += t6 - t5 - scored
        elif scorer:
            t["fusion features (host)"] += t6 - t5
        else:
            t["finish rest (host)"] += t6 - t5
        fed.setdefault(round(decision.mask_ratio, 6), []).append(feed)
        images.append(img)
    n = max(len(pairs), 1)
    per = {k: v / n for k, v in t.items()}
    total = sum(per.values())
    graphs = sum(per[k] for k in GRAPH_STAGES)
    host = total - graphs
    return {"seconds_per_image": per, "share": {k: v / total for k, v in per.items()}, "images": len(pairs),
            "total_s": total, "graph_share": graphs / total, "host_s": host,
            "host_bound_img_per_s_per_core": 1.0 / host if host > 0 else None,
            "_feeds": fed, "_images": images, "_rows": scorer.rows if scorer and scorer.is_graph else []}


def graphs_alone(completer, prof: dict[str, Any], reps: int = 2) -> dict[str, float]:
    """img/s of each graph alone on the profiled images (best of ``reps`` passes)."""
    def best_rate(fn, items) -> float:
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for item in items:
                fn(item)
            best = min(best, time.perf_counter() - t0)
        return len(items) / best if items and best > 0 else float("nan")

    out: dict[str, float] = {}
    feeds = [f for fs in prof["_feeds"].values() for f in fs]
    for ratio, engine in sorted(completer.engines.items()):
        # every image through this engine: its routing plan swapped for one of this engine's K
        same = prof["_feeds"].get(ratio)
        if same:
            out[f"encoder + decoder m{ratio:g}"] = best_rate(engine.backend.run_images, same)
    if completer.boundaries is not None:
        out["boundary graph"] = best_rate(completer.boundaries, prof["_images"])
    if completer.fusion_scorer is not None and prof["_rows"]:
        per_image = len(prof["_rows"]) / max(len(feeds), 1)  # scorer calls per image (1)
        rate = best_rate(lambda r: completer.fusion_scorer(*r), prof["_rows"])
        out["fusion graph"] = rate / per_image if per_image else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    ap.add_argument("--device", default=None, help="cpu | cuda (ONNX Runtime)")
    ap.add_argument("--profile-images", type=int, default=32)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bundle_speed.json"))
    args = ap.parse_args(argv)

    from lmae_sdk import LMAECompleter
    from lmae_sdk.runtime.pairing import pair_folders

    with tempfile.TemporaryDirectory(prefix="lmae-bundle-speed-") as tmp:
        e2e = None if args.skip_e2e else run_e2e(args, Path(tmp) / "e2e")
        completer = LMAECompleter.load(args.bundle, backend=args.backend, device=args.device, threads=1)
        pairs = [(image, label) for image, label, _ in pair_folders(args.images, args.labels).pairs]
        pairs = pairs[: args.profile_images]
        (Path(tmp) / "profile").mkdir()
        profile(completer, pairs[:2], Path(tmp) / "profile")  # warm-up: compiled kernels, graph sessions
        prof = profile(completer, pairs, Path(tmp) / "profile")
        alone = graphs_alone(completer, prof)
    payload = {"machine": machine_info(threads=1), "bundle": str(args.bundle), "backend": completer.describe(),
               "e2e": e2e, "profile": {k: v for k, v in prof.items() if not k.startswith("_")},
               "graphs_alone_img_per_s": alone}
    write_json(args.out, payload)
    print_report(payload)
    return 0 if e2e is None or e2e["exit_status"] == 0 else 1


def print_report(p: dict[str, Any]) -> None:
    m, prof = p["machine"], p["profile"]
    print(f"machine: {m['cpu_model']}, {m['cpu_affinity']} usable cores, GPU {m['gpu']}; "
          f"load average {m['load_average_1_5_15']}")
    print(f"bundle {p['bundle']}: {p['backend']}")
    if p["e2e"]:
        e = p["e2e"]
        print(f"e2e (lmae complete, its defaults): {e['img_per_s']} img/s, peak RSS {e['peak_rss_mb']} MB, "
              f"exit {e['exit_status']}\n  {e['report']}")
    print(f"where one image's time goes (serial, one thread, {prof['images']} images):")
    for k, v in prof["seconds_per_image"].items():
        if v > 0:
            print(f"  {k:<26} {v * 1000:7.1f} ms  {prof['share'][k]:6.1%}")
    print(f"  {'total':<26} {prof['total_s'] * 1000:7.1f} ms; inside graphs {prof['graph_share']:.1%}; "
          f"host {prof['host_s'] * 1000:.1f} ms: host-bound ceiling "
          f"{prof['host_bound_img_per_s_per_core']:.1f} img/s per core")
    print("each graph alone (one thread):")
    for k, v in p["graphs_alone_img_per_s"].items():
        print(f"  {k:<26} {v:8.1f} img/s")


if __name__ == "__main__":
    raise SystemExit(main())
