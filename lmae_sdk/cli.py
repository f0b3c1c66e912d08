"""``lmae`` command line: train, degrade, evaluate, complete, export, demo, visualize."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np


def _parse_size(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{s!r}: expected HxW, e.g. 224x288") from None
    return h, w


def _parse_ratios(s: str) -> list[tuple[float, ...]]:
    """'0.5' -> one model; '0.5,0.7' -> one model per ratio; '0.4:0.8' -> one model over
    0.4, 0.5, ..., 0.8 (a range model, exported later at several K)."""
    out = []
    for part in s.split(","):
        part = part.strip()
        if ":" in part:
            lo, hi = (float(v) for v in part.split(":"))
            out.append(tuple(round(v, 3) for v in np.arange(lo, hi + 1e-9, 0.1)))
        else:
            out.append((float(part),))
    for r in out:
        if not all(0 < v < 1 for v in r):
            raise click.BadParameter(f"mask ratios must be in (0, 1): {s}")
    return out


@click.group()
@click.version_option(package_name="lmae-sdk")
def main() -> None:
    """L-MAE label completion: train, export, complete."""


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="dataset root")
@click.option("--out", required=True, help="checkpoint path, e.g. camvid_m0.5.pt ({ratio} is filled in)")
@click.option("--mask-ratio", "mask_ratio", default="0.5", show_default=True,
              help="0.5 | 0.5,0.7 (one checkpoint each) | 0.4:0.8 (one model over a range)")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["tiny", "small", "base", "paper"]))
@click.option("--epochs", default=30, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--optimizer", default="adamw-cosine", show_default=True, type=click.Choice(["adamw-cosine", "adam-plateau"]))
@click.option("--image-size", default="224x288", show_default=True, help="model input HxW, multiples of 16")
@click.option("--holes", default="mixed", show_default=True, type=click.Choice(["mixed", "none"]),
              help="mixed: realistic partial labels; none: the paper's (masked patches only)")
@click.option("--label-resize", default="soft", show_default=True, type=click.Choice(["soft", "nearest"]))
@click.option("--fuse", default=None, type=click.Choice(["layer", "concat", "insert"]))
@click.option("--no-ips", is_flag=True, help="learned mask token instead of Image Patch Supplement")
@click.option("--no-prior", is_flag=True, help="no propagation planes (the paper's input)")
@click.option("--refine-width", default=None, type=int, help="0 disables the refinement stage")
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
    if kw["refine_width"] is not None:
        overrides["refine_width"] = kw["refine_width"]
    groups = _parse_ratios(kw["mask_ratio"])
    for ratios in groups:
        out = kw["out"]
        if len(groups) > 1:
            tag = f"m{ratios[0]}"
            out = out.replace("{ratio}", tag) if "{ratio}" in out else str(Path(out).with_suffix("")) + f"_{tag}.pt"
        tc = TrainConfig(data=kw["data"], out=out, mask_ratios=ratios, preset=kw["preset"], epochs=kw["epochs"],
                         batch_size=kw["batch_size"], lr=kw["lr"], optimizer=kw["optimizer"],
                         image_size=_parse_size(kw["image_size"]), holes=kw["holes"],
                         label_resize=kw["label_resize"], device=kw["device"], threads=kw["threads"],
                         workers=kw["workers"], seed=kw["seed"], time_budget_min=kw["time_budget_min"],
                         val_limit=kw["val_limit"], val_every=kw["val_every"], resume=kw["resume"],
                         layout=kw["layout"], model_overrides=overrides)
        path = run(tc)
        click.echo(f"best checkpoint: {path}")


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


if __name__ == "__main__":
    main()
