"""``lmae`` command line: train, degrade, evaluate, complete, export, demo, visualize."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from lmae_sdk.degrade import DEGRADE_STRATEGIES


def _parse_size(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{s!r}: expected HxW, e.g. 224x288") from None
    return h, w


def _parse_ratios(s: str) -> list[tuple[float, ...]]:
    """'0.5' -> one model; '0.5,0.7' -> one model per ratio; 'LO:HI[:STEP]' -> one model
    over LO, LO + STEP, ..., HI (STEP 0.1 by default; a range model, exported later at
    several K)."""
    out = []
    for part in s.split(","):
        part = part.strip()
        try:
            if ":" in part:
                lo, hi, *rest = (float(v) for v in part.split(":"))
                step = rest[0] if rest else 0.1
                if len(rest) > 1 or step <= 0 or hi < lo:
                    raise ValueError
                out.append(tuple(round(float(v), 3) for v in np.arange(lo, hi + 1e-9, step)))
            else:
                out.append((float(part),))
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected a ratio (0.5) or a range LO:HI[:STEP] (0.25:0.75:0.25)") \
                from None
    for r in out:
        if not all(0 < v < 1 for v in r):
            raise click.BadParameter(f"mask ratios must be in (0, 1): {s}")
    return out


def _parse_mix(s: str | None, names: tuple[str, ...] | None = None) -> dict[str, float] | None:
    if not s:
        return None
    from lmae_sdk.masking import STRATEGIES

    names = names or STRATEGIES
    out = {}
    for part in s.split(","):
        name, _, w = part.partition("=")
        if name.strip() not in names or not w:
            raise click.BadParameter(f"{part!r}: expected NAME=WEIGHT with NAME in {names}")
        out[name.strip()] = float(w)
    return out


def _parse_settings(s: str) -> tuple[tuple[str, float], ...]:
    """"random:0.5,objects:0.5" -> ((strategy, ratio), ...)."""
    settings = []
    for part in filter(None, s.split(",")):
        strategy, _, ratio = part.partition(":")
        if strategy not in DEGRADE_STRATEGIES:
            raise click.BadParameter(f"{strategy!r} is not one of {DEGRADE_STRATEGIES}", param_hint="--setting")
        settings.append((strategy, float(ratio or 0.5)))
    return tuple(settings)


@click.group()
@click.version_option(package_name="lmae-sdk")
def main() -> None:
    """L-MAE label completion: train, export, complete."""


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset root")
@click.option("--out", required=True, help="checkpoint path, e.g. camvid_m0.5.pt ({ratio} is filled in)")
@click.option("--mask-ratio", "mask_ratio", default="0.25:0.75:0.25", show_default=True,
              help="LO:HI[:STEP] one model over a ratio range (the default: it matched or beat the per-ratio "
                   "model on CamVid, see benchmarks/RESULTS.md) | 0.5 | 0.5,0.7 (one checkpoint each)")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["tiny", "small", "base", "paper"]))
@click.option("--epochs", default=30, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--optimizer", default="adamw-cosine", show_default=True, type=click.Choice(["adamw-cosine", "adam-plateau"]))
@click.option("--image-size", default="224x288", show_default=True, help="model input HxW, multiples of 16")
@click.option("--holes", default="mixed", show_default=True, type=click.Choice(["mixed", "none"]),
              help="mixed: realistic partial labels; none: the paper's (masked patches only)")
@click.option("--mask-mix", default=None, help="e.g. random=1,label_first=2,background_first=2 (the default)")
@click.option("--hole-mix", default=None,
              help="training partial labels (default random=0.4,blocks=0.15,objects=0.25,background=0.1,label=0.1)")
@click.option("--class-weighting/--no-class-weighting", default=True, show_default=True,
              help="the paper's class-weighted cross-entropy")
@click.option("--label-resize", default="soft", show_default=True, type=click.Choice(["soft", "nearest"]))
@click.option("--fuse", default=None, type=click.Choice(["layer", "concat", "insert"]))
@click.option("--no-ips", is_flag=True, help="learned mask token instead of Image Patch Supplement")
@click.option("--no-prior", is_flag=True, help="no propagation planes (the paper's input)")
@click.option("--prior-mode", default=None, type=click.Choice(["euclidean", "geodesic"]),
              help="propagation for the prior planes: nearest along image paths (the presets' default) "
                   "or nearest known pixel (cheaper on the host)")
@click.option("--refine-width", default=None, type=int, help="0 disables the refinement stage")
@click.option("--refine-arch", default=None, type=click.Choice(["plain", "unet"]))
@click.option("--init-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="warm start from a checkpoint (tensors whose name and shape match)")
@click.option("--boundaries-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="a checkpoint with a boundary net (lmae fit-boundaries): the prior uses its class boundaries")
@click.option("--amp", default="none", show_default=True, type=click.Choice(["none", "bf16"]),
              help="bf16 autocast for training (about 2.5x faster on CPUs with AVX512-BF16)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", default=0, type=int, help="torch threads (0 = default)")
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--time-budget-min", default=0.0, type=float, help="stop after this many minutes")
@click.option("--val-limit", default=0, type=int, help="validate on the first N val pairs (0 = all)")
@click.option("--val-every", default=1, type=int)
@click.option("--resume", is_flag=True, help="continue from <out>.last.pt")
@click.option("--layout", default="auto", type=click.Choice(["auto", "folder", "voc", "cityscapes"]))
def train(**kw) -> None:
    """Train one checkpoint per mask ratio (or one over a ratio range)."""
    from lmae_sdk.training.train import TrainConfig
    from lmae_sdk.training.train import train as run

    overrides = {}
    if kw["fuse"]:
        overrides["fuse"] = kw["fuse"]
    if kw["no_ips"]:
        overrides["ips"] = False
    if kw["no_prior"]:
        overrides["prior"] = False
    if kw["prior_mode"]:
        overrides["prior_mode"] = kw["prior_mode"]
    if kw["refine_width"] is not None:
        overrides["refine_width"] = kw["refine_width"]
    if kw["refine_arch"]:
        overrides["refine_arch"] = kw["refine_arch"]
    groups = _parse_ratios(kw["mask_ratio"])
    for ratios in groups:
        out = kw["out"]
        if len(groups) > 1:
            tag = f"m{ratios[0]}"
            out = out.replace("{ratio}", tag) if "{ratio}" in out else str(Path(out).with_suffix("")) + f"_{tag}.pt"
        tc = TrainConfig(data=kw["data"], out=out, mask_ratios=ratios, preset=kw["preset"], epochs=kw["epochs"],
                         batch_size=kw["batch_size"], lr=kw["lr"], optimizer=kw["optimizer"],
                         image_size=_parse_size(kw["image_size"]), holes=kw["holes"],
                         label_resize=kw["label_resize"], mask_mix=_parse_mix(kw["mask_mix"]),
                         hole_mix=_parse_mix(kw["hole_mix"], DEGRADE_STRATEGIES),
                         class_weighting=kw["class_weighting"], device=kw["device"], threads=kw["threads"],
                         workers=kw["workers"], seed=kw["seed"], time_budget_min=kw["time_budget_min"],
                         val_limit=kw["val_limit"], val_every=kw["val_every"], resume=kw["resume"],
                         layout=kw["layout"], model_overrides=overrides, init_from=kw["init_from"],
                         amp=kw["amp"], boundaries_from=kw["boundaries_from"])
        path = run(tc)
        click.echo(f"best checkpoint: {path}")


@main.command()
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset with a val split")
@click.option("--out", default=None, help="write the calibrated checkpoint here (default: in place, atomically)")
@click.option("--thresholds", default="0.25,0.5,0.75,0.95", show_default=True)
@click.option("--near-copy", default="0,2,4,8,12,16,24,32", show_default=True,
              help="near_copy_px values (input pixels)")
@click.option("--near-copy-min-prob", default="0,0.05,0.1,0.2,0.3", show_default=True,
              help="near_copy_min_prob values: copy only where the model gives the copied class this probability")
@click.option("--setting", default="random:0.5,objects:0.5", show_default=True,
              help="degrade STRATEGY:RATIO[,...] for the val labels; the rule maximises the mean PA-mIoU")
@click.option("--limit", default=0, type=int, help="first N val pairs (0 = all)")
@click.option("--threads", default=0, type=int)
def calibrate(ckpt: str, data: str, out: str | None, thresholds: str, near_copy: str, near_copy_min_prob: str,
              setting: str, limit: int, threads: int) -> None:
    """Choose the routing threshold and near-copy rule on val; store them in the checkpoint."""
    from lmae_sdk.training.calibrate import calibrate as run

    run(ckpt, data, out, tuple(float(v) for v in thresholds.split(",")),
        tuple(float(v) for v in near_copy.split(",")), tuple(float(v) for v in near_copy_min_prob.split(",")),
        _parse_settings(setting), limit, threads, log=click.echo)


@main.command("fit-boundaries")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset root")
@click.option("--split", default="train", show_default=True, help="the split the net learns and the weights are tuned on")
@click.option("--out", default=None, help="write the checkpoint with the boundary net here (default: in place)")
@click.option("--minutes", default=40.0, show_default=True, type=float, help="training time budget")
@click.option("--steps", default=0, type=int, help="train this many steps instead of --minutes")
@click.option("--width", default=16, show_default=True, type=int, help="the UNet's base width")
@click.option("--crop", default=256, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=3e-3, show_default=True, type=float, help="peak learning rate (cosine to 0)")
@click.option("--continue-net", is_flag=True,
              help="start from the checkpoint's boundary net: a second cycle (--minutes 0: retune the weights only)")
@click.option("--flip-average", is_flag=True,
              help="the map averages the image with its mirror image: better boundaries, twice the net's compute")
@click.option("--augment", is_flag=True, help="random rescaling (0.7-1.4x) and colour jitter of the training crops")
@click.option("--tune-images", default=80, show_default=True, type=int,
              help="first N images of the split for choosing the step-cost weights")
@click.option("--weight-grid", default=None, metavar="COLOUR:BOUNDARY[:POWER],...",
              help="step costs to choose from: colour weight, boundary weight and the map's power (default "
                   "1); the default grid: 300 and 1000 x 1000, 3000 and 10000 x powers 1 and 2")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, type=int)
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast while training")
def fit_boundaries(ckpt: str, data: str, split: str, out: str | None, minutes: float, steps: int, width: int,
                   crop: int, batch_size: int, lr: float, continue_net: bool, flip_average: bool, augment: bool,
                   tune_images: int, weight_grid: str | None, seed: int, threads: int, bf16: bool) -> None:
    """Fit a class-boundary net for the geodesic step cost and store it in the checkpoint;
    then fine-tune (lmae train --init-from CKPT --boundaries-from CKPT) and refit fusion."""
    from lmae_sdk.training.boundary_fit import DEFAULT_WEIGHT_GRID, fit_boundaries as run

    try:
        grid = tuple(tuple(float(v) for v in pair.split(":")) for pair in weight_grid.split(",")) \
            if weight_grid else DEFAULT_WEIGHT_GRID
    except ValueError:
        raise click.BadParameter(f"{weight_grid!r}: expected COLOUR:BOUNDARY[:POWER][,...], e.g. 1000:3000:2",
                                 param_hint="--weight-grid") from None
    if any(len(entry) not in (2, 3) or min(entry) <= 0 for entry in grid):
        raise click.BadParameter(f"{weight_grid!r}: expected COLOUR:BOUNDARY[:POWER][,...], all positive",
                                 param_hint="--weight-grid")
    run(ckpt, data, out, split, minutes, steps, width, crop, batch_size, lr, tune_images=tune_images,
        weight_grid=grid, seed=seed, threads=threads, bf16=bf16, continue_net=continue_net,
        flip_average=flip_average, augment=augment, log=click.echo)


@main.command("fit-fusion")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset root")
@click.option("--split", default="train", show_default=True, help="the split whose labels are degraded and completed")
@click.option("--out", default=None, help="write the checkpoint with pixel fusion here (default: in place, atomically)")
@click.option("--setting", default="random:0.5,objects:0.5,blocks:0.5,random:0.3,random:0.7", show_default=True,
              help="degrade STRATEGY:RATIO[,...]; image i gets setting i mod count")
@click.option("--images", default=0, type=int, help="first N pairs of the split (0 = all)")
@click.option("--per-image", default=6000, show_default=True, type=int, help="hole pixels sampled per image")
@click.option("--hidden", default=32, show_default=True, type=int, help="the MLP's width")
@click.option("--steps", default=4000, show_default=True, type=int)
@click.option("--class-weight-power", default=0.25, show_default=True, type=float,
              help="class weights (total / count) ** power: rare classes count more as it grows")
@click.option("--hole-features/--no-hole-features", default=None,
              help="features of the pixel's hole (default: when the checkpoint has a boundary net)")
@click.option("--line-features/--no-line-features", default=None,
              help="also straight-line votes up/down and left/right, for thin structures (format 3; default: with "
                   "the hole features)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, type=int)
def fit_fusion(ckpt: str, data: str, split: str, out: str | None, setting: str, images: int, per_image: int,
               hidden: int, steps: int, class_weight_power: float, hole_features: bool | None,
               line_features: bool | None, seed: int, threads: int) -> None:
    """Fit pixel fusion (model probability x per-class geodesic cost, per hole pixel) and
    store it in the checkpoint; run before calibrate and export."""
    from lmae_sdk.training.fusion_fit import fit_fusion as run

    run(ckpt, data, out, split, _parse_settings(setting), images, per_image, hidden, steps, class_weight_power,
        seed=seed, threads=threads, hole_features=hole_features, line_features=line_features, log=click.echo)


@main.command()
@click.option("--labels", "labels_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--ratio", default=0.5, show_default=True, type=float)
@click.option("--strategy", default="random", show_default=True,
              type=click.Choice(["random", "background", "label", "blocks", "objects"]))
@click.option("--patch", default=32, show_default=True, type=int, help="grid patch size in pixels")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True)
def degrade(labels_dir: str, out: str, ratio: float, strategy: str, patch: int, seed: int, overwrite: bool) -> None:
    """Write partial labels (unknown = 255); the inputs are never touched."""
    from lmae_sdk.degrade import degrade as make_partial
    from lmae_sdk.labels import InputError, read_label, write_label

    src, dst = Path(labels_dir).resolve(), Path(out).resolve()
    if src == dst:
        raise click.UsageError("--out must differ from --labels (inputs are never modified)")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png")
    failed, written = [], 0
    for i, f in enumerate(files):
        target = dst / f.name
        if target.exists() and not overwrite:
            continue
        try:
            lab, palette = read_label(f)
        except InputError as e:
            failed.append(str(e))
            click.echo(f"skip: {e}", err=True)
            continue
        # seed per file name: the same partial label whatever the folder's other files
        rng = np.random.default_rng([seed, int.from_bytes(f.stem.encode()[:8].ljust(8, b"\0"), "little")])
        write_label(target, make_partial(lab, ratio, strategy, rng, patch=patch), palette)
        written += 1
    click.echo(f"degraded {written} labels ({strategy}, ratio {ratio}) into {dst}; {len(failed)} failed")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--pred", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--gt", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--partial", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--classes", "classes_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="classes.json (default: looked up above --gt)")
@click.option("--num-classes", default=None, type=int)
@click.option("--json-out", default=None, type=click.Path(dir_okay=False))
def evaluate(pred: str, gt: str, partial: str, classes_json: str | None, num_classes: int | None,
             json_out: str | None) -> None:
    """PA-mIoU (pixels unknown in the partial label), global mIoU, per-class IoU."""
    from lmae_sdk.labels import atomic_write_bytes, read_label
    from lmae_sdk.metrics import CompletionMeter

    names = None
    cj = Path(classes_json) if classes_json else next(
        (p / "classes.json" for p in Path(gt).resolve().parents if (p / "classes.json").is_file()), None)
    if cj is not None and cj.is_file():
        names = json.loads(cj.read_text()).get("classes")
    n = num_classes or (len(names) if names else None)
    if n is None:
        raise click.UsageError("give --num-classes or --classes classes.json")
    meter = CompletionMeter(n)
    gt_files = sorted(p for p in Path(gt).iterdir() if p.suffix.lower() == ".png")
    missing = []
    for g in gt_files:
        pf, qf = Path(pred) / g.name, Path(partial) / g.name
        if not pf.is_file() or not qf.is_file():
            missing.append(g.name)
            continue
        meter.update(read_label(pf)[0], read_label(g)[0], read_label(qf)[0])
    s = meter.summary(names)
    s["images"] = len(gt_files) - len(missing)
    s["missing"] = missing
    click.echo(f"images {s['images']}  PA-mIoU {s['pa_miou']:.2f}  PA pixel acc {s['pa_pixel_acc']:.2f}  "
               f"global mIoU {s['global_miou']:.2f}")
    for k, v in s["pa_iou_per_class"].items():
        click.echo(f"  {k:>12s}: {'-' if v is None else f'{v:.1f}'}")
    if missing:
        click.echo(f"{len(missing)} GT labels had no prediction or partial label, e.g. {missing[:3]}", err=True)
    if json_out:
        atomic_write_bytes(json_out, json.dumps(s, indent=1).encode())



# ======================================================================================
# runtime commands: complete, demo, visualize
# ======================================================================================
def _clean_stray_temps(folder: Path) -> int:
    """Remove temp files an interrupted run left (labels.atomic_write_bytes names them
    ``.<name>.<random>.tmp``); finished outputs are only ever renamed into place."""
    n = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


def _confidence_png(conf: np.ndarray) -> bytes:
    from lmae_sdk.labels import encode_png

    return encode_png(np.clip(np.round(conf * 255.0), 0, 255).astype(np.uint8))


def _auto_lanes(backend: str, device: str | None, threads: int) -> tuple[int, int]:
    """(lanes, engine threads) for ``--lanes 0``: on a CPU every core completes its own batches
    (1.13-1.18x the throughput of one engine over both cores for ``small`` on 2 cores,
    benchmarks/RESULTS.md section 1); with a GPU, one lane whose workers prepare while the GPU
    runs."""
    from lmae_sdk.runtime.backends import ort_cuda_available, trt_available
    from lmae_sdk.runtime.completer import _cuda_available

    on_gpu = (device or "").startswith("cuda") or (device is None and (
        (backend in ("auto", "tensorrt") and trt_available())
        or (backend in ("auto", "onnxruntime") and ort_cuda_available())
        or (backend in ("auto", "torch") and _cuda_available())))
    if on_gpu:
        return 1, threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or 1
    return max(1, cores // threads), threads


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="a bundle folder (manifest.json) or a .pt checkpoint")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--labels", "labels_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="partial labels (PNG, unknown = --unknown-index)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]))
@click.option("--device", default=None, help="cpu | cuda | cuda:N (default: what the backend picks)")
@click.option("--precision", default=None, type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--threads", default=0, type=int, help="inference threads (0 = all cores)")
@click.option("--workers", default=2, show_default=True, type=int, help="pre/post-processing threads (one lane)")
@click.option("--lanes", default=0, show_default=True, type=int,
              help="batches completed side by side, each on its own thread from reading to writing (0 = auto: "
                   "one per core with one engine thread each on a CPU, 1 with a GPU)")
@click.option("--unknown-index", default=255, show_default=True, type=int)
@click.option("--confidence-dir", default=None, type=click.Path(file_okay=False),
              help="also write per-pixel confidence (8-bit PNG, 255 = 1.0)")
@click.option("--min-confidence", default=0.0, show_default=True, type=float,
              help="leave filled pixels below this confidence unknown")
@click.option("--mask-ratios", default=None, help="use only these engines, e.g. 0.5,0.7 (a .pt: run it at these ratios)")
@click.option("--tile", is_flag=True, help="overlapping model-size windows for large images")
@click.option("--no-fusion", is_flag=True, help="ignore the model's pixel fusion (faster host work, lower quality)")
@click.option("--overwrite", is_flag=True, help="redo files already in --out")
@click.option("--quiet", is_flag=True, help="no progress bar")
def complete(model_path: str, images: str, labels_dir: str, out: str, backend: str, device: str | None,
             precision: str | None, batch_size: int, threads: int, workers: int, lanes: int, unknown_index: int,
             confidence_dir: str | None, min_confidence: float, mask_ratios: str | None, tile: bool, no_fusion: bool,
             overwrite: bool, quiet: bool) -> None:
    """Fill the unknown pixels of every partial label in --labels; one PNG each in --out."""
    import logging
    import time
    from collections import Counter

    from tqdm import tqdm

    from lmae_sdk.bundle import BundleError
    from lmae_sdk.checkpoint import CheckpointError
    from lmae_sdk.labels import atomic_write_bytes, write_label
    from lmae_sdk.runtime.backends import BackendError
    from lmae_sdk.runtime.completer import LMAECompleter
    from lmae_sdk.runtime.pipelines import folder_pairs

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    src_img, src_lab, dst = Path(images).resolve(), Path(labels_dir).resolve(), Path(out).resolve()
    conf_dst = Path(confidence_dir).resolve() if confidence_dir else None
    if dst in (src_img, src_lab) or (conf_dst is not None and conf_dst in (src_img, src_lab, dst)):
        raise click.UsageError("--out / --confidence-dir must differ from the inputs (inputs are never modified)")
    if lanes < 0:
        raise click.BadParameter("must be >= 0", param_hint="--lanes")
    if lanes == 0:
        lanes, threads = _auto_lanes(backend, device, threads)
    try:
        completer = LMAECompleter.load(model_path, backend=backend, device=device, threads=threads,
                                       precision=precision, unknown_index=unknown_index,
                                       mask_ratios=[float(v) for v in mask_ratios.split(",")] if mask_ratios else None,
                                       pixel_fusion=not no_fusion)
    except (BundleError, CheckpointError, BackendError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"model: {completer.describe()}" + (f", {lanes} lanes" if lanes > 1 else ""), err=True)
    dst.mkdir(parents=True, exist_ok=True)
    stray = _clean_stray_temps(dst) + (_clean_stray_temps(conf_dst) if conf_dst else 0)
    if conf_dst:
        conf_dst.mkdir(parents=True, exist_ok=True)

    failed: dict[str, str] = {}
    todo, skipped = [], 0
    for img, lab, stem in folder_pairs(src_img, src_lab):
        if img is None:
            failed[lab.name] = f"no image named {stem}.* in {src_img}"
            continue
        done = (dst / f"{stem}.png").is_file() and (conf_dst is None or (conf_dst / f"{stem}.png").is_file())
        if done and not overwrite:
            skipped += 1
            continue
        todo.append((img, lab, stem))

    engine_use: Counter = Counter()
    filled = unreliable = multipass = done_n = 0
    t0 = time.time()
    bar = tqdm(total=len(todo), desc="complete", unit="img", disable=quiet, file=sys.stderr)

    def save(r) -> None:  # on the worker threads, while the model runs the next images
        if conf_dst is not None:  # the label is written last: its presence marks the file finished
            atomic_write_bytes(conf_dst / f"{r.name}.png", _confidence_png(r.confidence))
        write_label(dst / f"{r.name}.png", r.label, r.palette)

    for r in completer.complete_batch(todo, batch_size=batch_size, min_confidence=min_confidence, tile=tile,
                                      workers=workers, on_error="return", on_result=save, lanes=lanes,
                                      confidence=conf_dst is not None):
        bar.update(1)
        stem = r.name
        if not r.ok:
            failed[f"{stem}.png"] = str(r.error)
            bar.write(f"failed: {r.error}", file=sys.stderr)
            continue
        done_n += 1
        engine_use[f"m{r.mask_ratio:g}"] += 1
        multipass += r.passes > 1
        filled += r.filled
        unreliable += r.unreliable
    bar.close()
    secs = time.time() - t0
    report = {
        "model": str(Path(model_path).resolve()), "backend": completer.backend_name,
        "providers": completer.providers, "mask_ratios": completer.mask_ratios,
        "images_completed": done_n, "images_skipped": skipped, "images_failed": len(failed),
        "pixels_filled": filled, "pixels_left_unknown": unreliable, "min_confidence": min_confidence,
        "engine_use": dict(sorted(engine_use.items())), "multi_pass_images": multipass, "tile": tile,
        "lanes": lanes, "engine_threads": threads,
        "seconds": round(secs, 3), "images_per_s": round(done_n / secs, 3) if secs > 0 and done_n else 0.0,
        "stray_temp_files_removed": stray, "failures": failed,
    }
    atomic_write_bytes(dst / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    click.echo(f"completed {done_n} images ({skipped} already done, {len(failed)} failed) in {secs:.1f}s "
               f"[{report['images_per_s']:.2f} img/s]; {filled} pixels filled"
               + (f", {unreliable} left unknown (< {min_confidence})" if min_confidence > 0 else "")
               + f"; engines {report['engine_use']}" + (f", {multipass} in several passes" if multipass else ""))
    for name, why in failed.items():
        click.echo(f"  FAILED {name}: {why}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@click.option("--workdir", default="lmae-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=12, show_default=True, type=int)
@click.option("--train-images", default=64, show_default=True, type=int)
@click.option("--val-images", default=16, show_default=True, type=int)
@click.option("--time-budget-min", default=1.25, show_default=True, type=float, help="training time cap")
@click.option("--threads", default=2, show_default=True, type=int)
def demo(workdir: str, epochs: int, train_images: int, val_images: int, time_budget_min: float,
         threads: int) -> None:
    """Synthetic data -> train a tiny model -> ONNX bundle -> complete 50%-degraded labels
    with ONNX Runtime -> PA-mIoU next to nearest-known-label fill."""
    import time

    from lmae_sdk.degrade import degrade as make_partial
    from lmae_sdk.labels import nearest_known, read_label, write_label
    from lmae_sdk.metrics import CompletionMeter
    from lmae_sdk.runtime.completer import LMAECompleter
    from lmae_sdk.runtime.pipelines import folder_pairs
    from lmae_sdk.synthetic import SYNTH_CLASSES, make_synthetic_dataset
    from lmae_sdk.training.train import TrainConfig
    from lmae_sdk.training.train import train as run_train

    try:
        from lmae_sdk.export import export_bundle
    except ImportError as e:
        raise click.ClickException(f"the export package is unavailable ({e}); pip install 'lmae-sdk[cpu]'") from None

    t_all = time.time()
    root = Path(workdir).resolve()
    data = root / "data"
    click.echo(f"[1/5] synthetic dataset -> {data}")
    make_synthetic_dataset(data, n_train=train_images, n_val=val_images, size=(96, 128))
    ckpt = root / "demo_tiny.pt"
    click.echo(f"[2/5] training a tiny L-MAE (<= {time_budget_min:g} min on {threads} threads)")
    t = time.time()
    tc = TrainConfig(data=str(data), out=str(ckpt), mask_ratios=(0.5, 0.7), preset="tiny", image_size=(64, 96),
                     epochs=epochs, batch_size=8, lr=2e-3, workers=0, threads=threads,
                     time_budget_min=time_budget_min, val_every=max(epochs, 1), progress=False)
    best = run_train(tc)
    click.echo(f"      trained in {time.time() - t:.0f}s -> {best}")
    bundle = root / "bundle"
    click.echo(f"[3/5] exporting ONNX engines -> {bundle}")
    import logging

    for name in ("torch.onnx", "onnxscript", "onnx_ir"):  # the exporter's chatter is not the demo's
        logging.getLogger(name).setLevel(logging.ERROR)
    t = time.time()
    export_bundle([best], bundle)
    click.echo(f"      exported in {time.time() - t:.0f}s")
    partial_dir, out_dir = root / "partial", root / "completed"
    click.echo(f"[4/5] degrading val labels (50% random patches) -> {partial_dir}")
    gt_dir = data / "val" / "labels"
    for f in sorted(gt_dir.glob("*.png")):
        lab, pal = read_label(f)
        rng = np.random.default_rng([0, int.from_bytes(f.stem.encode()[:8].ljust(8, b"\0"), "little")])
        write_label(partial_dir / f.name, make_partial(lab, 0.5, "random", rng, patch=32), pal)
    click.echo("[5/5] completing with ONNX Runtime")
    completer = LMAECompleter.load(bundle, backend="onnxruntime", threads=threads)
    n = completer.num_classes
    ours, nn_fill = CompletionMeter(n), CompletionMeter(n)
    pairs = [(img, lab, stem) for img, lab, stem in folder_pairs(data / "val" / "images", partial_dir)]
    t = time.time()
    count = 0
    for r in completer.complete_batch(pairs, batch_size=8):
        gt, _ = read_label(gt_dir / f"{r.name}.png")
        partial, _ = read_label(partial_dir / f"{r.name}.png")
        write_label(out_dir / f"{r.name}.png", r.label, r.palette)
        ours.update(r.label, gt, partial)
        nn_fill.update(nearest_known(partial)[0], gt, partial)
        count += 1
    secs = time.time() - t
    a, b = ours.summary(SYNTH_CLASSES), nn_fill.summary(SYNTH_CLASSES)
    click.echo(f"\n{count} val images, 50% of each label unknown; {completer.describe()}, "
               f"{count / max(secs, 1e-9):.1f} img/s")
    click.echo(f"  {'method':<28s} {'PA-mIoU':>8s} {'PA acc':>8s}")
    click.echo(f"  {'L-MAE (ONNX Runtime)':<28s} {a['pa_miou']:8.2f} {a['pa_pixel_acc']:8.2f}")
    click.echo(f"  {'nearest known label':<28s} {b['pa_miou']:8.2f} {b['pa_pixel_acc']:8.2f}")
    click.echo(f"\ncompleted labels: {out_dir}\nnext: lmae visualize --images {data / 'val' / 'images'} "
               f"--partial {partial_dir} --completed {out_dir} --out {root / 'viz'}")
    click.echo(f"demo took {time.time() - t_all:.0f}s")


def _default_palette(n: int = 256) -> list[list[int]]:
    import colorsys

    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 if i % 2 else 0.9, 0.95 if i % 3 else 0.75)
        out.append([int(r * 255), int(g * 255), int(b * 255)])
    return out


def _colorize(label: np.ndarray, palette: list[list[int]], unknown: int = 255) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    rgb = lut[label]
    hole = label == unknown
    if hole.any():  # unknown: a grey checkerboard
        yy, xx = np.indices(label.shape)
        check = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 200, 140).astype(np.uint8)
        rgb = np.where(hole[..., None], np.repeat(check, 3, axis=2), rgb)
    return rgb


@main.command()
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--partial", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--completed", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--confidence", "confidence_dir", default=None, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--classes", "classes_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="classes.json with a palette (default: looked up above --images / --partial)")
@click.option("--limit", default=0, type=int, help="at most N images (0 = all)")
def visualize(images: str, partial: str, completed: str, confidence_dir: str | None, out: str,
              classes_json: str | None, limit: int) -> None:
    """Side-by-side PNGs (image | partial | completed | confidence) and an index.html."""
    import html

    import cv2

    from lmae_sdk.labels import InputError, atomic_write_bytes, read_image, read_label
    from lmae_sdk.runtime.pipelines import folder_pairs

    palette, names = None, None
    cj = Path(classes_json) if classes_json else None
    if cj is None:
        for base in (Path(images), Path(partial), Path(completed)):
            cj = next((p / "classes.json" for p in [base.resolve(), *base.resolve().parents]
                       if (p / "classes.json").is_file()), None)
            if cj is not None:
                break
    if cj is not None:
        meta = json.loads(cj.read_text())
        palette, names = meta.get("palette"), meta.get("classes")
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    pairs = [(img, lab, stem) for img, lab, stem in folder_pairs(images, completed)]
    if limit:
        pairs = pairs[:limit]
    for img_path, comp_path, stem in pairs:
        try:
            if img_path is None:
                raise InputError(comp_path, f"no image named {stem}.* in {images}")
            img = read_image(img_path)
            comp, comp_pal = read_label(comp_path)
            part, _ = read_label(Path(partial) / f"{stem}.png")
            pal = palette or comp_pal or _default_palette()
            panels = [img, _colorize(part, pal), _colorize(comp, pal)]
            cols = ["image", "partial", "completed"]
            if confidence_dir:
                cf = Path(confidence_dir) / f"{stem}.png"
                if cf.is_file():
                    conf, _ = read_label(cf)
                    panels.append(cv2.cvtColor(cv2.applyColorMap(conf, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB))
                    cols.append("confidence")
            h = img.shape[0]
            sep = np.full((h, 4, 3), 255, np.uint8)
            strip = [panels[0]]
            for pnl in panels[1:]:
                if pnl.shape[:2] != img.shape[:2]:
                    raise InputError(comp_path, "panel sizes differ from the image")
                strip += [sep, pnl]
            ok, buf = cv2.imencode(".png", cv2.cvtColor(np.concatenate(strip, axis=1), cv2.COLOR_RGB2BGR))
            atomic_write_bytes(dst / f"{stem}.png", buf.tobytes())
            rows.append((stem, cols))
        except InputError as e:
            failed.append(str(e))
            click.echo(f"skip: {e}", err=True)
    legend = ""
    if names:
        pal = palette or _default_palette()
        legend = " ".join(f'<span style="background:rgb({pal[i][0]},{pal[i][1]},{pal[i][2]});padding:2px 6px;'
                          f'margin:2px;color:#fff;text-shadow:0 0 2px #000">{html.escape(str(n))}</span>'
                          for i, n in enumerate(names) if i < len(pal))
    body = "\n".join(f'<h3>{html.escape(stem)}</h3><p>{" | ".join(cols)}</p>'
                     f'<img src="{html.escape(stem)}.png" style="max-width:100%">' for stem, cols in rows)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lmae completions</title></head><body>"
            f"<h1>L-MAE completions ({len(rows)} images)</h1><p>{legend}</p>"
            f"<p>unknown pixels: grey checkerboard</p>{body}</body></html>\n")
    atomic_write_bytes(dst / "index.html", page.encode())
    click.echo(f"wrote {len(rows)} visualizations and index.html to {dst}" + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
