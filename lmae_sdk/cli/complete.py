"""``lmae complete``: fill the unknown pixels of a folder of partial labels."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lmae_sdk.card import CardError, card_line, card_warning, read_card
from lmae_sdk.cli.batch import BatchSummary, pair_folders, start_run, writable_folder
from lmae_sdk.cli.complete_export import LABEL_FORMATS, complete_export, labels_format
from lmae_sdk.cli.options import fraction, refuse_out_inside
from lmae_sdk.cores import usable_cores
from lmae_sdk.inputs import unknown_index_problem
from lmae_sdk.run_record import RunRecord, Start, remove_stray_temps
from lmae_sdk.runtime.backends import BACKENDS

REPORT = "report.json"


def auto_lanes(backend: str, device: str | None, threads: int, model: Path) -> tuple[int, int]:
    """(lanes, engine threads) for ``--lanes 0``: on a CPU every core completes its own batches
    (1.13-1.18x the throughput of one engine over both cores for ``small`` on 2 cores,
    benchmarks/HISTORY.md); with a GPU, one lane whose workers prepare while the GPU
    runs.  torch's view of CUDA is asked only where torch would run ``model``: a checkpoint,
    ``--backend torch``, or a bundle with neither ONNX Runtime nor TensorRT installed (torch
    would otherwise be imported for nothing: about 160 MB and a second)."""
    from lmae_sdk.runtime.backends import ort_available, ort_cuda_available, trt_available
    from lmae_sdk.runtime.loading import cuda_available

    on_torch = backend == "torch" or (backend == "auto" and (model.is_file() or not (ort_available()
                                                                                      or trt_available())))
    on_gpu = (device or "").startswith("cuda") or (device is None and (
        (backend in ("auto", "tensorrt") and trt_available())
        or (backend in ("auto", "onnxruntime") and ort_cuda_available())
        or (on_torch and cuda_available())))
    if on_gpu:
        return 1, threads
    cores = usable_cores()
    threads = threads or 1
    return max(1, cores // threads), threads


def set_engine_threads(completer, threads: int) -> None:
    """The torch backend runs on torch's process-wide thread count, which the library leaves to
    the program: this command sets it for its own process to ``threads`` (0: torch's default)."""
    if completer.backend_name == "torch" and threads > 0:
        from lmae_sdk.runtime.backends import set_torch_threads

        set_torch_threads(threads)


def check_unknown_index(model_path: Path, unknown_index: int) -> None:
    """``--unknown-index`` must be no class id of the model: a bundle's classes are read from
    its manifest, before any engine loads (a checkpoint's once the loader has read it, which
    then refuses the value, still before any file is completed)."""
    from lmae_sdk.bundle import BundleError, read_manifest

    if not model_path.is_dir():
        return
    try:
        n = read_manifest(model_path, verify_files=False).num_classes
    except (BundleError, OSError) as e:
        raise click.ClickException(str(e)) from None
    problem = unknown_index_problem(unknown_index, n)
    if problem:
        raise click.BadParameter(f"{unknown_index} {problem}; the model {model_path} has {n} classes",
                                 param_hint="--unknown-index")


def run_record(completer, model_path: Path, inputs: dict[str, str], min_confidence: float, tile: bool,
               confidence_dir: Path | None) -> RunRecord:
    """What decides the completed labels: the model's sha256, the engines and backend the
    completer resolved to, and the options that change pixels (not threads, lanes, batch size
    or workers)."""
    from lmae_sdk.run_record import model_sha256

    engines = completer.engines.values()
    providers = completer.providers
    on_gpu = any("cuda" in p.lower() or "tensorrt" in p.lower() for p in providers)
    options = {"backend": completer.backend_name, "device": "gpu" if on_gpu else "cpu",
               "precision": sorted({getattr(e.backend, "precision", None) or "fp32" for e in engines}),
               "mask_ratios": completer.mask_ratios, "unknown_index": completer.unknown_index,
               "pixel_fusion": completer.fusion is not None, "min_confidence": min_confidence, "tile": tile,
               "confidence_dir": str(confidence_dir) if confidence_dir else None}
    return RunRecord("complete", inputs, options, model_path=str(model_path), model_sha256=model_sha256(model_path),
                     info={"providers": providers, "model": completer.describe()})


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="a bundle folder (manifest.json) or a .pt checkpoint")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--labels", "labels_dir", required=True, type=click.Path(exists=True),
              help="partial labels: a folder of PNGs (unknown = --unknown-index), or an annotation export (COCO "
                   "JSON, CVAT mask folder, Label Studio JSON)")
