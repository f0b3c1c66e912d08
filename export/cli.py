"""``lmae-export``: checkpoints -> model bundle (ONNX, optionally TensorRT)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click


def _ratios(_ctx, _param, value: str | None) -> list[float] | None:
    if not value:
        return None
    try:
        out = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.5,0.6,0.7, got {value!r}") from None
    bad = [r for r in out if not 0.0 <= r < 1.0]
    if bad:
        raise click.BadParameter(f"mask ratios must be in [0, 1): {bad}")
    return out


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _parity(p: dict) -> str:
    if not p or not p.get("verified"):
        return "not verified"
    return f"{p['argmax_agreement']:.4%} argmax, max|d| {p['max_abs_diff']:.2e}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", "ckpts", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint (.pt); repeat to put several into one bundle.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle folder (default: <ckpt stem>_bundle next to the first checkpoint).")
@click.option("--mask-ratios", callback=_ratios, default=None,
              help="Comma-separated mask ratios, one engine each (default: the checkpoint's).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--legacy", is_flag=True, help="Use the TorchScript exporter (dynamo=False) instead of dynamo.")
@click.option("--fp16", is_flag=True, help="Also export fp16 engines (ONNX: fp16 compute, fp32 I/O).")
@click.option("--trt", is_flag=True, help="Also build TensorRT 10 engines (needs TensorRT and a CUDA GPU).")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="TensorRT optimization profile max batch.")
@click.option("--workspace-gb", type=float, default=4.0, show_default=True, help="TensorRT builder workspace.")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against torch.")
@click.option("--data", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Dataset folder: also verify parity on real (image, label) pairs.")
@click.option("--no-lint", is_flag=True, help="Skip polygraphy lint in the TensorRT readiness check.")
@click.option("--boundary-flip/--no-boundary-flip", "boundary_flip", default=None,
              help="Whether the boundary graph averages each image's map with its mirror image's (default: as "
                   "the net was fitted). --no-boundary-flip halves the boundary graph's work for a small loss "
                   "in quality (benchmarks/RESULTS.md, section 3).")
@click.option("--boundary-int8", is_flag=True,
              help="Also write the boundary graph in int8, calibrated on --data's train images (needs --data); "
                   "ONNX Runtime runs it on CPUs, about twice as fast (benchmarks/RESULTS.md, section 3).")
@click.option("--show-ops", is_flag=True, help="Print the op list of each exported graph.")
@click.option("-q", "--quiet", is_flag=True)
def main(ckpts, out, mask_ratios, opset, legacy, fp16, trt, max_batch, workspace_gb, no_verify, data, no_lint,
         boundary_flip, boundary_int8, show_ops, quiet) -> None:
    """Export L-MAE checkpoints into a model bundle (manifest.json + graphs)."""
    from lmae_sdk.extras import MissingExtra, require_torch  # noqa: PLC0415

    try:
        require_torch("lmae-export")
    except MissingExtra as e:
        click.echo(f"lmae-export: error: {e}", err=True)
        sys.exit(2)
    from lmae_sdk.bundle import BundleError  # noqa: PLC0415
    from lmae_sdk.checkpoint import CheckpointError  # noqa: PLC0415

    from lmae_sdk.trt_engine import TensorRTUnavailable, TrtEngineError  # noqa: PLC0415

    from .api import ExportOptions, export_bundle, graph_ops  # noqa: PLC0415
    from .onnx_export import ExportError, op_list  # noqa: PLC0415

    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    exported: list[dict] = []
    t0 = time.time()
    try:
        opts = ExportOptions(mask_ratios=mask_ratios, opset=opset, fp16=fp16, trt=trt, max_batch=max_batch,
                             verify=not no_verify, data=data, legacy=legacy, workspace_gb=workspace_gb,
                             lint=not no_lint, boundary_flip_average=boundary_flip, boundary_int8=boundary_int8)
        man = export_bundle(list(ckpts), out, opts, log=log, exported=exported)
    except (TensorRTUnavailable, TrtEngineError, BundleError, CheckpointError, ExportError, ValueError) as e:
        click.echo(f"lmae-export: error: {e}", err=True)
        sys.exit(2)
    rows = [("engine", "K", "files", "size", "parity", "time")]
    for e in exported:
        size = e["encoder"]["bytes"] + e["decoder"]["bytes"]
        rows.append((e["name"], str(e["num_visible"]), f"{e['encoder']['file']}, {e['decoder']['file']}",
                     _size(size), _parity(e.get("parity", {})), f"{e.get('export_seconds', 0):.1f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo(f"bundle {man.root} ({len(man.engines)} engines; {len(exported)} written in {time.time() - t0:.1f}s)")
    for i, r in enumerate(rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            click.echo("  ".join("-" * w for w in widths))
    graph = man.data.get("boundary_graph")
    if graph:
        b = man.data["boundary"]
        click.echo(f"boundary graph {graph['file']} ({b['size'][0]}x{b['size'][1]}, {_size(graph['bytes'])}, "
                   f"max |diff| vs torch {graph['parity']['max_abs_diff']:.2g}); {_runs_on(graph)}")
        int8 = graph.get("int8")
        if int8:
            click.echo(f"boundary graph {int8['file']} (int8, {_size(int8['bytes'])}, mean |diff| vs torch "
                       f"{int8['parity']['mean_abs_diff']:.2g} on {int8['parity']['images']} images); "
                       f"runs on ONNX Runtime's CPU provider")
        if show_ops:
            click.echo(f"boundary ops: {' '.join(op_list(man.root / graph['file']))}")
    fusion = man.data.get("fusion_graph")
    if fusion:
        click.echo(f"fusion graph {fusion['file']} (pixel fusion's row scoring, {_size(fusion['bytes'])}, "
                   f"max |diff| vs the host {fusion['parity']['max_abs_diff']:.2g}); {_runs_on(fusion)}")
        if show_ops:
            click.echo(f"fusion ops: {' '.join(op_list(man.root / fusion['file']))}")
    if show_ops:
        for e in exported:
            for part, ops in graph_ops(man.root, e).items():
                click.echo(f"{e['name']} {part} ops: {' '.join(ops)}")
    for e in exported:
        for part, r in (e.get("readiness") or {}).items():
            if not r["ok"]:
                click.echo(f"warning: {e['name']} {part} is not TensorRT-ready: {r['problems']}", err=True)


def _runs_on(graph: dict) -> str:
    """Where the runtime runs a bundle's boundary or fusion graph."""
    engine = graph.get("tensorrt")
    if not engine:
        return "runs on ONNX Runtime's CUDA provider (and on CPUs with --precision fp32)" if graph.get("int8") else \
            "runs on ONNX Runtime for every engine"
    return (f"TensorRT engine {engine['file']} (max |diff| vs ONNX Runtime {engine['parity']['max_abs_diff']:.2g}) "
            f"for the tensorrt engines, ONNX Runtime for the others")


if __name__ == "__main__":
    main()

