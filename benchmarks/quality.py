"""Completion quality: L-MAE against the completers users already have.

    python benchmarks/quality.py --data ../shared/data/camvid --model runs/camvid_m0.5.pt --limit 101
    python benchmarks/quality.py --smoke

On a dataset's val split, each full label is degraded with ``lmae_sdk.degrade.degrade``
(settings random 0.3 / 0.5 / 0.7, blocks 0.5, objects 0.5; seeded per image with
``default_rng([seed, i])``, the same partials ``training.train.evaluate`` uses) and completed by

* L-MAE (every ``--model``: a ``.pt`` or a bundle, through ``LMAECompleter``),
* ``nearest`` (nearest known label), ``random_walker`` (scikit-image; beta tuned on a few
  TRAIN images only, at random 0.5), ``slic_vote`` (SLIC superpixel majority),
  ``geodesic`` (the SDK's edge-aware nearest fill, the propagation behind its geodesic prior);
with ``--boundary-fill CKPT`` also that fill with the checkpoint's learned class boundaries in
the step cost (``lmae fit-boundaries``; map time included);
with ``--oracle`` also the border-label oracle (reads the ground truth: a hole pixel is right
whenever its class occurs on its hole's border), the headroom of label re-distribution.

Reported per (method, setting): PA-mIoU (completed pixels), unknown-area pixel accuracy,
global mIoU, seconds per image (everything the method does, reading aside).  Targets:
L-MAE - RW >= 8 PA-mIoU points at random 0.5 and blocks 0.5; L-MAE >= 35 PA-mIoU on
objects 0.5; L-MAE >= 20x faster than RW.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (DEFAULT_CAMVID, machine_info, new_figure, out_paths, plot_available,  # noqa: E402
                                random_checkpoint, save_figure, set_threads, smoke_dataset, table, write_json)

DEFAULT_SETTINGS = "random:0.3,random:0.5,random:0.7,blocks:0.5,objects:0.5"
TARGET_MARGIN_PA = 8.0  # L-MAE - RW, PA-mIoU points, at random 0.5 and blocks 0.5
TARGET_OBJECTS_PA = 35.0  # L-MAE PA-mIoU at objects 0.5
TARGET_SPEEDUP = 20.0  # RW s/img / L-MAE s/img
ORACLE = "border-label oracle"


def parse_settings(s: str) -> list[tuple[str, float]]:
    out = []
    for part in s.split(","):
        if part:
            k, v = part.split(":")
            out.append((k.strip(), float(v)))
    return out


def setting_name(strategy: str, ratio: float) -> str:
    return f"{strategy} {ratio:g}"


def load_split(root: str, split: str, limit: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], Any]:
    from lmae_sdk.training.data import load_pairs
    from lmae_sdk.datasets import load_dataset

    info = load_dataset(root, (split,))
    pairs = info.pairs[split][: limit or None]
    return load_pairs(pairs, info.num_classes), info


def make_partials(data, strategy: str, ratio: float, seed: int, patch: int, background_index) -> list[np.ndarray]:
    from lmae_sdk.degrade import degrade

    return [degrade(lab, ratio, strategy, np.random.default_rng([seed, i]), patch=patch,
                    background_index=background_index) for i, (_, lab) in enumerate(data)]


def score(method_fn, data, partials, num_classes: int, with_truth: bool = False) -> tuple[dict[str, Any], float]:
    """Run a per-image completer, pool the metrics; (summary, seconds per image).
    ``with_truth``: the method also gets the ground truth (the oracle)."""
    from lmae_sdk.metrics import CompletionMeter

    meter = CompletionMeter(num_classes)
    secs = 0.0
    for (img, gt), partial in zip(data, partials):
        t0 = time.perf_counter()
        out = method_fn(img, partial, gt) if with_truth else method_fn(img, partial)
        secs += time.perf_counter() - t0
        meter.update(out, gt, partial)
    return meter.summary(), secs / max(len(data), 1)


def _run_baseline(job: tuple[str, dict[str, Any], np.ndarray, np.ndarray]) -> np.ndarray:
    from benchmarks.baselines import BASELINES

    name, kw, img, partial = job
    return BASELINES[name](img, partial, **kw)


def score_baseline(name: str, kw: dict[str, Any], data, partials, num_classes: int,
                   processes: int) -> tuple[dict[str, Any], float]:
    """A baseline over the images in ``processes`` worker processes (one thread each), the
    way the completer's lanes share the cores; (summary, wall seconds per image)."""
    if processes <= 1:
        from benchmarks.baselines import BASELINES

        return score(lambda im, p: BASELINES[name](im, p, **kw), data, partials, num_classes)
    import multiprocessing as mp

    from lmae_sdk.metrics import CompletionMeter

    jobs = [(name, kw, img, partial) for (img, _), partial in zip(data, partials)]
    one_thread = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    saved = {var: os.environ.get(var) for var in one_thread}
    os.environ.update(one_thread)  # the spawned workers start with it
    try:
        with mp.get_context("spawn").Pool(processes) as pool:
            pool.map(_run_baseline, jobs[:processes])  # start-up and imports outside the clock
            t0 = time.perf_counter()
            outs = pool.map(_run_baseline, jobs, chunksize=1)
            secs = (time.perf_counter() - t0) / max(len(jobs), 1)
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    meter = CompletionMeter(num_classes)
    for (_, gt), partial, out in zip(data, partials, outs):
        meter.update(out, gt, partial)
    return meter.summary(), secs


