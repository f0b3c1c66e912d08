"""Class-boundary nets compared as geodesic fills on a split's complete labels.

    python benchmarks/boundary_nets.py --data ../shared/data/camvid --nets A/boundaries.pt B/boundaries.pt
    python benchmarks/boundary_nets.py --smoke

Each checkpoint's net (``lmae fit-boundaries``, the ``boundaries.pt`` of a ``lmae fit`` work
folder) gives the step cost of the geodesic fill (``lmae_sdk.propagation.geodesic_nearest``),
and the fill's PA-mIoU is scored on the first ``--images`` labels of ``--split`` (train by
default: val stays for the cards) with 32-px random holes seeded ``[seed, i]``, as
``fit_boundaries`` tunes the step cost (``training.boundary_fit.tuning_holes``).  Per net: the
fill at random 0.5 and 0.3 with the step-cost weights stored in the checkpoint ("own": what
the bundle uses), and at random 0.5 the best of ``DEFAULT_WEIGHT_GRID`` ("best": the net
alone, its tuning aside).  The first row is the colour-only fill (colour weight
``lmae_sdk.propagation.TUNED_EDGE_WEIGHT``).  Give a split whose labels are complete: only
there is a net scored on where it places the boundaries that partial labels leave out.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (machine_info, out_paths, random_checkpoint, set_threads, smoke_dataset, table,  # noqa: E402
                                write_json)

KINDS = (0.5, 0.3)  # random-hole ratios, 32-px patches


def score_nets(nets: list[Path], data: Path, split: str, images: int, seed: int, log=print) -> list[dict]:
    """One row per net (and a first, colour-only row): the fill's PA-mIoU at each of
    :data:`KINDS` with its own weights, and the best of the weight grid at random 0.5."""
    from lmae_sdk.boundaries import boundaries_from_checkpoint
    from lmae_sdk.checkpoint import load_checkpoint
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.propagation import TUNED_BLUR, TUNED_EDGE_WEIGHT
    from lmae_sdk.training.boundary_fit import DEFAULT_WEIGHT_GRID, fill_score, score_weight_grid, tuning_holes
    from lmae_sdk.training.data import load_pairs

    info = load_dataset(data, (split,))
    pairs = load_pairs(info.pairs[split][:images], info.num_classes)
    if not pairs:
        raise ValueError(f"{data}: no {split} images")
    n = info.num_classes
    partials = {r: tuning_holes([lab for _, lab in pairs], seed, r) for r in KINDS}
    none = [None] * len(pairs)
    rows = [{"net": "colour only (no net)", **{f"own_random_{r:g}": fill_score(
                pairs, partials[r], none, TUNED_EDGE_WEIGHT, 0.0, TUNED_BLUR, n) for r in KINDS},
             "weights": [TUNED_EDGE_WEIGHT, 0.0, 1.0], "best_random_0.5": None, "best_weights": None}]
    for path in nets:
        ck = load_checkpoint(path)
        boundaries = boundaries_from_checkpoint(ck, source=str(path))
        if boundaries is None:
            raise ValueError(f"{path}: no boundary net in this checkpoint")
        cfg = ck["config"]
        blur = float(cfg.get("geodesic_blur", TUNED_BLUR))
        own = (float(cfg["geodesic_edge_weight"]), float(cfg["geodesic_boundary_weight"]),
               float(cfg.get("geodesic_boundary_power", 1.0)))
        maps = [boundaries(img) for img, _ in pairs]
        row = {"net": str(path), "weights": list(own),
               **{f"own_random_{r:g}": fill_score(pairs, partials[r], maps, *own[:2], blur, n, own[2]) for r in KINDS}}
        grid = score_weight_grid(pairs, partials[0.5], maps, DEFAULT_WEIGHT_GRID, blur, n)
        best = max(grid, key=grid.get)
        rows.append({**row, "best_random_0.5": grid[best], "best_weights": list(best)})
        log(f"  {path}: own {own} random 0.5 {row['own_random_0.5']:.2f}, best {best} {grid[best]:.2f}")
    return rows


def smoke_net(root: Path) -> tuple[Path, Path]:
    """A synthetic dataset and a checkpoint whose boundary net trained two steps on it."""
    from lmae_sdk.training.boundary_fit import fit_boundaries

    data = smoke_dataset(root / "data")
    stub = random_checkpoint(root / "stub.pt", num_classes=5, img_size=(96, 128))
    fit_boundaries(stub, data, root / "net.pt", max_steps=2, crop=64, tune_images=2, threads=1, bf16=False,
                   log=lambda *_: None)
    return data, root / "net.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=Path, nargs="+", help="checkpoints with a boundary net")
    ap.add_argument("--data", type=Path, help="a dataset root whose --split labels are complete")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=80, help="its first N images (fit_boundaries tunes on 80)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the nets' maps")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, a net trained two steps")
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/boundary_nets.json)")
    a = ap.parse_args(argv)
    if not a.smoke and (not a.nets or a.data is None):
        ap.error("--nets and --data are required (or --smoke)")

    set_threads(a.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            data, nets = smoke_net(Path(tmp)) if a.smoke else (a.data, None)
            rows = score_nets([nets] if a.smoke else a.nets, data, a.split, 2 if a.smoke else a.images, a.seed)
        except (ValueError, OSError) as e:  # the SDK's input errors name the file and the problem
            print(f"boundary_nets: {e}", file=sys.stderr)
            return 2
    print(table(rows, [("net", "boundary net"), ("own_random_0.5", "random 0.5 (own weights)"),
                       ("own_random_0.3", "random 0.3 (own weights)"), ("best_random_0.5", "random 0.5 (best weights)")]))
    json_path, _ = out_paths(a.out, "boundary_nets", a.smoke)
    write_json(json_path, {"benchmark": "boundary_nets", "smoke": a.smoke, "args": vars(a),
                           "machine": machine_info(threads=a.threads), "seconds": time.perf_counter() - t0,
                           "dataset": str(data), "split": a.split, "results": rows})
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
