"""What each export-side graph change does to ONNX Runtime's engine speed, side by side.

The same random-weight checkpoint is exported cumulatively with each change, the way torch
writes the model before it (the concatenated forms), and every variant's encoder + decoder
is timed on the same batch, interleaved (ms/image, median of ``--reps``):

  a. as torch writes it: GELU as x * (0.5 * (1 + erf(x / sqrt 2))), concatenations at full size
  b. + GELU regrouped so ORT fuses it (``export/onnx_passes.py``)
  c. + the refinement UNet's merges as up(conv(low)) + conv(skip) (no upsampled concatenation)
  d. + patch embeddings summed over the fuse map's channel groups (no fuse-map concatenation)
  e. + the refinement stem summed over its input groups
  f. + the per-patch logits unpatchified by one 6-D transpose, not a token transpose and a
     pixel shuffle (DepthToSpace)
  g. + the UNet's 2x upsampling by a constant scale, not to a size read from a tensor's shape
     (ORT then keeps it in its blocked layout) (= what ``lmae-export`` writes now)

Each variant runs twice: the whole batch in one session call, and sliced as the ORT backend
runs a batch on CPU (``ort_backend.CPU_IMAGES_PER_CALL`` images per call).

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
    backends = []  # per variant: (the whole batch per call, sliced)
    for level, name in enumerate(VARIANTS):
        with concatenated_forms(level):
            model = model_from_checkpoint(load_checkpoint(ckpt))
            torch.manual_seed(1)  # a random checkpoint's refinement output starts at zero: make it count
            torch.nn.init.normal_(model.refine.out.weight, std=0.05)
            paths = [export_onnx(model, work / f"v{level}" / f"{part}.onnx", part, 0.5)
                     for part in ("encoder", "decoder")]
        cfg = model.cfg
        backends.append([OrtBackend(*paths, 0.5, cfg.num_visible(0.5), cfg.graph_inputs(), "cpu", a.threads,
                                    images_per_call=k) for k in (0, CPU_IMAGES_PER_CALL)])

    outs = [be.run(feed) for pair in backends for be in pair][::2]  # warm-up
    times = [[[], []] for _ in backends]
    for _ in range(a.reps):
        for i, pair in enumerate(backends):
            for j, be in enumerate(pair):
                t0 = time.perf_counter()
                be.run(feed)
                times[i][j].append(time.perf_counter() - t0)
    base = np.median(times[0][0])
    ms = lambda ts: 1e3 * np.median(ts) / a.batch  # noqa: E731
    print(f"{a.preset}, batch {a.batch}, ORT {a.threads} thread(s), median of {a.reps} interleaved runs; "
          f"sliced: {CPU_IMAGES_PER_CALL} image(s) per call")
    print("| variant | ms/image, whole batch | speed-up vs a | ms/image, sliced | speed-up vs a | "
          "max abs diff vs a |\n|---|---|---|---|---|---|")
    for name, (whole, sliced), out in zip(VARIANTS, times, outs):
        print(f"| {name} | {ms(whole):.1f} | {base / np.median(whole):.2f}x | {ms(sliced):.1f} | "
              f"{base / np.median(sliced):.2f}x | {np.abs(out - outs[0]).max():.1e} |")


if __name__ == "__main__":
    main()
