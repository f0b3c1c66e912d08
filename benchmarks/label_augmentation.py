"""Label augmentation (paper IV-C): does completing degraded labels help a segmenter?

    python benchmarks/label_augmentation.py --data ../shared/data/camvid --completer runs/camvid_degraded.pt \
        --minutes 10
    python benchmarks/label_augmentation.py --smoke

The train labels are degraded (``--strategy random --ratio 0.5``, seeded per image).  A
small UNet and a small FCN (defined here, no pretrained weights) are trained from scratch at
the same budget on

  (a) ``full``    the full labels (upper bound),
  (b) ``ignore``  the degraded labels, holes ignored by the loss,
  (c) ``fill``    the degraded labels, holes set to one class (``--fill-class``, default the
                  most frequent known class),
  (d) ``lmae``    the degraded labels completed by L-MAE (``--completer``: a checkpoint or
                  bundle trained ONLY on degraded labels; ``--train-completer-minutes M``
                  trains one here on the degraded train split),

and scored by val mIoU against the full val labels (void excluded).  The completer's own
accuracy on the train holes is reported too.
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

VARIANTS = ("full", "ignore", "fill", "lmae")
UNKNOWN = 255


# --------------------------------------------------------------------------------------
# segmenters (no pretrained weights)
# --------------------------------------------------------------------------------------
def _block(cin: int, cout: int):
    from torch import nn

    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def make_unet(num_classes: int, width: int = 16):
    """3-level UNet: 3 -> w -> 2w -> 4w -> 8w bottleneck, skip connections, 1x1 head."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class SmallUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.e1, self.e2, self.e3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
            self.mid = _block(4 * w, 8 * w)
            self.d3, self.d2, self.d1 = _block(12 * w, 4 * w), _block(6 * w, 2 * w), _block(3 * w, w)
            self.head = nn.Conv2d(w, num_classes, 1)

        def forward(self, x):
            size = x.shape[-2:]
            e1 = self.e1(x)
            e2 = self.e2(F.max_pool2d(e1, 2))
            e3 = self.e3(F.max_pool2d(e2, 2))
            m = self.mid(F.max_pool2d(e3, 2))
            up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa
            d3 = self.d3(torch.cat([up(m, e3), e3], 1))
            d2 = self.d2(torch.cat([up(d3, e2), e2], 1))
            d1 = self.d1(torch.cat([up(d2, e1), e1], 1))
            return F.interpolate(self.head(d1), size=size, mode="bilinear", align_corners=False)

    return SmallUNet()


def make_fcn(num_classes: int, width: int = 16):
    """FCN-8s-style: VGG-like stages to stride 8 (+ stride 16 context), score layers fused
    at strides 16 / 8, bilinear up-sampling to the input."""
    from torch import nn
    import torch.nn.functional as F

    class SmallFCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.s1, self.s2, self.s3, self.s4 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 8 * w)
            self.score8 = nn.Conv2d(4 * w, num_classes, 1)
            self.score16 = nn.Conv2d(8 * w, num_classes, 1)

        def forward(self, x):
            size = x.shape[-2:]
            f = F.max_pool2d(self.s1(x), 2)
            f = F.max_pool2d(self.s2(f), 2)
            f8 = F.max_pool2d(self.s3(f), 2)
            f16 = F.max_pool2d(self.s4(f8), 2)
            s = F.interpolate(self.score16(f16), size=f8.shape[-2:], mode="bilinear", align_corners=False)
            s = s + self.score8(f8)
            return F.interpolate(s, size=size, mode="bilinear", align_corners=False)

    return SmallFCN()


