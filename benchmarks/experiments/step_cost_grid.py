"""One-off research check (session 9): how should the learned boundary map enter the geodesic
step cost?  Not a benchmark (no smoke mode, not run by CI); kept so its figures in
benchmarks/RESULTS.md have a command.

    python benchmarks/experiments/step_cost_grid.py --ckpt runs/s8/bnd_plain.pt --split train --images 80

Scores the geodesic fill alone (no model) at 50% random holes on the split's first images
(train by default, the images ``lmae fit-boundaries`` tunes on) for every map power x colour
weight x boundary weight, then, at the best entry, other sweep counts and blurs.  The step
cost is 1 + colour weight x |colour change| + boundary weight x p(boundary) ** power.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID  # noqa: E402
from lmae_sdk.boundaries import boundaries_from_checkpoint  # noqa: E402
from lmae_sdk.checkpoint import load_checkpoint  # noqa: E402
from lmae_sdk.degrade import degrade  # noqa: E402
from lmae_sdk.training.boundary_fit import fill_score  # noqa: E402
from lmae_sdk.training.data import load_pairs  # noqa: E402
from lmae_sdk.training.datasets import load_dataset  # noqa: E402


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="a checkpoint with a boundary net")
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--powers", default="1,1.5,2,2.5,3,4")
    ap.add_argument("--colour-weights", default="300,1000")
    ap.add_argument("--boundary-weights", default="3000,10000,30000")
    ap.add_argument("--rounds", default="3,4,6", help="sweep counts tried at the best entry (2 is the SDK's)")
    ap.add_argument("--blurs", default="0.6,2.0", help="blurs tried at the best entry (besides the checkpoint's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.ckpt)
    net = boundaries_from_checkpoint(ck, source=a.ckpt)
    if net is None:
        raise SystemExit(f"{a.ckpt}: no boundary net (lmae fit-boundaries)")
    n = int(ck["config"]["num_classes"])
    blur = float(ck["config"].get("geodesic_blur", 2.0))
    info = load_dataset(a.data, (a.split,))
    pairs = load_pairs(info.pairs[a.split][: a.images or None], n)
    partials = [degrade(lab, 0.5, "random", np.random.default_rng([a.seed, i]), patch=32,
                        background_index=ck.get("background_index")) for i, (_, lab) in enumerate(pairs)]
    maps = [net(img) for img, _ in pairs]

    def fill(colour: float, boundary: float, power: float, rounds: int = 2, blur_sigma: float = blur) -> float:
        return fill_score(pairs, partials, maps, colour, boundary, blur_sigma, n, power, rounds)

    print(f"{a.split} ({len(pairs)} images, random 0.5), geodesic fill PA-mIoU; {a.ckpt}")
    scores = {}
    for power, cw, bw in itertools.product(floats(a.powers), floats(a.colour_weights), floats(a.boundary_weights)):
        scores[(cw, bw, power)] = fill(cw, bw, power)
        print(f"  power {power:g}, colour {cw:g}, boundary {bw:g}: {scores[(cw, bw, power)]:.2f}", flush=True)
    cw, bw, power = max(scores, key=scores.get)
    print(f"best: power {power:g}, colour {cw:g}, boundary {bw:g}: {scores[(cw, bw, power)]:.2f} "
          f"(rounds 2, blur {blur:g})")
    for rounds in floats(a.rounds):
        print(f"  rounds {int(rounds)}: {fill(cw, bw, power, rounds=int(rounds)):.2f}", flush=True)
    for b in floats(a.blurs):
        print(f"  blur {b:g}: {fill(cw, bw, power, blur_sigma=b):.2f}", flush=True)


if __name__ == "__main__":
    main()