def score_lmae(completer, data, partials, num_classes: int, batch_size: int, workers: int, lanes: int = 1):
    from lmae_sdk.metrics import CompletionMeter

    meter = CompletionMeter(num_classes)
    # warm-up outside the clock: numba's first compile of a kernel (once per machine, then
    # cached on disk), ORT's first run of a batch shape
    list(completer.complete_batch([(img, p) for (img, _), p in zip(data[:batch_size], partials)],
                                  batch_size=batch_size, workers=workers, lanes=lanes))
    t0 = time.perf_counter()
    results = list(completer.complete_batch([(img, p) for (img, _), p in zip(data, partials)],
                                            batch_size=batch_size, workers=workers, lanes=lanes))
    secs = (time.perf_counter() - t0) / max(len(data), 1)
    passes = 0
    for (_, gt), partial, r in zip(data, partials, results):
        meter.update(r.label, gt, partial)
        passes = max(passes, r.passes)
    s = meter.summary()
    s["max_passes"] = passes
    return s, secs


def tune_beta(root: str, betas: list[float], n_images: int, seed: int, patch: int) -> dict[str, Any]:
    """RW beta by PA-mIoU on ``n_images`` TRAIN images at random 0.5 (never on val)."""
    from benchmarks.baselines import random_walker_fill

    data, info = load_split(root, "train", n_images)
    partials = make_partials(data, "random", 0.5, seed + 1000, patch, info.background_index)
    scores = {}
    for b in betas:
        s, secs = score(lambda im, p, b=b: random_walker_fill(im, p, beta=b), data, partials, info.num_classes)
        scores[b] = {"pa_miou": s["pa_miou"], "pa_pixel_acc": s["pa_pixel_acc"], "seconds_per_image": secs}
        print(f"  RW beta {b:g}: PA-mIoU {s['pa_miou']:.2f} ({secs:.2f} s/img)", flush=True)
    best = max(betas, key=lambda b: (np.nan_to_num(scores[b]["pa_miou"], nan=-1), -b))
    return {"chosen": best, "split": "train", "images": len(data), "setting": "random 0.5", "scores": scores}


def tune_geodesic(root: str, blurs: list[float], edge_weights: list[float], n_images: int, seed: int,
                  patch: int) -> dict[str, Any]:
    """Geodesic fill's (blur, edge weight) grid by PA-mIoU on ``n_images`` TRAIN images at
    random 0.5 (how ``labels.TUNED_BLUR`` / ``TUNED_EDGE_WEIGHT`` were chosen)."""
    from lmae_sdk.propagation import geodesic_nearest

    data, info = load_split(root, "train", n_images)
    partials = make_partials(data, "random", 0.5, seed + 1000, patch, info.background_index)
    grid = []
    for blur in blurs:
        for ew in edge_weights:
            s, secs = score(lambda im, p, b=blur, e=ew: geodesic_nearest(im, p, edge_weight=e, blur_sigma=b), data,
                            partials, info.num_classes)
            grid.append({"blur_sigma": blur, "edge_weight": ew, "pa_miou": s["pa_miou"], "seconds_per_image": secs})
            print(f"  geodesic blur {blur:g} edge weight {ew:g}: PA-mIoU {s['pa_miou']:.2f}", flush=True)
    best = max(grid, key=lambda r: r["pa_miou"])
    return {"chosen": {k: best[k] for k in ("blur_sigma", "edge_weight")}, "split": "train", "images": len(data),
            "setting": "random 0.5", "grid": grid}


