"""``lmae complete`` on an annotation-tool export: ``--labels`` is a COCO JSON (instances or
panoptic), a CVAT "Segmentation mask 1.1" folder or a Label Studio JSON, and ``--out``
receives the completions in the same format, ready to import as pre-annotations
(:mod:`lmae_sdk.formats`: ``OUT/instances.json`` or ``OUT/panoptic.json``, the CVAT layout,
``OUT/predictions.json``).

The model's class names (its bundle manifest, or the checkpoint) are given to the reader:
categories / labels map to classes by name, and one the model lacks is an error naming it.
Each image is completed as in the folder format; a bad image (unreadable, another size than
its annotations, a corrupt mask) is reported and the job goes on; the exit code is 1 when
anything failed.  Each annotation's ``score`` is the mean confidence of its pixels (known
pixels count 1).  Completions stream into the writer, so memory holds only the images in
flight, never every label or confidence map.

Output and reruns.  ``--out`` is written once, at the end, as a whole: the export, its
``report.json`` and the run record ``.lmae-run.json`` appear together (a temporary sibling
folder renamed into place).  An interrupted job therefore leaves ``--out`` as it was and a
rerun starts the export over.  A rerun of a finished run does nothing, unless its report
lists failures or the export has changed since (its annotation files: the bytes of a JSON,
the sizes and times of a folder's files): then it is redone whole.  ``--out`` holding another run's output is
refused unless ``--overwrite``, which replaces the folder as a whole, and only a folder
that an lmae run wrote (with a run record) or an empty one: a folder of other files is
refused even then, as is an ``--out`` that holds an input or the model.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import click

from lmae_sdk.cli.batch import OVERWRITE_HINT, BatchSummary, writable_folder
from lmae_sdk.cli.options import refuse_out_inside

LABEL_FORMATS = ("auto", "folder", "coco", "cvat", "labelstudio")  # --format of lmae complete
REPORT = "report.json"
UNKNOWN = 255  # exports mark unknown pixels by leaving them out; labels use 255
# options of the folder format only, with the value that means "not used"
FOLDER_ONLY = {"confidence_dir": ("--confidence-dir", None), "unknown_index": ("--unknown-index", UNKNOWN),
               "review": ("--review", False)}


def labels_format(labels: Path, requested: str) -> str:
    """``folder`` or the annotation format of ``--labels`` for ``--format requested``.
    ``auto``: a folder holding label PNGs is the folder format, as it always was; otherwise
    :func:`lmae_sdk.formats.detect_format` decides (a CVAT folder, a COCO or Label Studio
    JSON, or a folder holding one)."""
    from lmae_sdk.formats import DATASET_LAYOUTS, FormatError, detect_format
    from lmae_sdk.labels import label_files

    if requested == "folder" or (requested == "auto" and labels.is_dir() and label_files(labels)):
        if not labels.is_dir():
            raise click.BadParameter(f"{labels} is a file; the folder format needs a folder of partial label PNGs",
                                     param_hint="--labels")
        return "folder"
    if requested != "auto":
        return requested
    try:
        found = detect_format(labels)
    except FormatError as e:
        raise click.BadParameter(str(e), param_hint="--labels") from None
    return "folder" if found in DATASET_LAYOUTS else found


@dataclass(frozen=True)
class ExportJob:
    """The options of one export-format run of ``lmae complete``."""

    format: str
    model_path: Path
    images: Path
    labels: Path
    out: Path
    backend: str
    device: str | None
    precision: str | None
    batch_size: int
    threads: int
    workers: int
    lanes: int
    min_confidence: float
    mask_ratios: list[float] | None
    tile: bool
    no_fusion: bool
    overwrite: bool
    quiet: bool

    @classmethod
    def from_params(cls, fmt: str, params: dict[str, Any]) -> "ExportJob":
        """From the command's click parameters; folder-only options are refused."""
        for name, (option, unused) in FOLDER_ONLY.items():
            if params.get(name, unused) != unused:
                raise click.BadParameter(f"applies to the folder format only; a {fmt} export marks unknown pixels "
                                         f"by leaving them out and carries a score per annotation",
                                         param_hint=option)
        if params["lanes"] < 0:
            raise click.BadParameter("must be >= 0", param_hint="--lanes")
        ratios = params["mask_ratios"]
        try:
            mask_ratios = [float(v) for v in ratios.split(",")] if ratios else None
        except ValueError:
            raise click.BadParameter(f"{ratios!r}: expected ratios like 0.5,0.7", param_hint="--mask-ratios") \
                from None
        return cls(fmt, Path(params["model_path"]).resolve(), Path(params["images"]).resolve(),
                   Path(params["labels_dir"]).resolve(), Path(params["out"]).resolve(), params["backend"],
                   params["device"], params["precision"], params["batch_size"], params["threads"],
                   params["workers"], params["lanes"], params["min_confidence"], mask_ratios, params["tile"],
                   params["no_fusion"], params["overwrite"], params["quiet"])


