"""A bundle on any kinds of hole, scored exactly as its model card scores it.

    python benchmarks/hole_kinds.py --bundle runs/fit2h --data ../shared/data/camvid
    python benchmarks/hole_kinds.py --bundle runs/fit2h --data ../shared/data/camvid --kinds random:0.5,bands:0.1
    python benchmarks/hole_kinds.py --smoke

The card's own function (``lmae_sdk.recipe.card_eval.score_protocols``): the same val images, the
same partial labels (``lmae_sdk.degrade.degrade`` seeded per file name, as ``lmae degrade --seed
0`` makes them), the completer beside nearest-label fill and the geodesic fill, ONNX Runtime
with one-thread engines in ``--lanes`` lanes.  The default kinds are the seven beyond the card's:
background-first and label-first holes, random 0.9, wide bands along class boundaries, fewer
whole objects and smaller blocks.  Reported per kind: PA-mIoU of the three methods and the
completer's unknown-area pixel accuracy; the log line of each kind also gives the completer's
seconds per image.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (machine_info, out_paths, random_checkpoint, smoke_dataset, table,  # noqa: E402
                                write_json)
from lmae_sdk.degrade import DEGRADE_STRATEGIES  # noqa: E402

BEYOND_THE_CARD = "background:0.5,label:0.5,random:0.9,bands:0.6,bands:0.9,objects:0.25,blocks:0.3"


def parse_kinds(text: str) -> list[tuple[str, float]]:
    """``STRATEGY:RATIO[,...]`` -> [(strategy, ratio)]; ValueError naming the bad part."""
    kinds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        strategy, _, ratio = part.partition(":")
        try:
            value = float(ratio)
        except ValueError:
            value = -1.0
        if strategy not in DEGRADE_STRATEGIES or not 0.0 < value < 1.0:
            raise ValueError(f"--kinds: {part!r} is not STRATEGY:RATIO with a strategy of "
                             f"{', '.join(DEGRADE_STRATEGIES)} and a ratio between 0 and 1")
        kinds.append((strategy, value))
    if not kinds:
        raise ValueError("--kinds: no kind of hole given")
    return kinds


def smoke_bundle(root: Path) -> tuple[Path, Path]:
    """A synthetic dataset and a random-weight tiny model exported to an ONNX bundle."""
    from lmae_sdk.export.api import ExportOptions, export_bundle

    data = smoke_dataset(root / "data")
    ckpt = random_checkpoint(root / "random.pt", img_size=(96, 128), mask_ratios=(0.5,))
    export_bundle([ckpt], root / "bundle", ExportOptions(verify=False, lint=False), log=lambda *_: None)
    return data, root / "bundle"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a bundle folder (lmae fit's --out, lmae-export's)")
    ap.add_argument("--data", type=Path, help="the dataset root: its val split is scored")
    ap.add_argument("--kinds", default=BEYOND_THE_CARD, help="STRATEGY:RATIO[,...] (default: %(default)s)")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--limit", type=int, default=200, help="first N val images")
    ap.add_argument("--lanes", type=int, default=2, help="parallel lanes of one-thread engines")
    ap.add_argument("--seed", type=int, default=0, help="the partial labels' seed (the card's: 0)")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, random tiny model, two kinds")
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/hole_kinds.json)")
    a = ap.parse_args(argv)
    if not a.smoke and (a.bundle is None or a.data is None):
        ap.error("--bundle and --data are required (or --smoke)")

    from lmae_sdk.recipe.card_eval import load_val_images, load_warm_completer, score_protocols

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            kinds = parse_kinds("random:0.5,bands:0.1" if a.smoke else a.kinds)
            data_root, bundle = smoke_bundle(Path(tmp)) if a.smoke else (a.data, a.bundle)
            info, data = load_val_images(data_root, a.layout, a.limit)
            if not data:
                raise ValueError(f"{data_root}: no val images")
            completer = load_warm_completer(bundle, data)
        except (ValueError, OSError) as e:  # the SDK's input errors name the file and the problem
            print(f"hole_kinds: {e}", file=sys.stderr)
            return 2
        rows, _, _ = score_protocols(completer, data, info.class_names, a.lanes, a.seed, protocols=kinds)
    print(table(rows, [("protocol", "kind of hole"), ("completer", "completer"), ("nearest", "nearest fill"),
                       ("geodesic", "geodesic fill"), ("completer_pixel_acc", "completer px acc")]))
    json_path, _ = out_paths(a.out, "hole_kinds", a.smoke)
    write_json(json_path, {"benchmark": "hole_kinds", "smoke": a.smoke, "args": vars(a),
                           "machine": machine_info(threads=a.lanes), "seconds": time.perf_counter() - t0,
                           "bundle": str(bundle), "dataset": str(data_root), "images": len(data),
                           "results": rows})
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
