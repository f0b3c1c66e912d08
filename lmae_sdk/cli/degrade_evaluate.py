"""``lmae degrade`` (partial labels for experiments) and ``lmae evaluate`` (score completions)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from lmae_sdk.cli.batch import BatchSummary, start_run, writable_folder
from lmae_sdk.cli.options import refuse_out_inside
from lmae_sdk.degrade import DEGRADE_STRATEGIES
from lmae_sdk.labels import label_files
from lmae_sdk.run_record import RunRecord, RunRecordError, Start, remove_stray_temps

# how a file's generator is seeded (lmae_sdk.degrade.rng_for_name): part of the run record, so
# that outputs of another seeding are never resumed
SEEDING = "seed + sha256(file stem)"
# where the holes of a label that is already partial go (lmae_sdk.degrade.class_extents): outputs
# made when bands and objects followed the label's own holes are never resumed either
PARTIAL_HOLES = "class extents"


@click.command()
@click.option("--labels", "labels_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--ratio", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="share of each label's known pixels made unknown (of a complete label: of all of it)")
@click.option("--strategy", default="random", show_default=True, type=click.Choice(DEGRADE_STRATEGIES))
@click.option("--patch", default=32, show_default=True, type=click.IntRange(min=1),
              help="grid patch size in pixels (random, background, label, blocks); a label smaller than the "
                   "patch fails")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="redo every file in --out (another run's outputs too)")
def degrade(labels_dir: str, out: str, ratio: float, strategy: str, patch: int, seed: int, overwrite: bool) -> None:
    """Write partial labels (unknown = 255); the inputs are never touched.  A rerun into the
    same --out resumes only a run with the same labels and options (.lmae-run.json)."""
    from lmae_sdk.degrade import PATCH_STRATEGIES, DegradeError, check_patch, rng_for_name
    from lmae_sdk.degrade import degrade as make_partial
    from lmae_sdk.labels import InputError, read_label, write_label

    src, dst = Path(labels_dir).resolve(), Path(out).resolve()
    refuse_out_inside(dst, {"--labels": src})
    files = label_files(src)
    if not files:
        raise click.ClickException(f"no label PNGs in {src}")
    writable_folder(dst, "--out")
    record = RunRecord("degrade", {"labels": str(src)},
                       {"ratio": ratio, "strategy": strategy, "patch": patch, "seed": seed, "seeding": SEEDING,
                        "partial_holes": PARTIAL_HOLES})
    start = start_run([dst], record, overwrite)
    remove_stray_temps(dst)
    summary = BatchSummary("degrade")
    for f in files:
        target = dst / f.name
        if start is Start.RESUME and target.is_file():
            summary.skipped += 1
            continue
        try:
            lab, palette = read_label(f)
            if strategy in PATCH_STRATEGIES:
                check_patch(patch, lab.shape)  # a patch larger than the label would make it one cell
            partial = make_partial(lab, ratio, strategy, rng_for_name(seed, f.stem), patch=patch)
        except InputError as e:
            summary.fail(f.name, str(e))
            continue
        except DegradeError as e:  # e.g. a label smaller than the patch
            summary.fail(f.name, f"{f}: {e}")
            continue
        try:
            write_label(target, partial, palette)
        except OSError as e:
            summary.fail(f.name, f"{target}: cannot write ({e.strerror or e})")
            continue
        summary.done += 1
    summary.echo(f"{strategy}, ratio {ratio:g}, into {dst}")
    summary.exit()


def _classes_file(classes_json: str | None, gt: Path) -> Path | None:
    if classes_json:
        return Path(classes_json).resolve()
    return next((p / "classes.json" for p in gt.parents if (p / "classes.json").is_file()), None)


def _check_json_out(path: Path, record: RunRecord) -> None:
    """Refuse to replace a file that holds another evaluation's scores, or no scores at all."""
    if not path.exists():
        return
    hint = "use --overwrite to replace it, or choose another --json-out"
    try:
        old = RunRecord.from_dict(json.loads(path.read_text()).get("run"), str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, RunRecordError):
        raise click.ClickException(f"{path} exists and holds no lmae evaluate run record; refusing to replace "
                                   f"it; {hint}") from None
    diffs = old.differences(record)
    if diffs:
        raise click.ClickException(f"{path} holds the scores of another evaluation ({'; '.join(diffs)}); "
                                   f"refusing to replace them; {hint}")


@click.command()
@click.option("--pred", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--gt", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--partial", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--classes", "classes_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="classes.json (default: looked up above --gt)")
@click.option("--num-classes", default=None, type=click.IntRange(min=1))
@click.option("--json-out", default=None, type=click.Path(dir_okay=False),
              help="scores, failures and the run record (inputs, options) as JSON")
