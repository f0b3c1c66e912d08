"""Pick the routing rule on CamVid val: which unknown share makes a patch 'needing
completion' (masked) rather than visible with pixel holes.

    python benchmarks/routing_threshold.py --model runs/camvid_m0.5.pt --thresholds 0.1,0.25,0.5,0.75,0.95
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import machine_info, write_json  # noqa: E402
from lmae_sdk.boundaries import boundaries_from_checkpoint, boundary_maps  # noqa: E402
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from lmae_sdk.training.data import ValSet, load_pairs  # noqa: E402
from lmae_sdk.training.datasets import load_dataset  # noqa: E402
from lmae_sdk.training.train import evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/camvid")
    ap.add_argument("--thresholds", default="0.1,0.25,0.5,0.75,0.95")
    ap.add_argument("--settings", default="random:0.5,blocks:0.5")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/routing_threshold.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.model)
    model = model_from_checkpoint(ck)
    info = load_dataset(a.data, ("val",))
    pairs = info.pairs["val"][: a.limit or None]
    data = load_pairs(pairs, info.num_classes)
    maps = boundary_maps(boundaries_from_checkpoint(ck, source=a.model), [img for img, _ in data])
    ratio = float(ck["mask_ratios"][0])
    rows = []
    for setting in a.settings.split(","):
        strategy, r = setting.split(":")
        vs = ValSet(data, model.cfg, strategy, float(r), ck["label_resize"], boundary_maps=maps)
        for th in (float(t) for t in a.thresholds.split(",")):
            t0 = time.time()
            s = evaluate(model, vs, ratio, "background_first", th, info.class_names)
            rows.append({"setting": setting, "threshold": th, "pa_miou": s["pa_miou"],
                         "pa_pixel_acc": s["pa_pixel_acc"], "global_miou": s["global_miou"],
                         "seconds": time.time() - t0})
            print(f"{setting:<12s} threshold {th:<5g} PA-mIoU {s['pa_miou']:6.2f}  acc {s['pa_pixel_acc']:6.2f}  "
                  f"global {s['global_miou']:6.2f}", flush=True)
    result = {"benchmark": "routing_threshold", "model": a.model, "mask_ratio": ratio, "rows": rows,
              "machine": machine_info(a.threads)}
    write_json(Path(a.out), result)
    return result


if __name__ == "__main__":
    main()
