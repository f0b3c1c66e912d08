"""``lmae demo``: synthetic data -> a tiny model -> ONNX bundle -> completed labels, scored."""
from __future__ import annotations

from pathlib import Path

import click

from lmae_sdk.cli.batch import pair_folders
from lmae_sdk.cli.options import require_torch


@click.command()
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

    require_torch("lmae demo (it trains and exports a model)")
    from lmae_sdk.degrade import degrade as make_partial
    from lmae_sdk.degrade import rng_for_name
    from lmae_sdk.export import export_bundle
    from lmae_sdk.labels import read_label, write_label
    from lmae_sdk.propagation import nearest_known
    from lmae_sdk.metrics import CompletionMeter
    from lmae_sdk.runtime.completer import LMAECompleter
    from lmae_sdk.synthetic import SYNTH_CLASSES, make_synthetic_dataset
    from lmae_sdk.training.train import TrainConfig
    from lmae_sdk.training.train import train as run_train

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
        write_label(partial_dir / f.name, make_partial(lab, 0.5, "random", rng_for_name(0, f.stem), patch=32), pal)
    click.echo("[5/5] completing with ONNX Runtime")
    completer = LMAECompleter.load(bundle, backend="onnxruntime", threads=threads)
    n = completer.num_classes
    ours, nn_fill = CompletionMeter(n), CompletionMeter(n)
    pairs = pair_folders(data / "val" / "images", partial_dir).pairs
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