@click.option("--format", "label_format", default="auto", show_default=True, type=click.Choice(LABEL_FORMATS),
              help="of --labels (auto: a folder of PNGs is 'folder', else detected); --out gets the same format")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--backend", default="auto", show_default=True, type=click.Choice(BACKENDS))
@click.option("--device", default=None, help="cpu | cuda | cuda:N (default: what the backend picks)")
@click.option("--precision", default=None, type=click.Choice(["fp32", "fp16"]),
              help="the engines' (default: fp32 on a CPU, fp16 on a GPU where the bundle has it); fp32 also runs "
                   "the boundary graph in fp32 where the bundle holds an int8 one")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="images per engine call (ONNX Runtime's CPU provider runs them one at a time)")
@click.option("--threads", default=0, type=int, help="inference threads (0 = all cores)")
@click.option("--workers", default=2, show_default=True, type=int, help="pre/post-processing threads (one lane)")
@click.option("--lanes", default=0, show_default=True, type=int,
              help="lanes completing images side by side, each on its own thread from reading to writing, one "
                   "engine call of images at a time (0 = auto: one per core with one engine thread each on a CPU, "
                   "1 with a GPU)")
@click.option("--unknown-index", default=255, show_default=True, type=click.IntRange(0, 255),
              help="the label value of unknown pixels (8-bit, no class id of the model)")
@click.option("--confidence-dir", default=None, type=click.Path(file_okay=False),
              help="also write per-pixel confidence (8-bit PNG, 255 = 1.0)")
@click.option("--min-confidence", default=0.0, show_default=True, type=float, callback=fraction,
              help="leave filled pixels below this confidence (0..1) unknown")
@click.option("--mask-ratios", default=None, help="use only these engines, e.g. 0.5,0.7 (a .pt: run it at these ratios)")
@click.option("--tile", is_flag=True, help="overlapping model-size windows for large images")
@click.option("--no-fusion", is_flag=True, help="ignore the model's pixel fusion (faster host work, lower quality)")
@click.option("--review", is_flag=True,
              help="also rank the images by how uncertain their filled pixels are, most uncertain first: "
                   "review.csv / review.json in --out")
@click.option("--review-below", default=0.5, show_default=True, type=float, callback=fraction,
              help="--review: a filled pixel below this confidence (0..1) counts as uncertain")
@click.option("--overwrite", is_flag=True,
              help="redo every file in --out (another model's or options' outputs too) and rewrite its run record")