def refuse_replacing_inputs(out: Path, inputs: dict[str, Path]) -> None:
    """``--out`` is replaced as a whole: it must not be, or hold, an input or the model."""
    for option, path in inputs.items():
        if path == out or out in path.parents:
            raise click.BadParameter(f"{out} holds the {option} {path}; --out is replaced as a whole when the "
                                     f"export is written: choose a folder that holds no input", param_hint="--out")


def check_out_folder(out: Path, overwrite: bool) -> None:
    """A non-empty ``--out`` without a run record is not an lmae output: never replaced."""
    from lmae_sdk.run_record import RUN_RECORD, folder_outputs

    if overwrite and folder_outputs(out, (REPORT,)) and not (out / RUN_RECORD).is_file():
        shown = ", ".join(folder_outputs(out, (REPORT,))[:3])
        raise click.ClickException(f"{out} holds files ({shown}) but no run record ({RUN_RECORD}): not an lmae "
                                   f"output, and --overwrite replaces --out as a whole; choose another output "
                                   f"folder")


def remove_stray_stages(out: Path) -> int:
    """Remove the temporary folders beside ``out`` that an interrupted write left (the
    writer's ``.<out>.<random>.tmp`` and the one inside it, the old output moved aside as
    ``.<out>.<random>.old``); returns how many."""
    pattern = re.compile(rf"^\.\.?{re.escape(out.name)}\.[a-z0-9_]{{8}}\.(tmp|old)(\.[a-z0-9_]{{8}}\.(tmp|old))?$")
    stray = [p for p in out.parent.iterdir() if p.is_dir() and pattern.match(p.name)] if out.parent.is_dir() else []
    for p in stray:
        shutil.rmtree(p, ignore_errors=True)
    return len(stray)


def _up_to_date(out: Path, labels_fingerprint: str) -> bool:
    """Whether the run in ``out`` (the same run: model, options, paths) read the export as it
    is now and its report lists no failed image."""
    from lmae_sdk.run_record import RunRecord

    try:
        old = RunRecord.read(out)
        clean = json.loads((out / REPORT).read_text()).get("images_failed") == 0
    except (OSError, ValueError, AttributeError):
        return False
    return clean and old is not None and old.info.get("labels_fingerprint") == labels_fingerprint


