"""What each export-side graph change does to ONNX Runtime's engine speed, side by side.

The same random-weight checkpoint is exported cumulatively with each change, the way torch
writes the model before it (the concatenated forms), and every variant's encoder + decoder
is timed on the same batch, interleaved (ms/image, median of ``--reps``):

  a. as torch writes it: GELU as x * (0.5 * (1 + erf(x / sqrt 2))), concatenations at full size
  b. + GELU regrouped so ORT fuses it (``export/onnx_passes.py``)
  c. + the refinement UNet's merges as up(conv(low)) + conv(skip) (no upsampled concatenation)
  d. + patch embeddings summed over the fuse map's channel groups (no fuse-map concatenation)
  e. + the refinement stem summed over its input groups (= what ``lmae-export`` writes now)

    python benchmarks/experiments/engine_graph.py --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID, random_checkpoint, set_threads  # noqa: E402

VARIANTS = ("a. as torch writes it", "b. + GELU regrouped", "c. + UNet merges", "d. + patch embeddings by groups",
            "e. + refinement stem by groups")


@contextlib.contextmanager
def concatenated_forms(level: int):
    """Undo the graph changes after ``level`` (0 = none kept ... 4 = all kept)."""
    import lmae_sdk.export.onnx_export as onnx_export
    from lmae_sdk import model as M

    saved = {(onnx_export, "gelu_for_fusion"): onnx_export.gelu_for_fusion,
             (M.UNetRefineHead, "_merge"): M.UNetRefineHead._merge, (M, "conv_over_parts"): M.conv_over_parts}
    if level < 1:
        onnx_export.gelu_for_fusion = lambda proto: 0
    if level < 2:
        M.UNetRefineHead._merge = lambda self, block, low, skip: block(torch.cat([self._up(low, skip), skip], 1))
    real = M.conv_over_parts

    def conv_over_parts(conv, parts):  # the stem is the 1x1 call, the patch embeddings the 16x16 ones
        undo = level < 4 if conv.kernel_size == (1, 1) else level < 3
        return conv(torch.cat(parts, 1)) if undo else real(conv, parts)

    M.conv_over_parts = conv_over_parts
    try:
        yield
    finally:
        for (obj, name), fn in saved.items():
            setattr(obj, name, fn)


def feed_for(ckpt: Path, data: Path, batch: int, mask_ratio: float) -> dict[str, np.ndarray]:
    from benchmarks.throughput import engine_feed, make_inputs
    from lmae_sdk.runtime.completer import LMAECompleter

    completer = LMAECompleter.load(ckpt, backend="torch", threads=1)
    pairs, _ = make_inputs(Path(tempfile.mkdtemp(prefix="lmae-graph-")), batch, (360, 480),
                           completer.num_classes, 0.35, str(data) if data.exists() else None)
    return engine_feed(completer, pairs, mask_ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--data", default=str(DEFAULT_CAMVID), help="inputs from its val split (synthetic if absent)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    set_threads(a.threads)
    from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint
    from lmae_sdk.export.onnx_export import export_onnx
    from lmae_sdk.runtime.backends.ort_backend import ort_session

    work = Path(a.workdir or tempfile.mkdtemp(prefix="lmae-graph-"))
    ckpt = random_checkpoint(work / f"{a.preset}.pt", a.preset, 11, (224, 288), (0.5,))
    feed = feed_for(ckpt, Path(a.data), a.batch, 0.5)
    sessions = []
    for level, name in enumerate(VARIANTS):
        with concatenated_forms(level):
            model = model_from_checkpoint(load_checkpoint(ckpt))
            torch.manual_seed(1)  # a random checkpoint's refinement output starts at zero: make it count
            torch.nn.init.normal_(model.refine.out.weight, std=0.05)
            parts = {}
            for part in ("encoder", "decoder"):
                path = export_onnx(model, work / f"v{level}" / f"{part}.onnx", part, 0.5)
                sess = ort_session(path, "cpu", a.threads)
                parts[part] = (sess, [i.name for i in sess.get_inputs()])
        sessions.append(parts)

    def run(parts):
        enc, enc_in = parts["encoder"]
        latent = enc.run(None, {k: feed[k] for k in enc_in})[0]
        dec, dec_in = parts["decoder"]
        return dec.run(None, {k: ({**feed, "latent": latent})[k] for k in dec_in})[0]

    outs = [run(p) for p in sessions]  # warm-up
    times = [[] for _ in sessions]
    for _ in range(a.reps):
        for i, p in enumerate(sessions):
            t0 = time.perf_counter()
            run(p)
            times[i].append(time.perf_counter() - t0)
    base = np.median(times[0])
    print(f"{a.preset}, batch {a.batch}, ORT {a.threads} thread(s), median of {a.reps} interleaved runs")
    print("| variant | ms/image | speed-up vs a | max abs diff vs a |\n|---|---|---|---|")
    for name, ts, out in zip(VARIANTS, times, outs):
        print(f"| {name} | {1e3 * np.median(ts) / a.batch:.1f} | {base / np.median(ts):.2f}x | "
              f"{np.abs(out - outs[0]).max():.1e} |")


if __name__ == "__main__":
    main()
