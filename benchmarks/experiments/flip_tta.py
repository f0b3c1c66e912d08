"""One-off research check (session 7): does mirror-image averaging (test-time flip) help the
completion, for the model's logits and for the boundary map?  Not a benchmark (no smoke
mode, not run by CI); kept so its figures in benchmarks/RESULTS.md have a command.

    python benchmarks/experiments/flip_tta.py --ckpt runs/s7/hole4_fused.pt --settings random:0.5,objects:0.5

The checkpoint needs a boundary net (without flip averaging) and pixel fusion.  On CamVid val
it scores, per setting, the fused completion three ways: plain; the model's logits averaged
with those of the mirrored inputs (mapped back); and that plus the boundary map averaged the
same way (the map then feeds the propagation, the prior and the fusion).  The routing is the
runtime's (``training.calibrate.runtime_logits``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID  # noqa: E402
from lmae_sdk.boundaries import boundaries_from_checkpoint, flip_boundaries  # noqa: E402
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from lmae_sdk.degrade import degrade  # noqa: E402
from lmae_sdk.fusion import PixelFusion  # noqa: E402
from lmae_sdk.metrics import CompletionMeter  # noqa: E402
from lmae_sdk.preprocess import ModelInputs, finish, prepare, propagate_for  # noqa: E402
from lmae_sdk.training.calibrate import runtime_logits  # noqa: E402
from lmae_sdk.training.data import load_pairs  # noqa: E402
from lmae_sdk.training.datasets import load_dataset  # noqa: E402


def mirrored(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[:, ::-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--settings", default="random:0.5,objects:0.5")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(a.ckpt)
    model = model_from_checkpoint(ck).eval()
    cfg = model.cfg
    net = boundaries_from_checkpoint(ck)
    if net is None or net.spec.flip_average or not ck.get("fusion"):
        raise SystemExit(f"{a.ckpt}: needs a boundary net without flip averaging, and pixel fusion")
    fusion = PixelFusion.from_dict(ck["fusion"])
    val = load_pairs(load_dataset(a.data, ("val",)).pairs["val"], cfg.num_classes)
    ratios, th, bg = [float(r) for r in ck["mask_ratios"]], float(ck["unknown_threshold"]), ck.get("background_index")
    maps = [net(img) for img, _ in val]
    averaged = [(m + flip_boundaries(net(mirrored(img)))) / 2 for m, (img, _) in zip(maps, val)]
    for setting in a.settings.split(","):
        strategy, ratio = setting.split(":")
        meters = {k: CompletionMeter(cfg.num_classes) for k in ("plain", "model flip", "model + map flip")}
        for s in range(0, len(val), 16):
            chunk = range(s, min(s + 16, len(val)))
            parts = {i: degrade(val[i][1], float(ratio), strategy, np.random.default_rng([0, i]), patch=32,
                                background_index=bg) for i in chunk}
            runs = {}
            for key, ms in (("plain", maps), ("averaged", averaged)):
                props = {i: propagate_for(cfg, parts[i], val[i][0], class_costs=True, boundary=ms[i]) for i in chunk}
                inputs = [prepare(val[i][0], parts[i], cfg, ck["label_resize"], propagated=props[i]) for i in chunk]
                flipped = [prepare(mirrored(val[i][0]), mirrored(parts[i]), cfg, ck["label_resize"],
                                   propagated=propagate_for(cfg, mirrored(parts[i]), mirrored(val[i][0]),
                                                            boundary=flip_boundaries(ms[i])))
                           for i in chunk]
                direct = runtime_logits(model, ModelInputs.stack(inputs), ratios, th, bg)
                back = [lg[:, :, ::-1] for lg in runtime_logits(model, ModelInputs.stack(flipped), ratios, th, bg)]
                runs[key] = (props, direct, back)
            for j, i in enumerate(chunk):
                gt, p = val[i][1], parts[i]
                props, direct, back = runs["plain"]
                meters["plain"].update(finish(direct[j], p, propagated=props[i], fusion=fusion)[0], gt, p)
                meters["model flip"].update(finish((direct[j] + back[j]) / 2, p, propagated=props[i],
                                                   fusion=fusion)[0], gt, p)
                props, direct, back = runs["averaged"]
                meters["model + map flip"].update(finish((direct[j] + back[j]) / 2, p, propagated=props[i],
                                                         fusion=fusion)[0], gt, p)
        print(f"{setting}: " + ", ".join(f"{k} {m.summary()['pa_miou']:.2f}" for k, m in meters.items()), flush=True)


if __name__ == "__main__":
    main()