def _model_class_names(model: Path) -> list[str] | None:
    """A bundle's class names from its manifest (before any engine loads); None for a .pt."""
    from lmae_sdk.bundle import BundleError, read_manifest

    if not model.is_dir():
        return None
    try:
        return list(read_manifest(model, verify_files=False).class_names)
    except (BundleError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _read_export(job: ExportJob, class_names: list[str]):
    from lmae_sdk.extras import MissingExtra
    from lmae_sdk.formats import read_annotations

    try:
        export = read_annotations(job.labels, job.format, job.images, class_names)
    except (ValueError, MissingExtra) as e:  # FormatError is a ValueError
        raise click.ClickException(str(e)) from None
    if not len(export):
        raise click.ClickException(f"{job.labels}: the export lists no image")
    return export


def _load_completer(job: ExportJob, threads: int):
    from lmae_sdk.bundle import BundleError
    from lmae_sdk.extras import MissingExtra
    from lmae_sdk.runtime import LMAECompleter
    from lmae_sdk.runtime.backends import BackendError

    try:
        return LMAECompleter.load(job.model_path, backend=job.backend, device=job.device, threads=threads,
                                  precision=job.precision, unknown_index=UNKNOWN, mask_ratios=job.mask_ratios,
                                  pixel_fusion=not job.no_fusion)
    except (BundleError, BackendError, MissingExtra, ValueError) as e:  # CheckpointError is a ValueError
        raise click.ClickException(str(e)) from None


def _echo_card(model: Path) -> None:
    from lmae_sdk.card import CardError, card_line, card_warning, read_card

    try:
        card = read_card(model)
    except CardError as e:  # the card is documentation: a broken one does not stop the job
        click.echo(f"warning: {e}", err=True)
        return
    if card is not None:
        click.echo(card_line(card), err=True)
        warning = card_warning(card)
        if warning:
            click.echo(warning, err=True)


@dataclass
class _Tally:
    """What the completed images add up to (for the report)."""

    filled: int = 0
    unreliable: int = 0
    multipass: int = 0
    engine_use: Counter = field(default_factory=Counter)


def _display_name(image: Path, images: Path) -> str:
    return str(image.relative_to(images)) if image.is_relative_to(images) else str(image)


def _completions(export, completer, job: ExportJob, lanes: int, summary: BatchSummary, tally: _Tally, bar
                 ) -> Iterator:
    """The export's completions as the writer takes them, one image at a time; failures go
    to ``summary`` and are left out."""
    from lmae_sdk.formats import Completion
    from lmae_sdk.formats.items import ItemFailure, each_item

    in_flight: deque = deque()  # (name, meta) of the pairs handed on; results come back in this order

    def pairs():
        for item in each_item(export):
            if isinstance(item, ItemFailure):
                summary.fail(_display_name(item.image_path, job.images), item.message)
                bar.update(1)
                continue
            name = _display_name(item.image_path, job.images)
            in_flight.append((name, item.meta))
            yield str(item.image_path), item.partial, name

    for r in completer.complete_batch(pairs(), batch_size=job.batch_size, min_confidence=job.min_confidence,
                                      tile=job.tile, workers=job.workers, on_error="return", lanes=lanes,
                                      confidence=True):
        name, meta = in_flight.popleft()
        bar.update(1)
        if not r.ok:
            summary.fail(name, str(r.error))
            continue
        summary.done += 1
        tally.engine_use[f"m{r.mask_ratio:g}"] += 1
        tally.multipass += r.passes > 1
        tally.filled += r.filled
        tally.unreliable += r.unreliable
        yield Completion(meta, r.label, r.confidence)  # the writer scores each annotation, then drops it


def complete_export(fmt: str, params: dict[str, Any]) -> None:
    """Run ``lmae complete`` for an annotation export (``params``: the command's parameters)."""
    import logging

    from tqdm import tqdm

    from lmae_sdk.cli.complete import auto_lanes, check_unknown_index, run_record, set_engine_threads
    from lmae_sdk.formats import write_annotations
    from lmae_sdk.formats.common import atomic_folder
    from lmae_sdk.formats.dataset import annotation_fingerprint
    from lmae_sdk.run_record import RunRecordError, Start, decide
    from lmae_sdk.runtime import keep_freed_memory

    job = ExportJob.from_params(fmt, params)
    keep_freed_memory()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dst = job.out
    refuse_out_inside(dst, {"--images": job.images, **({"--labels": job.labels} if job.labels.is_dir() else {})})
    refuse_replacing_inputs(dst, {"--images": job.images, "--labels": job.labels, "--model": job.model_path})
    check_unknown_index(job.model_path, UNKNOWN)
    writable_folder(dst, "--out")
    check_out_folder(dst, job.overwrite)

    class_names = _model_class_names(job.model_path)
    export = _read_export(job, class_names) if class_names is not None else None  # input errors before loading
    lanes, threads = (auto_lanes(job.backend, job.device, job.threads, job.model_path) if job.lanes == 0
                      else (job.lanes, job.threads))
    completer = _load_completer(job, threads)
    set_engine_threads(completer, threads)
    if export is None:  # a checkpoint: its class names are known once loaded
        export = _read_export(job, completer.class_names)
    click.echo(f"model: {completer.describe()}" + (f", {lanes} lanes" if lanes > 1 else ""), err=True)
    _echo_card(job.model_path)
    record = run_record(completer, job.model_path,
                        {"images": str(job.images), "labels": str(job.labels), "format": fmt},
                        job.min_confidence, job.tile, None)
    record.info["labels_fingerprint"] = annotation_fingerprint(job.labels)  # an edited export is redone
    try:
        start = decide(dst, record, job.overwrite, bookkeeping=(REPORT,))
    except RunRecordError as e:
        raise click.ClickException(f"{e}; {OVERWRITE_HINT}") from None
    summary = BatchSummary("complete")
    if start is Start.RESUME and _up_to_date(dst, record.info["labels_fingerprint"]):
        summary.skipped = len(export)
        summary.echo("the export in --out is this run's, finished", report=str(dst / REPORT))
        return
    stray = remove_stray_stages(dst)

    tally = _Tally()
    t0 = time.time()
    bar = tqdm(total=len(export), desc="complete", unit="img", disable=job.quiet, file=sys.stderr)
    try:
        with atomic_folder(dst, overwrite=True) as stage:  # the checks above allow replacing it
            written = write_annotations(stage, export, _completions(export, completer, job, lanes, summary,
                                                                    tally, bar))
            secs = time.time() - t0
            rate = round(summary.done / secs, 3) if secs > 0 and summary.done else 0.0
            warnings = Counter(export.warning_counts())
            for w in written.warnings:
                warnings[w.kind] += w.count
            report = {
                "model": record.model_path, "format": fmt, "output": str(dst / written.main_file.name),
                "backend": completer.backend_name, "providers": completer.providers,
                "mask_ratios": completer.mask_ratios, "images_completed": summary.done, "images_skipped": 0,
                "images_failed": len(summary.failures), "pixels_filled": tally.filled,
                "pixels_left_unknown": tally.unreliable, "min_confidence": job.min_confidence,
                "engine_use": dict(sorted(tally.engine_use.items())), "multi_pass_images": tally.multipass,
                "tile": job.tile, "lanes": lanes, "engine_threads": threads, "seconds": round(secs, 3),
                "images_per_s": rate, "stray_temp_folders_removed": stray, "reader_warnings": dict(warnings),
                "failures": summary.failures, "run": record.to_dict(),
            }
            (stage / REPORT).write_text(json.dumps(report, indent=1) + "\n")
            record.write(stage)
    except (ValueError, OSError) as e:  # FormatError from the writer, a full disk: --out is left as it was
        raise click.ClickException(f"{dst}: the export was not written ({e})") from None
    finally:
        bar.close()
    if warnings:  # rules the reader / writer applied (lmae_sdk.formats.FormatWarning documents each)
        click.echo("  format notes: " + ", ".join(f"{kind} {count}" for kind, count in sorted(warnings.items())),
                   err=True)
    summary.echo(f"{secs:.1f}s [{rate:.2f} img/s]; {tally.filled} pixels filled"
                 + (f", {tally.unreliable} left unknown (< {job.min_confidence})" if job.min_confidence > 0 else "")
                 + f"; {written.images} images written into {dst} ({written.main_file.name})", report=str(dst / REPORT))
    summary.exit()