MODELS = {"unet": make_unet, "fcn": make_fcn}


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def to_size(img: np.ndarray, lab: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from lmae_sdk.labels import IMAGENET_MEAN, IMAGENET_STD

    h, w = size
    x = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = ((x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)).transpose(2, 0, 1)
    y = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(x), y.astype(np.int64)


def train_segmenter(model_name: str, num_classes: int, images: list[np.ndarray], labels: list[np.ndarray],
                    a: argparse.Namespace, seed: int) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    net = MODELS[model_name](num_classes, a.width)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    xs, ys = zip(*[to_size(im, lb, a.size) for im, lb in zip(images, labels)])
    X, Y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    rng = np.random.default_rng(seed)
    t0, steps, epoch = time.perf_counter(), 0, 0
    net.train()
    losses = []
    while True:
        order = rng.permutation(len(X))
        for s in range(0, len(order) - a.batch_size + 1 if len(order) >= a.batch_size else 1, a.batch_size):
            idx = torch.from_numpy(order[s: s + a.batch_size])
            x, y = X[idx], Y[idx]
            if rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            loss = F.cross_entropy(net(x), y, ignore_index=UNKNOWN)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
            if a.steps and steps >= a.steps:
                break
            if not a.steps and not a.epochs and (time.perf_counter() - t0) / 60 >= a.minutes:
                break
        epoch += 1
        if a.steps and steps >= a.steps:
            break
        if a.epochs and epoch >= a.epochs:
            break
        if not a.steps and not a.epochs and (time.perf_counter() - t0) / 60 >= a.minutes:
            break
    return net.eval(), {"steps": steps, "epochs": epoch, "minutes": (time.perf_counter() - t0) / 60,
                        "final_loss": float(np.mean(losses[-10:])) if losses else None}


def evaluate_segmenter(net, val: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
                       size: tuple[int, int]) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from lmae_sdk.metrics import confusion, mean_iou, pixel_accuracy

    conf = np.zeros((num_classes, num_classes), np.int64)
    with torch.inference_mode():
        for img, gt in val:
            x, _ = to_size(img, gt, size)
            logits = net(torch.from_numpy(x)[None])
            logits = F.interpolate(logits, size=gt.shape, mode="bilinear", align_corners=False)
            pred = logits[0].argmax(0).numpy().astype(np.uint8)
            conf += confusion(pred, gt, num_classes)
    return {"miou": 100 * mean_iou(conf), "pixel_acc": 100 * pixel_accuracy(conf)}


# --------------------------------------------------------------------------------------
# the L-MAE completer trained on degraded labels only
# --------------------------------------------------------------------------------------
def degraded_dataset(root: Path, src_root: str, train_pairs, partials, class_json: Path | None) -> Path:
    """ROOT/train (images linked, partial labels written) + ROOT/val linked to the source."""
    from lmae_sdk.labels import write_label

    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "train" / "labels").mkdir(parents=True, exist_ok=True)
    for (img_p, lab_p), partial in zip(train_pairs, partials):
        dst = root / "train" / "images" / Path(img_p).name
        if not dst.exists():
            os.symlink(Path(img_p).resolve(), dst)
        write_label(root / "train" / "labels" / f"{Path(lab_p).stem}.png", partial)
    if not (root / "val").exists():
        os.symlink((Path(src_root) / "val").resolve(), root / "val")
    if class_json is not None and class_json.is_file():
        (root / "classes.json").write_text(class_json.read_text())
    return root


