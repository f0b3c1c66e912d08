"""Training commands: train, calibrate, fit-boundaries, fit-fusion (they need the training
extra: torch)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import click

from lmae_sdk.cli.options import parse_mix, parse_ratios, parse_settings, parse_size, require_torch
from lmae_sdk.datasets import LAYOUTS
from lmae_sdk.degrade import DEGRADE_STRATEGIES


def reports_checkpoint_errors(command: Callable) -> Callable:
    """Without torch, the command says which extra to install; a refused checkpoint or a
    dataset that cannot be read (e.g. an export whose category is not a class) ends it with
    its one-line message (the file and why)."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        require_torch(f"lmae {command.__name__.replace('_', '-')}")
        from lmae_sdk.checkpoint import CheckpointError
        from lmae_sdk.datasets import DatasetError

        try:
            return command(*args, **kwargs)
        except (CheckpointError, DatasetError) as e:
            raise click.ClickException(str(e)) from None
    return run


@click.command()
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
              help="training partial labels (default random=0.3,blocks=0.15,objects=0.25,bands=0.1,background=0.1,"
                   "label=0.1)")
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
@click.option("--layout", default="auto", show_default=True, type=click.Choice(["auto", *LAYOUTS]),
              help="how --data is laid out (README: Dataset layouts); auto detects it")
@reports_checkpoint_errors
def train(**kw) -> None:
    """Train one checkpoint per mask ratio (or one over a ratio range)."""
    import dataclasses

    from lmae_sdk.training.train import TrainConfig
    from lmae_sdk.training.train import train as run

    # the model switches, as LMAEConfig overrides of the preset (unset: the preset's)
    switches = {"fuse": kw["fuse"], "ips": False if kw["no_ips"] else None, "prior": False if kw["no_prior"] else None,
                "prior_mode": kw["prior_mode"], "refine_width": kw["refine_width"], "refine_arch": kw["refine_arch"]}
    # every other option is the TrainConfig field of the same name
    settings = {k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    settings.update(image_size=parse_size(kw["image_size"]), mask_mix=parse_mix(kw["mask_mix"]),
                    hole_mix=parse_mix(kw["hole_mix"], DEGRADE_STRATEGIES),
                    model_overrides={k: v for k, v in switches.items() if v is not None})
    groups = parse_ratios(kw["mask_ratio"])
    for ratios in groups:
        out = kw["out"]
        if len(groups) > 1:
            tag = f"m{ratios[0]}"
            out = out.replace("{ratio}", tag) if "{ratio}" in out else str(Path(out).with_suffix("")) + f"_{tag}.pt"
        tc = TrainConfig(**{**settings, "out": out, "mask_ratios": ratios})
        path = run(tc)
        click.echo(f"best checkpoint: {path}")


@click.command()
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset with a val split")
@click.option("--out", default=None, help="write the calibrated checkpoint here (default: in place, atomically)")
@click.option("--thresholds", default="0.25,0.5,0.75,0.95", show_default=True)
@click.option("--setting", default="random:0.5,objects:0.5", show_default=True,
              help="degrade STRATEGY:RATIO[,...] for the val labels; the rule maximises the mean PA-mIoU")
@click.option("--limit", default=0, type=int, help="first N val pairs (0 = all)")
@click.option("--threads", default=0, type=int)
@reports_checkpoint_errors
def calibrate(ckpt: str, data: str, out: str | None, thresholds: str, setting: str, limit: int,
              threads: int) -> None:
    """Choose the routing threshold on val (with the checkpoint's finishing rule); store it in
    the checkpoint."""
    from lmae_sdk.training.calibrate import calibrate as run

    run(ckpt, data, out, tuple(float(v) for v in thresholds.split(",")), parse_settings(setting), limit, threads,
        log=click.echo)


@click.command("fit-boundaries")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset root")
@click.option("--split", default="train", show_default=True, help="the split the net learns and the weights are tuned on")
@click.option("--out", default=None, help="write the checkpoint with the boundary net here (default: in place)")
@click.option("--minutes", default=40.0, show_default=True, type=float, help="training time budget")
@click.option("--steps", default=0, type=int, help="train this many steps instead of --minutes")
@click.option("--width", default=16, show_default=True, type=int, help="the UNet's base width")
@click.option("--crop", default=256, show_default=True, type=int)
@click.option("--batch-size", default=4, show_default=True, type=int,
              help="crops per step (4 learned faster per minute than 8 or 2: benchmarks/HISTORY.md)")
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
                   "1); the default grid: 300 and 1000 x 1000, 3000 and 10000 x powers 1 and 2, and both colour "
                   "weights without the boundary term")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, type=int)
