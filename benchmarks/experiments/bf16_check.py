"""One-off research check (session 8): does bf16 autocast compute what float32 computes on
this machine, for a patchify conv and for a trained checkpoint?  Not a benchmark (no smoke
mode, not run by CI); kept so its figures in benchmarks/RESULTS.md have a command.

    python benchmarks/experiments/bf16_check.py --convs
    python benchmarks/experiments/bf16_check.py --ckpt runs/s8/base.last.pt --data ../shared/data/camvid --unpatched

``--convs``: the relative error of bf16 autocast against float32 for Conv2d layers of the
model's shapes (kernel = stride, 1..24 input channels).  ``--ckpt``: on training samples
made as in training (crop, holes, masking), the completion loss and pixel accuracy of the
model run in float32 and under bf16 autocast, then each layer's relative error
(``training.amp.layer_errors``) for the first batch, those above 2%, and how far each
parameter's gradient moves (``training.amp.gradient_errors``).  ``--unpatched`` runs the
patch embeddings as before the session-8 fix (their conv in bf16 too), as the run that
found the problem trained them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._common import DEFAULT_CAMVID  # noqa: E402
from lmae_sdk.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from lmae_sdk.model import PatchEmbed  # noqa: E402
from lmae_sdk.training.amp import gradient_errors, layer_errors  # noqa: E402
from lmae_sdk.training.data import CompletionTrainSet, SampleSpec, collate, load_pairs  # noqa: E402
from lmae_sdk.training.datasets import load_dataset  # noqa: E402
from lmae_sdk.training.loss import completion_loss  # noqa: E402


def conv_errors() -> None:
    torch.manual_seed(0)
    for kernel, size in ((16, (224, 288)), (8, (64, 64)), (4, (64, 64)), (3, (64, 64))):
        bad = []
        for in_chans in range(1, 25):
            conv = torch.nn.Conv2d(in_chans, 64, kernel, stride=kernel if kernel > 3 else 1)
            x = torch.randn(2, in_chans, *size)
            err = layer_errors(conv, lambda: conv(x))[-1][1]
            if err > 0.02:
                bad.append(f"{in_chans} ({err:.2f})")
        stride = kernel if kernel > 3 else 1
        print(f"Conv2d kernel {kernel} stride {stride}: bf16 wrong (> 2%) for in_channels {', '.join(bad) or 'none'}")


def checkpoint_errors(ckpt_path: str, data: str, batches: int) -> None:
    ck = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ck).eval()
    cfg = model.cfg
    info = load_dataset(data, ("train",))
    pairs = load_pairs(info.pairs["train"][: 8 * batches], cfg.num_classes)
    spec = SampleSpec(mask_ratios=(0.5,), label_resize=ck["label_resize"], background_index=ck.get("background_index"))
    samples = CompletionTrainSet(pairs, cfg, spec, 8, seed=0)
    samples.epoch = 3
    def run(b: dict) -> torch.Tensor:
        return model(b["image"], b["label_planes"], b["ids_keep"], b["ids_mask"], b["ids_restore"], b.get("prior"))

    def loss(b: dict, logits: torch.Tensor) -> torch.Tensor:
        return completion_loss(logits.float(), b["target"], b["complete"], None, 0.1)

    chunks = [collate([samples[i] for i in range(s, min(s + 8, len(samples)))]) for s in range(0, len(samples), 8)]
    print("batch  float32 loss / acc   bf16 loss / acc")
    for k, b in enumerate(chunks):
        scored = b["complete"] & (b["target"] < cfg.num_classes)
        row = []
        for amp in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = run(b).float()
            acc = (logits.argmax(1)[scored] == b["target"][scored]).float().mean().item()
            row.append(f"{loss(b, logits).item():.4f} / {100 * acc:.1f}")
        print(f"{k:5d}  {row[0]:>19s}   {row[1]:>15s}")
    first = chunks[0]
    print("layers whose output bf16 autocast moves by > 2% (relative), in the order they run:")
    for name, err in layer_errors(model, lambda: run(first)):
        if err > 0.02:
            print(f"  {name:40s} {err:.3f}")
    grads = gradient_errors(model, lambda: loss(first, run(first)))
    worst = max(grads, key=lambda t: t[1])
    print(f"parameter gradients: {sum(e > 0.05 for _, e in grads)} of {len(grads)} move by > 5%; "
          f"largest {worst[1]:.4f} ({worst[0]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--convs", action="store_true", help="patchify convs of the model's shapes")
    ap.add_argument("--ckpt", default=None, help="a training checkpoint to run both ways")
    ap.add_argument("--data", default=str(DEFAULT_CAMVID))
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--unpatched", action="store_true", help="patch embeddings without the float32 fix")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.unpatched:
        PatchEmbed.forward = lambda self, x: self.proj(x).flatten(2).transpose(1, 2)
    print(f"torch {torch.__version__}; oneDNN {torch.backends.mkldnn.is_available() and 'on' or 'off'}")
    if args.convs:
        conv_errors()
    if args.ckpt:
        checkpoint_errors(args.ckpt, args.data, args.batches)
    if not (args.convs or args.ckpt):
        ap.error("give --convs and/or --ckpt")


if __name__ == "__main__":
    main()
