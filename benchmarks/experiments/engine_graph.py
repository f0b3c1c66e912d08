"""What each export-side graph change does to ONNX Runtime's engine speed, side by side.

The same random-weight checkpoint is exported cumulatively with each change, the way torch
writes the model before it (the concatenated forms), and every variant's encoder + decoder
is timed on the same batch (ms/image, median of ``--reps``; one variant at a time, since all
their sessions at once outgrow 23 GB):

  a. as torch writes it: GELU as x * (0.5 * (1 + erf(x / sqrt 2))), concatenations at full size
  b. + GELU regrouped so ORT fuses it (``export/onnx_passes.py``)
  c. + the refinement UNet's merges as up(conv(low)) + conv(skip) (no upsampled concatenation)
  d. + patch embeddings summed over the fuse map's channel groups (no fuse-map concatenation)
  e. + the refinement stem summed over its input groups
  f. + the per-patch logits unpatchified by one 6-D transpose, not a token transpose and a
     pixel shuffle (DepthToSpace)
  g. + the UNet's 2x upsampling by a constant scale, not to a size read from a tensor's shape
     (ORT then keeps it in its blocked layout) (= what ``lmae-export`` writes now)

Each variant runs four ways: one call on all threads, or as ``complete_batch``'s lanes (one
one-thread call per core side by side); each with the whole batch in one session call, or
sliced as the ORT backend runs a batch on CPU (``ort_backend.CPU_IMAGES_PER_CALL`` images
per call).

    python benchmarks/experiments/engine_graph.py --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID, random_checkpoint, set_threads  # noqa: E402

VARIANTS = ("a. as torch writes it", "b. + GELU regrouped", "c. + UNet merges", "d. + patch embeddings by groups",
            "e. + refinement stem by groups", "f. + logits unpatchified by one transpose",
            "g. + upsampling by a constant scale")


@contextlib.contextmanager
def concatenated_forms(level: int):
    """Undo the graph changes after ``level`` (0 = none kept ... 6 = all kept)."""
    import lmae_sdk.export.onnx_export as onnx_export
    from lmae_sdk import model as M

    saved = {(onnx_export, "gelu_for_fusion"): onnx_export.gelu_for_fusion,
             (M.UNetRefineHead, "_merge"): M.UNetRefineHead._merge, (M, "conv_over_parts"): M.conv_over_parts,
             (M.LMAE, "unpatchify"): M.LMAE.unpatchify, (M.UNetRefineHead, "_up"): M.UNetRefineHead.__dict__["_up"]}  # the staticmethod
    if level < 1:
        onnx_export.gelu_for_fusion = lambda proto: 0
    if level < 2:
        M.UNetRefineHead._merge = lambda self, block, low, skip: block(torch.cat([self._up(low, skip), skip], 1))
    if level < 5:
        def unpatchify(self, x):  # token transpose, then PixelShuffle (ONNX DepthToSpace)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *self.cfg.grid)
            return torch.nn.functional.pixel_shuffle(x, self.cfg.patch_size)

        M.LMAE.unpatchify = unpatchify
    if level < 6:
        M.UNetRefineHead._up = staticmethod(lambda x, like: torch.nn.functional.interpolate(
            x, size=like.shape[-2:], mode="bilinear", align_corners=False))
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
    from lmae_sdk.runtime.backends.ort_backend import CPU_IMAGES_PER_CALL, OrtBackend

    work = Path(a.workdir or tempfile.mkdtemp(prefix="lmae-graph-"))
    ckpt = random_checkpoint(work / f"{a.preset}.pt", a.preset, 11, (224, 288), (0.5,))
    feed = feed_for(ckpt, Path(a.data), a.batch, 0.5)
    lanes = a.threads
    # per variant, four ways to run it: one call on all threads / `lanes` one-thread calls side by
    # side (as complete_batch's lanes), each with the whole batch per session call or sliced
    modes = [(f"1 call x {a.threads} threads, whole batch", a.threads, 0, 1),
             (f"1 call x {a.threads} threads, sliced", a.threads, CPU_IMAGES_PER_CALL, 1),
             (f"{lanes} lanes x 1 thread, whole batch", 1, 0, lanes),
             (f"{lanes} lanes x 1 thread, sliced", 1, CPU_IMAGES_PER_CALL, lanes)]

    def seconds_per_image(be, n_lanes: int) -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n_lanes) as pool:
            list(pool.map(lambda _: be.run(feed), range(n_lanes)))
        return (time.perf_counter() - t0) / (n_lanes * a.batch)

    # one variant at a time (28 sessions at once, each with its batch-16 arena, outgrow 23 GB);
    # its four ways interleaved
    outs, times = [], []
    for level, name in enumerate(VARIANTS):
        with concatenated_forms(level):
            model = model_from_checkpoint(load_checkpoint(ckpt))
            torch.manual_seed(1)  # a random checkpoint's refinement output starts at zero: make it count
            torch.nn.init.normal_(model.refine.out.weight, std=0.05)
            paths = [export_onnx(model, work / f"v{level}" / f"{part}.onnx", part, 0.5)
                     for part in ("encoder", "decoder")]
        cfg = model.cfg
        row = [OrtBackend(*paths, 0.5, cfg.num_visible(0.5), cfg.graph_inputs(), "cpu", threads,
                          images_per_call=per_call) for _, threads, per_call, _ in modes]
        outs.append(row[0].run(feed))  # warm-up
        for be in row[1:]:
            be.run(feed)
        times.append([[] for _ in modes])
        for _ in range(a.reps):
            for j, (be, mode) in enumerate(zip(row, modes)):
                times[-1][j].append(seconds_per_image(be, mode[3]))
        del row
    ms = [[1e3 * float(np.median(t)) for t in row] for row in times]
    print(f"{a.preset}, batch {a.batch}, ORT, ms per image (median of {a.reps} runs, the four ways interleaved; in brackets the "
          f"speed-up vs a in the same column); sliced: {CPU_IMAGES_PER_CALL} image(s) per session call")
    print("| variant | " + " | ".join(m[0] for m in modes) + " | max abs diff vs a |")
    print("|---|" + "---|" * (len(modes) + 1))
    for name, row, out in zip(VARIANTS, ms, outs):
        cells = [f"{v:.1f} ({ms[0][j] / v:.2f}x)" for j, v in enumerate(row)]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.abs(out - outs[0]).max():.1e} |")


if __name__ == "__main__":
    main()
