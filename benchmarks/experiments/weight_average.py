"""Uniform weight average ("model soup", Wortsman et al. 2022) of checkpoints fine-tuned from
one training run: one model, the inference cost of one.

    python benchmarks/experiments/weight_average.py runs/s9/ft39_final.pt runs/s9/ft65_final.pt --out runs/s10/soup.pt

Everything but the model's weights (config, boundary net, step cost, calibration) comes from
the first checkpoint; the checkpoints must share the config.  Training state is dropped.
"""
from __future__ import annotations

import argparse

import torch


def average(paths: list[str]) -> dict:
    ckpts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    first = ckpts[0]
    for p, c in zip(paths[1:], ckpts[1:]):
        if c["config"] != first["config"]:
            raise SystemExit(f"{p}: config differs from {paths[0]}'s; only checkpoints of one model average")
        if c["state_dict"].keys() != first["state_dict"].keys():
            raise SystemExit(f"{p}: weights differ in names from {paths[0]}'s")
    out = {k: v for k, v in first.items() if k != "train_state"}
    out["state_dict"] = {k: torch.stack([c["state_dict"][k].float() for c in ckpts]).mean(0).to(v.dtype)
                         if v.is_floating_point() else v for k, v in first["state_dict"].items()}
    out["metrics"] = {}
    out["weight_average_of"] = list(paths)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.save(average(a.checkpoints), a.out)
    print(f"{a.out}: uniform average of {len(a.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