BOUNDARY_FILL = "geodesic + learned boundaries"


def boundary_fill(ckpt_path: str):
    """(image, partial) -> the geodesic fill with the checkpoint's boundary net and step-cost weights."""
    from lmae_sdk.boundaries import boundaries_from_checkpoint
    from lmae_sdk.checkpoint import load_checkpoint
    from lmae_sdk.propagation import geodesic_nearest

    ck = load_checkpoint(ckpt_path)
    net = boundaries_from_checkpoint(ck, source=ckpt_path)
    if net is None:
        raise SystemExit(f"{ckpt_path}: no boundary net (lmae fit-boundaries)")
    cfg = ck["config"]

    def fill(image: np.ndarray, partial: np.ndarray) -> np.ndarray:
        return geodesic_nearest(image, partial, edge_weight=cfg["geodesic_edge_weight"],
                                blur_sigma=cfg["geodesic_blur"], boundary=net(image),
                                boundary_weight=cfg["geodesic_boundary_weight"],
                                boundary_power=cfg.get("geodesic_boundary_power", 1.0))

    return fill


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=0, help="first N images of the split (0 = all)")
    ap.add_argument("--model", action="append", default=[], help="a .pt or a bundle folder; repeat for several")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--baselines", default="nearest,geodesic,random_walker,slic_vote")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="strategy:ratio,...")
    ap.add_argument("--oracle", action="store_true",
                    help="add the border-label oracle (reads the ground truth: headroom, not a completer)")
    ap.add_argument("--tune-beta", default="50,130,500,1000,2000", help="RW betas tried on train images")
    ap.add_argument("--tune-images", type=int, default=10)
    ap.add_argument("--tune-geodesic", default=None, metavar="BLURS:EDGE_WEIGHTS",
                    help="grid-search the geodesic fill on --tune-images TRAIN images first, "
                         "e.g. 0,0.7,1.2,2:30,100,300,1000")
    ap.add_argument("--boundary-fill", default=None, metavar="CKPT",
                    help="add the geodesic fill with this checkpoint's learned boundaries (lmae fit-boundaries)")
    ap.add_argument("--beta", type=float, default=None, help="fixed RW beta (skips tuning)")
    ap.add_argument("--patch", type=int, default=32, help="degrade grid patch / minimum block side (px)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lanes", type=int, default=1,
                    help="L-MAE batches side by side (complete_batch lanes), each engine on threads / lanes threads")
    ap.add_argument("--baseline-processes", type=int, default=0,
                    help="baselines run in this many processes of one thread each, timed by wall clock "
                         "(0 = as many as --lanes: the peers share the cores as the completer's lanes do)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, a random tiny model: seconds")
    return ap.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    a = parse_args(argv)
    set_threads(a.threads)
    from benchmarks.baselines import border_oracle_fill
    from lmae_sdk.runtime.completer import LMAECompleter

    json_path, png_path = out_paths(a.out, "quality", a.smoke)
    tmp = None
    if a.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="lmae-quality-")
        a.data = str(smoke_dataset(Path(tmp.name) / "data", n_train=4, n_val=4))
        # with a random boundary net: the smoke run exercises the learned-boundary path too
        a.model = [str(random_checkpoint(Path(tmp.name) / "tiny.pt", "tiny", 5, (64, 96), (0.25, 0.5, 0.75),
                                         class_names=["background", "disc", "box", "bar", "blob"],
                                         boundary_size=(96, 128)))]
        a.boundary_fill = a.model[0]
        a.limit, a.tune_images, a.tune_beta, a.patch = 4, 2, "130,1000", 16
        a.settings = "random:0.5,blocks:0.5,objects:0.5"
        a.oracle = True
        a.tune_geodesic = "0,1.2:100,1000"
    t_start = time.perf_counter()
    payload: dict[str, Any] = {"benchmark": "quality", "smoke": a.smoke, "args": vars(a),
                               "machine": machine_info(a.threads)}
    try:
        data, info = load_split(a.data, a.split, a.limit)
        n = info.num_classes
        print(f"{a.data} {a.split}: {len(data)} images, {n} classes", flush=True)
        baselines = [b for b in a.baselines.split(",") if b]
        beta_info = None
        if "random_walker" in baselines:
            if a.beta is not None:
                beta_info = {"chosen": a.beta, "tuned": False}
            else:
                print(f"tuning RW beta on {a.tune_images} train images (random 0.5)", flush=True)
                beta_info = tune_beta(a.data, [float(b) for b in a.tune_beta.split(",")], a.tune_images, a.seed,
                                      a.patch)
                beta_info["tuned"] = True
            print(f"RW beta = {beta_info['chosen']:g}", flush=True)
        payload["random_walker_beta"] = beta_info
        if a.tune_geodesic:
            blurs, weights = ([float(v) for v in part.split(",")] for part in a.tune_geodesic.split(":"))
            print(f"tuning the geodesic fill on {a.tune_images} train images (random 0.5)", flush=True)
            payload["geodesic_tuning"] = tune_geodesic(a.data, blurs, weights, a.tune_images, a.seed, a.patch)

        extra_fills = {}
        if a.boundary_fill:
            extra_fills[BOUNDARY_FILL] = boundary_fill(a.boundary_fill)
        completers = {}
        for m in a.model:
            c = LMAECompleter.load(m, backend=a.backend, threads=max(1, a.threads // max(1, a.lanes)))
            if c.backend_name == "torch":  # torch's threads are the process's: this benchmark sets them
                from lmae_sdk.runtime.backends import set_torch_threads

                set_torch_threads(max(1, a.threads // max(1, a.lanes)))
            if c.num_classes != n:
                raise SystemExit(f"{m}: model has {c.num_classes} classes, the dataset {n}")
            label = Path(m).stem if Path(m).suffix == ".pt" else Path(m).name
            completers[f"L-MAE {label}"] = c
            print(f"{label}: {c.describe()}", flush=True)

        rows: list[dict[str, Any]] = []
        for strategy, ratio in parse_settings(a.settings):
            sname = setting_name(strategy, ratio)
            partials = make_partials(data, strategy, ratio, a.seed, a.patch, info.background_index)
            hole = float(np.mean([np.mean(p == 255) for p in partials]))
            for name, c in completers.items():
                s, secs = score_lmae(c, data, partials, n, a.batch_size, max(1, a.threads), max(1, a.lanes))
                rows.append(_row(name, "lmae", sname, s, secs, hole))
                print(f"  {sname:>12} {name:>24}: PA-mIoU {s['pa_miou']:6.2f}  acc {s['pa_pixel_acc']:6.2f}  "
                      f"global {s['global_miou']:6.2f}  {secs:.3f} s/img", flush=True)
            for b, fn in extra_fills.items():
                s, secs = score(fn, data, partials, n)
                rows.append(_row(b, "sdk-fill", sname, s, secs, hole))
                print(f"  {sname:>12} {b:>24}: PA-mIoU {s['pa_miou']:6.2f}  acc {s['pa_pixel_acc']:6.2f}  "
                      f"global {s['global_miou']:6.2f}  {secs:.3f} s/img", flush=True)
            for b in baselines:
                kw = {"beta": beta_info["chosen"]} if b == "random_walker" else {}
                s, secs = score_baseline(b, kw, data, partials, n, a.baseline_processes or max(1, a.lanes))
                rows.append(_row(b, "baseline", sname, s, secs, hole))
                print(f"  {sname:>12} {b:>24}: PA-mIoU {s['pa_miou']:6.2f}  acc {s['pa_pixel_acc']:6.2f}  "
                      f"global {s['global_miou']:6.2f}  {secs:.3f} s/img", flush=True)
            if a.oracle:
                s, secs = score(border_oracle_fill, data, partials, n, with_truth=True)
                rows.append(_row(ORACLE, "oracle", sname, s, secs, hole))
                print(f"  {sname:>12} {ORACLE:>24}: PA-mIoU {s['pa_miou']:6.2f}  (reads the ground truth)", flush=True)
        payload["results"] = rows
        payload["dataset"] = {"root": a.data, "split": a.split, "images": len(data), "classes": info.class_names}
        payload["target_checks"] = _targets(rows, list(completers))
        payload["seconds"] = time.perf_counter() - t_start
    finally:
        if tmp is not None:
            tmp.cleanup()

    cols = [("setting", "setting"), ("method", "method"), ("pa_miou", "PA-mIoU"), ("pa_pixel_acc", "unknown acc"),
            ("global_miou", "global mIoU"), ("seconds_per_image", "s/img"), ("hole_share", "hole share")]
    m = payload["machine"]
    print(f"\nmachine: {m['cpu_model']}, {m['cpu_affinity']} cores, threads {a.threads}, load "
          f"{m['load_average_1_5_15']}; {m['date']}")
    print(table(rows, cols))
    print("\ntargets:")
    for c in payload["target_checks"]:
        v = "-" if c["value"] is None else f"{c['value']:.2f}"
        print(f"  {c['model']}: {c['what']}: {v} (target >= {c['target']}) {c['status']}")
    write_json(json_path, payload)
    print(f"\nwrote {json_path}")
    if not a.no_plot and plot_available() and rows:
        _plot(payload, png_path)
        print(f"wrote {png_path}")
    return payload


def _row(method: str, kind: str, setting: str, s: dict[str, Any], secs: float, hole: float) -> dict[str, Any]:
    return {"method": method, "kind": kind, "setting": setting, "pa_miou": s["pa_miou"],
            "pa_pixel_acc": s["pa_pixel_acc"], "global_miou": s["global_miou"],
            "global_pixel_acc": s["global_pixel_acc"], "seconds_per_image": secs, "hole_share": hole,
            "pa_iou_per_class": s["pa_iou_per_class"], "max_passes": s.get("max_passes")}


def _targets(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    def get(method, setting, key):
        for r in rows:
            if r["method"] == method and r["setting"] == setting:
                return r[key]
        return None

    checks = []

    def add(model, what, value, target):
        ok = None if value is None or not np.isfinite(value) else bool(value >= target)
        checks.append({"model": model, "what": what, "value": value, "target": target,
                       "status": "n/a" if ok is None else ("PASS" if ok else "FAIL")})

    for m in models:
        for st in ("random 0.5", "blocks 0.5"):
            a, b = get(m, st, "pa_miou"), get("random_walker", st, "pa_miou")
            add(m, f"PA-mIoU L-MAE - RW at {st}", None if a is None or b is None else a - b, TARGET_MARGIN_PA)
        add(m, "PA-mIoU at objects 0.5", get(m, "objects 0.5", "pa_miou"), TARGET_OBJECTS_PA)
        rw = [r["seconds_per_image"] for r in rows if r["method"] == "random_walker"]
        lm = [r["seconds_per_image"] for r in rows if r["method"] == m]
        add(m, "speed-up over RW (mean s/img RW / L-MAE)",
            float(np.mean(rw) / np.mean(lm)) if rw and lm else None, TARGET_SPEEDUP)
    return checks


def _plot(p: dict[str, Any], path: Path) -> None:
    rows = p["results"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = new_figure(2, 6.0, 4.0)
    w = 0.8 / max(len(methods), 1)
    x = np.arange(len(settings))
    for i, m in enumerate(methods):
        vals = [next((r["pa_miou"] for r in rows if r["method"] == m and r["setting"] == s), np.nan) for s in settings]
        axes[0].bar(x + i * w, vals, w, label=m)
        secs = np.mean([r["seconds_per_image"] for r in rows if r["method"] == m])
        axes[1].bar(i, secs, color=f"C{i}")
    axes[0].set_xticks(x + w * (len(methods) - 1) / 2, settings, fontsize=8)
    axes[0].set_ylabel("PA-mIoU")
    axes[0].legend(fontsize=7)
    axes[0].set_title("completion quality (val)")
    axes[1].set_xticks(range(len(methods)), methods, rotation=20, fontsize=7)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("seconds / image")
    axes[1].set_title("speed")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