@click.option("--bf16/--no-bf16", default=None,
              help="bf16 autocast while training (default: where the CPU computes bf16 natively, AVX512-BF16 / AMX)")
@reports_checkpoint_errors
def fit_boundaries(ckpt: str, data: str, split: str, out: str | None, minutes: float, steps: int, width: int,
                   crop: int, batch_size: int, lr: float, continue_net: bool, flip_average: bool, augment: bool,
                   tune_images: int, weight_grid: str | None, seed: int, threads: int, bf16: bool | None) -> None:
    """Fit a class-boundary net for the geodesic step cost and store it in the checkpoint;
    then fine-tune (lmae train --init-from CKPT --boundaries-from CKPT) and refit fusion."""
    from lmae_sdk.training.boundary_fit import DEFAULT_WEIGHT_GRID, fit_boundaries as run

    try:
        grid = tuple(tuple(float(v) for v in pair.split(":")) for pair in weight_grid.split(",")) \
            if weight_grid else DEFAULT_WEIGHT_GRID
    except ValueError:
        raise click.BadParameter(f"{weight_grid!r}: expected COLOUR:BOUNDARY[:POWER][,...], e.g. 1000:3000:2",
                                 param_hint="--weight-grid") from None
    if weight_grid and any(len(entry) not in (2, 3) or min(entry) <= 0 for entry in grid):
        raise click.BadParameter(f"{weight_grid!r}: expected COLOUR:BOUNDARY[:POWER][,...], all positive",
                                 param_hint="--weight-grid")
    run(ckpt, data, out, split, minutes, steps, width, crop, batch_size, lr, tune_images=tune_images,
        weight_grid=grid, seed=seed, threads=threads, bf16=bf16, continue_net=continue_net,
        flip_average=flip_average, augment=augment, log=click.echo)


@click.command("fit-fusion")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset root")
@click.option("--split", default="train", show_default=True, help="the split whose labels are degraded and completed")
@click.option("--out", default=None, help="write the checkpoint with pixel fusion here (default: in place, atomically)")
@click.option("--setting", default=None,
              help="degrade STRATEGY:RATIO[,...]; image i gets setting i mod count (default: every kind of "
                   "hole that the model card scores, at its unknown share)")
@click.option("--images", default=0, type=int, help="first N pairs of the split (0 = all)")
@click.option("--per-image", default=6000, show_default=True, type=int, help="hole pixels sampled per image")
@click.option("--hidden", default=64, show_default=True, type=int, help="the MLP's width")
@click.option("--steps", default=4000, show_default=True, type=int)
@click.option("--class-weight-power", default=0.25, show_default=True, type=float,
              help="class weights (total / count) ** power: rare classes count more as it grows")
@click.option("--hole-features/--no-hole-features", default=None,
              help="features of the pixel's hole, straight-line votes and nearest-label fill's decision (default: "
                   "when the checkpoint has a boundary net)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, type=int)
@reports_checkpoint_errors
def fit_fusion(ckpt: str, data: str, split: str, out: str | None, setting: str | None, images: int, per_image: int,
               hidden: int, steps: int, class_weight_power: float, hole_features: bool | None, seed: int,
               threads: int) -> None:
    """Fit pixel fusion (model probability x per-class geodesic cost, per hole pixel) and
    store it in the checkpoint; run before calibrate and export."""
    from lmae_sdk.training.fusion_fit import DEFAULT_FIT_SETTINGS, fit_fusion as run

    settings = parse_settings(setting) if setting else DEFAULT_FIT_SETTINGS
    run(ckpt, data, out, split, settings, images, per_image, hidden, steps, class_weight_power,
        seed=seed, threads=threads, hole_features=hole_features, log=click.echo)