def train_completer(data_root: Path, out: Path, a: argparse.Namespace) -> Path:
    from lmae_sdk.training.train import TrainConfig, train

    tc = TrainConfig(data=str(data_root), out=str(out), preset=a.completer_preset, epochs=10**6,
                     time_budget_min=a.train_completer_minutes, val_every=10**9, threads=a.threads, workers=0,
                     progress=False, val_limit=a.limit_val, amp=a.amp, seed=a.seed)
    return train(tc)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--completer", default=None, help=".pt or bundle trained ONLY on degraded labels")
    ap.add_argument("--train-completer-minutes", type=float, default=0.0,
                    help="train the completer here on the degraded train split (needs no --completer)")
    ap.add_argument("--completer-preset", default="small")
    ap.add_argument("--amp", default="none", choices=("none", "bf16"), help="bf16 autocast for the completer")
    ap.add_argument("--models", default="unet,fcn")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--fill-class", type=int, default=None, help="class for holes in 'fill' (default: most frequent)")
    ap.add_argument("--size", default="192x256", help="HxW the segmenters train and predict at")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=10.0, help="budget per (model, variant)")
    ap.add_argument("--epochs", type=int, default=0, help="epoch budget instead of minutes")
    ap.add_argument("--steps", type=int, default=0, help="step budget instead of minutes")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--limit-train", type=int, default=0)
    ap.add_argument("--limit-val", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, a random tiny completer, a few steps")
    a = ap.parse_args(argv)
    a.size = tuple(int(x) for x in a.size.lower().split("x"))
    return a


def main(argv=None) -> dict[str, Any]:
    a = parse_args(argv)
    set_threads(a.threads)
    from lmae_sdk.metrics import CompletionMeter
    from lmae_sdk.degrade import degrade
    from lmae_sdk.training.data import load_pairs
    from lmae_sdk.datasets import load_dataset

    json_path, png_path = out_paths(a.out, "label_augmentation", a.smoke)
    tmp = tempfile.TemporaryDirectory(prefix="lmae-labelaug-")
    work = Path(tmp.name)
    if a.smoke:
        a.data = str(smoke_dataset(work / "data", n_train=4, n_val=2, size=(48, 64)))
        a.completer = str(random_checkpoint(work / "completer.pt", "tiny", 5, (32, 48), (0.25, 0.5, 0.75)))
        a.size, a.steps, a.batch_size, a.width, a.patch = (32, 48), 2, 2, 4, 8
        a.train_completer_minutes = 0.0
    t_start = time.perf_counter()
    payload: dict[str, Any] = {"benchmark": "label_augmentation", "smoke": a.smoke, "args": vars(a),
                               "machine": machine_info(a.threads)}
    try:
        info = load_dataset(a.data, ("train", "val"))
        n = info.num_classes
        train_pairs = info.pairs["train"][: a.limit_train or None]
        train = load_pairs(train_pairs, n)
        val = load_pairs(info.pairs["val"][: a.limit_val or None], n)
        partials = [degrade(lab, a.ratio, a.strategy, np.random.default_rng([a.seed, i]), patch=a.patch,
                            background_index=info.background_index) for i, (_, lab) in enumerate(train)]
        hole = float(np.mean([np.mean(p == UNKNOWN) for p in partials]))
        print(f"{a.data}: {len(train)} train / {len(val)} val, {n} classes; train labels degraded "
              f"{a.strategy} {a.ratio:g} (hole share {hole:.2f})", flush=True)
        variants = [v for v in a.variants.split(",") if v]
        labels: dict[str, list[np.ndarray]] = {}
        notes: dict[str, str] = {}
        if "full" in variants:
            labels["full"] = [lab for _, lab in train]
        if "ignore" in variants:
            labels["ignore"] = partials
        if "fill" in variants:
            freq = np.bincount(np.concatenate([p[p != UNKNOWN].ravel() for p in partials]), minlength=n)[:n]
            fc = int(a.fill_class) if a.fill_class is not None else int(freq.argmax())
            labels["fill"] = [np.where(p == UNKNOWN, fc, p).astype(np.uint8) for p in partials]
            notes["fill"] = f"holes set to class {fc} ({info.class_names[fc]})"
        completion = None
        if "lmae" in variants:
            ck = a.completer
            if not ck and a.train_completer_minutes > 0:
                root = degraded_dataset(work / "degraded", a.data, train_pairs, partials,
                                        Path(a.data) / "classes.json")
                print(f"training the completer on degraded labels only ({a.train_completer_minutes:g} min)",
                      flush=True)
                ck = str(train_completer(root, work / "completer_degraded.pt", a))
            if not ck:
                notes["lmae"] = "skipped: no --completer and no --train-completer-minutes"
                print(notes["lmae"], flush=True)
            else:
                from lmae_sdk.runtime.completer import LMAECompleter

                c = LMAECompleter.load(ck, threads=a.threads)
                t0 = time.perf_counter()
                res = list(c.complete_batch([(img, p) for (img, _), p in zip(train, partials)], batch_size=8,
                                            workers=max(1, a.threads)))
                secs = time.perf_counter() - t0
                labels["lmae"] = [r.label for r in res]
                meter = CompletionMeter(n)
                for (_, gt), p, lab in zip(train, partials, labels["lmae"]):
                    meter.update(lab, gt, p)
                s = meter.summary(info.class_names)
                completion = {"completer": ck, "pa_miou": s["pa_miou"], "pa_pixel_acc": s["pa_pixel_acc"],
                              "global_miou": s["global_miou"], "seconds_per_image": secs / max(len(train), 1)}
                notes["lmae"] = f"completed by {Path(ck).name}: train-hole PA-mIoU {s['pa_miou']:.1f}"
                print(notes["lmae"], flush=True)
        payload["completion_on_train_holes"] = completion
        payload["variant_notes"] = notes

        rows = []
        for model in [m for m in a.models.split(",") if m]:
            for v in [v for v in VARIANTS if v in labels]:
                net, tr = train_segmenter(model, n, [img for img, _ in train], labels[v], a, a.seed)
                ev = evaluate_segmenter(net, val, n, a.size)
                rows.append({"model": model, "variant": v, "val_miou": ev["miou"], "val_pixel_acc": ev["pixel_acc"],
                             **tr, "note": notes.get(v)})
                print(f"  {model:>5} {v:>7}: val mIoU {ev['miou']:6.2f}  acc {ev['pixel_acc']:6.2f}  "
                      f"({tr['steps']} steps, {tr['minutes']:.1f} min)", flush=True)
        for r in rows:  # gain over the degraded baselines, per model
            ref = {x["variant"]: x["val_miou"] for x in rows if x["model"] == r["model"]}
            r["vs_ignore"] = r["val_miou"] - ref["ignore"] if "ignore" in ref else None
        payload.update({"results": rows, "seconds": time.perf_counter() - t_start,
                        "dataset": {"root": a.data, "train": len(train), "val": len(val), "hole_share": hole}})
    finally:
        tmp.cleanup()

    m = payload["machine"]
    budget = f"{a.steps} steps" if a.steps else (f"{a.epochs} epochs" if a.epochs else f"{a.minutes:g} min")
    print(f"\nlabel augmentation: {budget} per run at {a.size[0]}x{a.size[1]}; {m['cpu_model']}, "
          f"{m['cpu_affinity']} cores, threads {a.threads}; {m['date']}")
    cols = [("model", "model"), ("variant", "labels"), ("val_miou", "val mIoU"), ("val_pixel_acc", "val acc"),
            ("vs_ignore", "vs ignore"), ("steps", "steps"), ("minutes", "min")]
    print(table(payload["results"], cols))
    write_json(json_path, payload)
    print(f"\nwrote {json_path}")
    if not a.no_plot and plot_available() and payload["results"]:
        rows = payload["results"]
        models = list(dict.fromkeys(r["model"] for r in rows))
        vs = list(dict.fromkeys(r["variant"] for r in rows))
        fig, axes = new_figure(1, 6.0, 4.0)
        ax = axes[0]
        x = np.arange(len(models))
        w = 0.8 / len(vs)
        for i, v in enumerate(vs):
            ax.bar(x + i * w, [next((r["val_miou"] for r in rows if r["model"] == mo and r["variant"] == v), np.nan)
                               for mo in models], w, label=v)
        ax.set_xticks(x + w * (len(vs) - 1) / 2, models)
        ax.set_ylabel("val mIoU")
        ax.legend(fontsize=8)
        ax.set_title(f"segmenters trained on full / degraded / completed labels ({budget})")
        save_figure(fig, png_path)
        print(f"wrote {png_path}")
    return payload


if __name__ == "__main__":
    main()
