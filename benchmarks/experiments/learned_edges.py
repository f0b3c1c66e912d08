"""One-off research check (session 5): does a learned class-boundary map make geodesic
propagation place boundaries better than colour change alone?  Not a benchmark (no smoke
mode, not run by CI); kept so its figures in benchmarks/RESULTS.md have a command.

    python benchmarks/experiments/learned_edges.py --minutes 35 --width 16

A 4-level UNet on RGB at input resolution predicts, per pixel, the probability that its
right / lower neighbour has another class (BCE on CamVid train labels, 192x192 crops,
AdamW + cosine, bf16 autocast, 1 thread).  The geodesic step cost becomes
1 + colour_weight * |colour change| + edge_weight * p(boundary); both weights are chosen on
80 train images, then the geodesic fill is scored on val at 50% random holes next to the
colour-only fill with the SDK's tuned step costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID  # noqa: E402
from benchmarks.experiments._parts import UNet4, random_crop  # noqa: E402
from benchmarks.quality import load_split, make_partials  # noqa: E402
from lmae_sdk.boundaries import boundary_targets  # noqa: E402
from lmae_sdk.labels import (IMAGENET_MEAN, IMAGENET_STD, TUNED_BLUR, TUNED_EDGE_WEIGHT, UNKNOWN,  # noqa: E402
                             _compiled_sweeps, _step_costs)
from lmae_sdk.metrics import CompletionMeter  # noqa: E402


class EdgeNet(UNet4):
    """RGB (B, 3, H, W) -> (B, 2, H, W) logits: boundary to the right / below."""

    def __init__(self, w: int) -> None:
        super().__init__(3, 2, w)


def normalized(img: np.ndarray) -> np.ndarray:
    x = (img.astype(np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return x.transpose(2, 0, 1)


def edge_map(net: EdgeNet, img: np.ndarray) -> np.ndarray:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.sigmoid(net(torch.from_numpy(normalized(img))[None]).float())[0].numpy()


def fill(img: np.ndarray, edges: np.ndarray | None, partial: np.ndarray, colour_weight: float,
         edge_weight: float) -> np.ndarray:
    step_x, step_y = _step_costs(img, colour_weight, TUNED_BLUR)
    if edges is not None:
        step_x[:, 1:] += edge_weight * edges[0, :, :-1]
        step_y[1:] += edge_weight * edges[1, :-1]
    dist = np.where(partial == UNKNOWN, np.float32(1e9), np.float32(0))
    ids = partial.copy()
    _compiled_sweeps()(dist, ids, step_x, step_y, 2)
    return ids


def score(data, partials, edges, colour_weight: float, edge_weight: float, n: int) -> float:
    meter = CompletionMeter(n)
    for (img, gt), partial, e in zip(data, partials, edges):
        meter.update(fill(img, e, partial, colour_weight, edge_weight), gt, partial)
    return meter.summary()["pa_miou"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--minutes", type=float, default=35.0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tune-images", type=int, default=80)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    train, info = load_split(a.data, "train", 0)
    val, _ = load_split(a.data, "val", 0)
    n = info.num_classes
    net = EdgeNet(a.width)
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)

    def sample() -> tuple[np.ndarray, np.ndarray]:
        img, lab = random_crop(train[rng.integers(len(train))], a.crop, rng)
        return normalized(img), boundary_targets(lab)

    t0, step = time.time(), 0
    while time.time() - t0 < a.minutes * 60:
        xs, ts = zip(*[sample() for _ in range(a.batch_size)])
        for g in opt.param_groups:
            g["lr"] = 3e-3 * 0.5 * (1 + np.cos(np.pi * min((time.time() - t0) / (a.minutes * 60), 1.0)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.from_numpy(np.stack(xs))).float()
        t = torch.from_numpy(np.stack(ts))
        valid = t >= 0
        # boundaries are ~5% of pixel pairs: weight them up so the map is not all "no edge"
        loss = F.binary_cross_entropy_with_logits(out[valid], t[valid], pos_weight=torch.tensor(4.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} ({time.time() - t0:.0f} s): loss {loss.item():.4f}", flush=True)
    net.eval()
    tune = train[: a.tune_images]
    tune_partials = make_partials(tune, "random", 0.5, 0, 32, info.background_index)
    tune_edges = [edge_map(net, img) for img, _ in tune]
    grid = [(cw, ew) for cw in (300.0, 1000.0) for ew in (300.0, 1000.0, 3000.0)]
    tuned = {g: score(tune, tune_partials, tune_edges, *g, n) for g in grid}
    for (cw, ew), s in tuned.items():
        print(f"train ({a.tune_images} images) colour weight {cw:g}, edge weight {ew:g}: PA-mIoU {s:.2f}")
    cw, ew = max(tuned, key=tuned.get)
    partials = make_partials(val, "random", 0.5, 0, 32, info.background_index)
    t1 = time.perf_counter()
    edges = [edge_map(net, img) for img, _ in val]
    secs = (time.perf_counter() - t1) / len(val)
    base = score(val, partials, [None] * len(val), TUNED_EDGE_WEIGHT, 0.0, n)
    learned = score(val, partials, edges, cw, ew, n)
    print(f"{step} steps in {a.minutes:g} min; val random 0.5 PA-mIoU: colour-only geodesic fill {base:.2f}, "
          f"with learned edges (colour {cw:g}, edge {ew:g}) {learned:.2f}; edge map {secs:.3f} s/img (1 thread)")


if __name__ == "__main__":
    main()
