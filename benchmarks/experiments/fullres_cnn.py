"""One-off research check (session 4): can a plain full-resolution CNN beat the geodesic fill
on small random holes?  Not a benchmark (no smoke mode, not run by CI); kept so its figure in
benchmarks/RESULTS.md has a command.

    python benchmarks/experiments/fullres_cnn.py --minutes 15 --width 24

A 4-level UNet (BatchNorm, ~0.44M params at width 24) at the input resolution over
[RGB, known one-hot, geodesic one-hot, distance, hole mask], predicting a residual on the
geodesic fill's one-hot, trained on 192x192 crops of CamVid train with degrade() holes
(random / blocks / objects, 16-48 px patches, 20-80% unknown), class-weighted CE on hole
pixels, AdamW + cosine, bf16 autocast, 1 thread.  Scored on CamVid val at random 0.5 next to
the geodesic fill with the same step costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID  # noqa: E402
from benchmarks.experiments._parts import UNet4, random_crop  # noqa: E402
from benchmarks.quality import load_split, make_partials  # noqa: E402
from lmae_sdk.degrade import degrade  # noqa: E402
from lmae_sdk.labels import (IMAGENET_MEAN, IMAGENET_STD, TUNED_BLUR, TUNED_EDGE_WEIGHT, UNKNOWN,  # noqa: E402
                             geodesic_nearest, nearest_known, one_hot)
from lmae_sdk.metrics import CompletionMeter  # noqa: E402


def features(img: np.ndarray, partial: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    hole = partial == UNKNOWN
    geo = geodesic_nearest(img, partial, edge_weight=TUNED_EDGE_WEIGHT, blur_sigma=TUNED_BLUR)
    _, dist = nearest_known(partial)
    x = (img.astype(np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    f = np.concatenate([x.transpose(2, 0, 1), one_hot(partial, n), one_hot(geo, n),
                        (1 - np.exp(-np.minimum(dist, 1e4) / 8))[None], hole[None].astype(np.float32)])
    return f.astype(np.float32), geo


class UNet(UNet4):
    """UNet4 over the features, a residual on the geodesic fill's one-hot."""

    def __init__(self, n: int, w: int) -> None:
        super().__init__(3 + 2 * n + 2, n, w)
        self.n = n
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        geo = f[:, 3 + self.n: 3 + 2 * self.n]
        return super().forward(f) + self.gain * geo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, info = load_split(a.data, "train", 0)
    val, _ = load_split(a.data, "val", 0)
    n = info.num_classes
    counts = np.bincount(np.concatenate([lab[lab != UNKNOWN] for _, lab in train]), minlength=n).astype(np.float64)
    weights = torch.tensor((counts.sum() / counts) ** 0.5, dtype=torch.float32)
    weights = weights / weights.mean()
    net = UNet(n, a.width)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)

    def sample() -> tuple[np.ndarray, np.ndarray]:
        img, lab = random_crop(train[rng.integers(len(train))], a.crop, rng)
        strategy = rng.choice(["random", "random", "random", "blocks", "objects"])
        partial = degrade(lab, rng.uniform(0.2, 0.8), strategy, rng, patch=int(rng.choice([16, 24, 32, 48])))
        return features(img, partial, n)[0], np.where(partial == UNKNOWN, lab, UNKNOWN).astype(np.int64)

    t0, step = time.time(), 0
    while time.time() - t0 < a.minutes * 60:
        fs, ts = zip(*[sample() for _ in range(a.batch_size)])
        frac = min((time.time() - t0) / (a.minutes * 60), 1.0)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * frac))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.from_numpy(np.stack(fs)))
        loss = F.cross_entropy(out.float(), torch.from_numpy(np.stack(ts)), weight=weights, ignore_index=UNKNOWN)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} ({time.time() - t0:.0f} s): loss {loss.item():.3f}", flush=True)
    net.eval()
    partials = make_partials(val, "random", 0.5, 0, 32, info.background_index)
    m_geo, m_net = CompletionMeter(n), CompletionMeter(n)
    with torch.no_grad():
        for (img, gt), partial in zip(val, partials):
            f, geo = features(img, partial, n)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred = net(torch.from_numpy(f)[None]).float()[0].argmax(0).numpy().astype(np.uint8)
            hole = partial == UNKNOWN
            m_geo.update(np.where(hole, geo, partial), gt, partial)
            m_net.update(np.where(hole, pred, partial), gt, partial)
    print(f"{step} steps in {a.minutes:g} min; val random 0.5 PA-mIoU: geodesic fill {m_geo.summary()['pa_miou']:.2f}, "
          f"full-resolution CNN {m_net.summary()['pa_miou']:.2f}")


if __name__ == "__main__":
    main()