@click.option("--overwrite", is_flag=True, help="replace --json-out even when it holds another evaluation")
def evaluate(pred: str, gt: str, partial: str, classes_json: str | None, num_classes: int | None,
             json_out: str | None, overwrite: bool) -> None:
    """PA-mIoU (pixels unknown in the partial label), global mIoU, per-class IoU.  A missing,
    unreadable or wrong-size file is reported by name and the others are still scored; the
    exit code is 1 when any failed, or when nothing can be scored (no unknown pixels in the
    partial labels, or void ground truth at every one of them: the message says which)."""
    from lmae_sdk.labels import InputError, atomic_write_bytes, check_label_ids, read_label
    from lmae_sdk.metrics import CompletionMeter

    pred_dir, gt_dir, part_dir = Path(pred).resolve(), Path(gt).resolve(), Path(partial).resolve()
    cj = _classes_file(classes_json, gt_dir)
    names = json.loads(cj.read_text()).get("classes") if cj is not None else None
    n = num_classes or (len(names) if names else None)
    if n is None:
        raise click.UsageError("give --num-classes or --classes classes.json")
    if names is not None and len(names) != n:
        names = None  # --num-classes wins; the names would not match the classes
    gt_files = label_files(gt_dir)
    if not gt_files:
        raise click.ClickException(f"no ground-truth labels (*.png) in {gt_dir}")
    if not label_files(pred_dir):
        raise click.ClickException(f"no predictions (*.png) in {pred_dir}")
    pred_run = None
    try:
        found = RunRecord.read(pred_dir)
        pred_run = found.to_dict() if found is not None else None
    except RunRecordError:
        pass  # the predictions' provenance is informative here, never required
    record = RunRecord("evaluate", {"pred": str(pred_dir), "gt": str(gt_dir), "partial": str(part_dir)},
                       {"num_classes": n, "classes": str(cj) if cj else None}, info={"pred_run": pred_run})
    json_path = Path(json_out).resolve() if json_out else None
    if json_path is not None:
        writable_folder(json_path.parent, "--json-out")
        if not overwrite:
            _check_json_out(json_path, record)

    meter, summary = CompletionMeter(n), BatchSummary("evaluate", resumable=False)
    missing = []  # ground-truth labels without a prediction or partial label
    for g in gt_files:
        pf, qf = pred_dir / g.name, part_dir / g.name
        absent = [(path, what) for path, what in ((pf, "prediction"), (qf, "partial label")) if not path.is_file()]
        if absent:
            missing.append(g.name)
            summary.fail(g.name, f"{absent[0][0]}: no {absent[0][1]} for the ground-truth label {g}")
            continue
        try:
            truth, completed, part = read_label(g)[0], read_label(pf)[0], read_label(qf)[0]
            for path, arr, what in ((pf, completed, "prediction"), (qf, part, "partial label")):
                if arr.shape != truth.shape:
                    raise InputError(path, f"the {what} is {arr.shape[0]}x{arr.shape[1]}, the ground truth {g} "
                                           f"is {truth.shape[0]}x{truth.shape[1]}")
            check_label_ids(truth, n, path=g)
            check_label_ids(completed, n, path=pf)
        except InputError as e:
            summary.fail(g.name, str(e))
            continue
        meter.update(completed, truth, part)
        summary.done += 1
    gt_names = {g.name for g in gt_files}
    summary.note_unmatched([p for p in label_files(pred_dir) if p.name not in gt_names],
                           f"predictions without a ground-truth label in {gt_dir} (not scored)",
                           f"prediction without a ground-truth label in {gt_dir} (not scored)")
    empty = meter.empty_reason() if summary.done else None  # files were read, yet nothing to score
    if summary.done and empty is None:
        s = meter.summary(names)
        click.echo(f"images {summary.done}  PA-mIoU {s['pa_miou']:.2f}  PA pixel acc {s['pa_pixel_acc']:.2f}  "
                   f"global mIoU {s['global_miou']:.2f}")
        for k, v in s["pa_iou_per_class"].items():
            click.echo(f"  {k:>12s}: {'-' if v is None else f'{v:.1f}'}")
        if json_path is not None:
            s.update(images=summary.done, failures=summary.failures, missing=missing, run=record.to_dict())
            atomic_write_bytes(json_path, (json.dumps(s, indent=1) + "\n").encode())
    elif json_path is not None:
        click.echo(f"no scores: {json_path} not written", err=True)
    summary.echo(report=str(json_path) if json_path else None)
    if empty is not None:
        raise click.ClickException(f"no scores: {empty} (partial labels: {part_dir})")
    summary.exit()
