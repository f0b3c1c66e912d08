"""Ablations of the paper's design choices, each arm trained at the same budget.

    python benchmarks/ablations.py --data ../shared/data/camvid --preset small --minutes 20 --seeds 0,1
    python benchmarks/ablations.py --smoke

Arms (everything else as the ``base`` arm; mask ratio 0.5, evaluated on val at 0.5):

* ``ips_off``            Image Patch Supplement off (learned mask token) - paper: IPS +4.1 mIoU on average
* ``fuse_concat`` / ``fuse_insert``   Stack Fuse mode (paper Table III), base = ``layer``
* ``mix_random`` / ``mix_label_first`` / ``mix_background_first``   one masking strategy
  alone instead of the 1:2:2 Random : Label-First : Background-First mix
* ``range_model``        one model trained over mask ratios 0.25 / 0.5 / 0.75 vs the per-ratio model
* ``label_nearest``      nearest-neighbour label down-sampling vs soft (area) labels

Each arm calls ``lmae_sdk.training.train.train(TrainConfig(...))`` with the same
``--minutes`` (wall clock; or ``--epochs`` for a step-matched budget) and reads the final
val metrics from the checkpoint.  Reported: val PA-mIoU (random holes, Background-First
routing), its delta to ``base`` next to the paper's, and the Background-First-holes score.
``--paper-like`` turns off our two additions (prior planes, refinement head) in every arm.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (DEFAULT_CAMVID, machine_info, new_figure, out_paths, plot_available,  # noqa: E402
                                save_figure, set_threads, smoke_dataset, table, write_json)

# name -> (what, TrainConfig overrides, model overrides, paper delta vs base in PA-mIoU points or None)
ARMS: dict[str, tuple[str, dict[str, Any], dict[str, Any], float | None]] = {
    "base": ("IPS on, fuse layer, mix 1:2:2, per-ratio m=0.5, soft labels", {}, {}, 0.0),
    "ips_off": ("IPS off (learned mask token)", {}, {"ips": False}, -4.1),
    "fuse_concat": ("fuse concat (one label channel)", {}, {"fuse": "concat"}, None),
    "fuse_insert": ("fuse insert (label between RGB)", {}, {"fuse": "insert"}, None),
    "mix_random": ("mask mix Random only", {"mask_mix": {"random": 1.0}}, {}, None),
    "mix_label_first": ("mask mix Label-First only", {"mask_mix": {"label_first": 1.0}}, {}, None),
    "mix_background_first": ("mask mix Background-First only", {"mask_mix": {"background_first": 1.0}}, {}, None),
    "range_model": ("one model over m=0.25/0.5/0.75", {"mask_ratios": (0.25, 0.5, 0.75)}, {}, None),
    "label_nearest": ("nearest label down-sampling", {"label_resize": "nearest"}, {}, None),
}
PAPER_NOTE = ("Paper (Jia et al., L-MAE, arXiv 2211.11242): IPS improves mIoU by 4.1 points on average (abstract); "
              "the Table III figures (fuse modes, masking strategies) were not available to us here: fill them in "
              "from the paper. The paper's setting differs (Pascal VOC / Cityscapes, ViT-L-size model, no prior, "
              "no refinement head), so compare signs and rough sizes, not values.")


def trainconfig_fields() -> set[str]:
    from lmae_sdk.training.train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def run_arm(arm: str, seed: int, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from lmae_sdk.checkpoint import load_checkpoint
    from lmae_sdk.training.train import TrainConfig, train

    what, tc_over, model_over, _ = ARMS[arm]
    fields = trainconfig_fields()
    missing = [k for k in tc_over if k not in fields]
    if missing:  # e.g. an older TrainConfig without mask_mix
        return {"arm": arm, "seed": seed, "skipped": f"TrainConfig has no field(s) {missing}: the training code "
                                                       f"must add them (TrainConfig / SampleSpec)"}
    mo = dict(model_over)
    if a.paper_like:
        mo.update({"prior": False, "refine_width": 0})
    budget = {"epochs": a.epochs, "time_budget_min": 0.0} if a.epochs else \
        {"epochs": 10**6, "time_budget_min": a.minutes}
    kw: dict[str, Any] = dict(data=a.data, out=str(work / f"{arm}_s{seed}.pt"), preset=a.preset,
                              image_size=tuple(a.image_size), batch_size=a.batch_size, seed=seed, threads=a.threads,
                              workers=a.workers, val_limit=a.val_limit, val_every=10**9, progress=False,
                              max_train_items=a.max_train_items, model_overrides=mo, mask_ratios=(0.5,), amp=a.amp,
                              **budget)
    kw.update(tc_over)
    t0 = time.perf_counter()
    path = train(TrainConfig(**kw))
    minutes = (time.perf_counter() - t0) / 60
    ck = load_checkpoint(path)
    met = ck["metrics"]
    return {"arm": arm, "seed": seed, "what": what, "pa_miou": met["val_random"]["pa_miou"],
            "pa_pixel_acc": met["val_random"]["pa_pixel_acc"], "global_miou": met["val_random"]["global_miou"],
            "pa_miou_background": met["val_background"]["pa_miou"], "epochs": met["epoch"], "minutes": minutes,
            "model_overrides": mo, "train_overrides": {k: v for k, v in tc_over.items()}}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--image-size", default="224x288")
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget per arm and seed")
    ap.add_argument("--epochs", type=int, default=0, help="epoch budget instead of minutes (0 = use --minutes)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--amp", default="none", choices=("none", "bf16"), help="bf16 autocast (same for every arm)")
    ap.add_argument("--val-limit", type=int, default=0)
    ap.add_argument("--max-train-items", type=int, default=0)
    ap.add_argument("--paper-like", action="store_true", help="prior=False, refine_width=0 in every arm")
    ap.add_argument("--workdir", default=None, help="keep the arms' checkpoints here (default: temp)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, tiny model, one short epoch per arm")
    a = ap.parse_args(argv)
    a.image_size = tuple(int(x) for x in a.image_size.lower().split("x"))
    return a


def main(argv=None) -> dict[str, Any]:
    a = parse_args(argv)
    set_threads(a.threads)
    json_path, png_path = out_paths(a.out, "ablations", a.smoke)
    tmp = tempfile.TemporaryDirectory(prefix="lmae-ablations-")
    if a.smoke:
        a.data = str(smoke_dataset(Path(tmp.name) / "data", n_train=4, n_val=2, size=(64, 96)))
        a.preset, a.image_size, a.epochs, a.batch_size = "tiny", (32, 48), 1, 4
        a.max_train_items, a.val_limit, a.threads, a.seeds = 4, 2, 1, "0"
    work = Path(a.workdir) if a.workdir else Path(tmp.name) / "runs"
    work.mkdir(parents=True, exist_ok=True)
    arms = [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if "base" not in arms:
        arms = ["base"] + arms
    seeds = [int(s) for s in a.seeds.split(",") if s]
    payload: dict[str, Any] = {"benchmark": "ablations", "smoke": a.smoke, "args": vars(a),
                               "machine": machine_info(a.threads), "paper_note": PAPER_NOTE}
    t0 = time.perf_counter()
    runs = []
    try:
        for arm in arms:
            for seed in seeds:
                print(f"== arm {arm} seed {seed}", flush=True)
                r = run_arm(arm, seed, a, work)
                if "skipped" in r:
                    print(f"   skipped: {r['skipped']}", flush=True)
                else:
                    print(f"   PA-mIoU {r['pa_miou']:.2f} (background-first holes {r['pa_miou_background']:.2f}) "
                          f"after {r['epochs']} epochs, {r['minutes']:.1f} min", flush=True)
                runs.append(r)
    finally:
        tmp.cleanup()

    summary = _summarize(runs, arms)
    payload.update({"runs": runs, "summary": summary, "seconds": time.perf_counter() - t0})
    m = payload["machine"]
    budget = f"{a.epochs} epochs" if a.epochs else f"{a.minutes:g} min"
    print(f"\nablations: preset {a.preset}, {budget} per arm, seeds {seeds}{', paper-like' if a.paper_like else ''}; "
          f"{m['cpu_model']}, {m['cpu_affinity']} cores, threads {a.threads}; {m['date']}")
    cols = [("arm", "arm"), ("what", "what"), ("pa_miou", "PA-mIoU"), ("pa_miou_std", "std"),
            ("delta", "delta vs base"), ("paper_delta", "paper delta"), ("pa_miou_background", "PA-mIoU bg holes"),
            ("global_miou", "global mIoU"), ("epochs", "epochs"), ("status", "status")]
    print(table(summary, cols))
    print(PAPER_NOTE)
    write_json(json_path, payload)
    print(f"\nwrote {json_path}")
    done = [s for s in summary if s.get("pa_miou") is not None]
    if not a.no_plot and plot_available() and done:
        fig, axes = new_figure(1, 7.0, 4.0)
        ax = axes[0]
        x = np.arange(len(done))
        ax.bar(x - 0.2, [s["delta"] for s in done], 0.4, yerr=[s["pa_miou_std"] or 0 for s in done], label="ours")
        ax.bar(x + 0.2, [np.nan if s["paper_delta"] is None else s["paper_delta"] for s in done], 0.4, label="paper")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x, [s["arm"] for s in done], rotation=30, fontsize=7)
        ax.set_ylabel("PA-mIoU delta vs base")
        ax.legend(fontsize=7)
        ax.set_title(f"ablations ({a.preset}, {budget} per arm)")
        save_figure(fig, png_path)
        print(f"wrote {png_path}")
    return payload


def _summarize(runs: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    out = []
    base = [r["pa_miou"] for r in runs if r["arm"] == "base" and "pa_miou" in r]
    base_mean = float(np.mean(base)) if base else None
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm and "pa_miou" in r]
        sk = [r["skipped"] for r in runs if r["arm"] == arm and "skipped" in r]
        row: dict[str, Any] = {"arm": arm, "what": ARMS[arm][0], "paper_delta": ARMS[arm][3]}
        if not rs:
            row.update({"pa_miou": None, "status": f"skipped: {sk[0]}" if sk else "no run"})
        else:
            v = np.array([r["pa_miou"] for r in rs])
            row.update({"pa_miou": float(v.mean()), "pa_miou_std": float(v.std()) if len(v) > 1 else None,
                        "seeds": len(v), "delta": None if base_mean is None else float(v.mean() - base_mean),
                        "pa_miou_background": float(np.mean([r["pa_miou_background"] for r in rs])),
                        "global_miou": float(np.mean([r["global_miou"] for r in rs])),
                        "epochs": float(np.mean([r["epochs"] for r in rs])), "status": "ok"})
        out.append(row)
    return out


if __name__ == "__main__":
    main()