@click.option("--quiet", is_flag=True, help="no progress bar")
def complete(model_path: str, images: str, labels_dir: str, label_format: str, out: str, backend: str,
             device: str | None, precision: str | None, batch_size: int, threads: int, workers: int, lanes: int,
             unknown_index: int, confidence_dir: str | None, min_confidence: float, mask_ratios: str | None,
             tile: bool, no_fusion: bool, review: bool, review_below: float, overwrite: bool, quiet: bool) -> None:
    """Fill the unknown pixels of every partial label in --labels; one PNG each in --out (for
    an annotation export, the completions in its format: OUT/instances.json, the CVAT layout,
    OUT/predictions.json; written once at the end, a rerun redoes an unfinished export).

    --out keeps a run record (.lmae-run.json: inputs, model sha256, the options that change
    the labels): a rerun resumes only the same run (only missing labels are made) and refuses
    another model's or options' outputs unless --overwrite.  --review also writes the review
    queue (lmae_sdk/review.py) over every image of the run, earlier runs' included."""
    import logging
    import time
    from collections import Counter

    from tqdm import tqdm

    from lmae_sdk.bundle import BundleError
    from lmae_sdk.extras import MissingExtra
    from lmae_sdk.labels import atomic_write_bytes, confidence_png, write_label
    from lmae_sdk.runtime.backends import BackendError
    from lmae_sdk.runtime import LMAECompleter, keep_freed_memory

    fmt = labels_format(Path(labels_dir), label_format)
    if fmt != "folder":  # an annotation-tool export in and out: lmae_sdk/cli/complete_export.py
        return complete_export(fmt, click.get_current_context().params)
    keep_freed_memory()  # this process only: freed multi-MB arrays are reused, not faulted in again
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    src_img, src_lab, dst = Path(images).resolve(), Path(labels_dir).resolve(), Path(out).resolve()
    conf_dst = Path(confidence_dir).resolve() if confidence_dir else None
    refuse_out_inside(dst, {"--images": src_img, "--labels": src_lab})
    if conf_dst is not None:
        refuse_out_inside(conf_dst, {"--images": src_img, "--labels": src_lab}, "--confidence-dir")
        if conf_dst == dst:
            raise click.BadParameter(f"{conf_dst} is the --out folder too; the confidence maps need their own",
                                     param_hint="--confidence-dir")
    if lanes < 0:
        raise click.BadParameter("must be >= 0", param_hint="--lanes")
    try:
        ratios = [float(v) for v in mask_ratios.split(",")] if mask_ratios else None
    except ValueError:
        raise click.BadParameter(f"{mask_ratios!r}: expected ratios like 0.5,0.7", param_hint="--mask-ratios") \
            from None
    check_unknown_index(Path(model_path), unknown_index)
    # a stem that two images (or two labels, a.png and a.PNG) share: that label fails, naming the files
    inputs = pair_folders(src_img, src_lab, clashes="report")
    if not inputs.pairs and not inputs.labels_without_image and not inputs.clashes:
        raise click.ClickException(f"no partial labels (*.png) in {src_lab}")
    pairs = inputs.pairs
    writable_folder(dst, "--out")
    if conf_dst is not None:
        writable_folder(conf_dst, "--confidence-dir")

    summary = BatchSummary("complete")
    for lab in inputs.labels_without_image:
        summary.fail(lab.name, f"{lab}: no image named {lab.stem}.* in {src_img}")
    summary.quiet_failures |= {lab.name for lab in inputs.labels_without_image}  # the note names them
    for lab, why in inputs.clashes.items():
        summary.fail(lab.name, f"{lab}: {why}")
    summary.note_unmatched(inputs.labels_without_image, f"labels without an image in {src_img}",
                           f"label without an image in {src_img}")
    summary.note_unmatched(inputs.images_without_label, f"images without a partial label in {src_lab}",
                           f"image without a partial label in {src_lab}")
    if not pairs:  # nothing to complete: no model to load
        summary.echo()
        sys.exit(1)

    if lanes == 0:
        lanes, threads = auto_lanes(backend, device, threads, Path(model_path))
    try:
        completer = LMAECompleter.load(model_path, backend=backend, device=device, threads=threads,
                                       precision=precision, unknown_index=unknown_index, mask_ratios=ratios,
                                       pixel_fusion=not no_fusion)
    except (BundleError, BackendError, MissingExtra, ValueError) as e:  # CheckpointError is a ValueError
        raise click.ClickException(str(e)) from None
    set_engine_threads(completer, threads)
    click.echo(f"model: {completer.describe()}" + (f", {lanes} lanes" if lanes > 1 else ""), err=True)
    try:
        card = read_card(model_path)
    except CardError as e:  # the card is documentation: a broken one does not stop the job
        click.echo(f"warning: {e}", err=True)
    else:
        if card is not None:
            click.echo(card_line(card), err=True)
            warning = card_warning(card)  # a failed final gate; labels without class boundaries
            if warning:
                click.echo(warning, err=True)
    record = run_record(completer, Path(model_path).resolve(), {"images": str(src_img), "labels": str(src_lab)},
                        min_confidence, tile, conf_dst)
    folders = [dst] + ([conf_dst] if conf_dst is not None else [])
    from lmae_sdk.review import RECORDS, REVIEW_CSV, REVIEW_JSON, QueueSettings, ReviewRecords, run_key

    start = start_run(folders, record, overwrite, bookkeeping=(REPORT, REVIEW_CSV, REVIEW_JSON, RECORDS))
    reviews = None
    if review:  # a record per image, then the queue over every image of the run
        reviews = ReviewRecords(dst, run_key(record), QueueSettings(
            review_below, completer.class_names, completer.settings.palette, record.model_path, record.model_sha256,
            {"images": str(src_img), "labels": str(src_lab), "out": str(dst),
             "confidence_dir": str(conf_dst) if conf_dst else None}, unknown_index))
        partial_files = {stem: lab for _, lab, stem in pairs}
    stray = sum(remove_stray_temps(f) for f in [*folders, dst / RECORDS])

    todo = []
    for img, lab, stem in pairs:
        done = (dst / f"{stem}.png").is_file() and (conf_dst is None or (conf_dst / f"{stem}.png").is_file())
        done = done and (reviews is None or reviews.read(stem) is not None)  # else completed again
        if done and start is Start.RESUME:
            summary.skipped += 1
        else:
            todo.append((img, lab, stem))

    engine_use: Counter = Counter()
    filled = unreliable = multipass = 0
    t0 = time.time()
    bar = tqdm(total=len(todo), desc="complete", unit="img", disable=quiet, file=sys.stderr)

    def save(r) -> None:  # on the worker threads, while the model runs the next images
        if conf_dst is not None:  # the label is written last: its presence marks the file finished
            atomic_write_bytes(conf_dst / f"{r.name}.png", confidence_png(r.confidence))
        if reviews is not None:
            reviews.add(r.name, partial_files[r.name], r.label, r.confidence)
        write_label(dst / f"{r.name}.png", r.label, r.palette)

    for r in completer.complete_batch(todo, batch_size=batch_size, min_confidence=min_confidence, tile=tile,
                                      workers=workers, on_error="return", on_result=save, lanes=lanes,
                                      confidence=conf_dst is not None or review):
        bar.update(1)
        if not r.ok:
            summary.fail(f"{r.name}.png", str(r.error))
            continue
        summary.done += 1
        engine_use[f"m{r.mask_ratio:g}"] += 1
        multipass += r.passes > 1
        filled += r.filled
        unreliable += r.unreliable
    bar.close()
    secs = time.time() - t0
    rate = round(summary.done / secs, 3) if secs > 0 and summary.done else 0.0
    report = {
        "model": record.model_path, "backend": completer.backend_name,
        "providers": completer.providers, "mask_ratios": completer.mask_ratios,
        "images_completed": summary.done, "images_skipped": summary.skipped, "images_failed": len(summary.failures),
        "pixels_filled": filled, "pixels_left_unknown": unreliable, "min_confidence": min_confidence,
        "engine_use": dict(sorted(engine_use.items())), "multi_pass_images": multipass, "tile": tile,
        "lanes": lanes, "engine_threads": threads, "seconds": round(secs, 3), "images_per_s": rate,
        "stray_temp_files_removed": stray, "failures": summary.failures,
        "labels_without_image": [p.name for p in inputs.labels_without_image],
        "images_without_label": [p.name for p in inputs.images_without_label], "run": record.to_dict(),
    }
    if reviews is not None:
        try:
            queued = reviews.write_queue(pairs, summary.failures)
            report["review"] = str(dst / REVIEW_JSON)
            click.echo(f"review queue: {queued} images, most uncertain first, in {dst / REVIEW_CSV}", err=True)
        except OSError as e:
            summary.fail(REVIEW_JSON, f"{dst / REVIEW_JSON}: cannot write ({e.strerror or e})")
    try:
        atomic_write_bytes(dst / REPORT, (json.dumps(report, indent=1) + "\n").encode())
    except OSError as e:
        summary.fail(REPORT, f"{dst / REPORT}: cannot write ({e.strerror or e})")
    summary.echo(f"{secs:.1f}s [{rate:.2f} img/s]; {filled} pixels filled"
                 + (f", {unreliable} left unknown (< {min_confidence})" if min_confidence > 0 else "")
                 + f"; engines {report['engine_use']}" + (f", {multipass} in several passes" if multipass else ""),
                 report=str(dst / REPORT))
    summary.exit()
