"""Agreement of two completions of the same partial labels (e.g. torch vs ONNX Runtime
output folders of ``lmae complete``): the share of filled pixels with the same class.

    python benchmarks/agreement.py --a out_torch/ --b out_ort/ --partial partial/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmae_sdk.labels import UNKNOWN, read_label  # noqa: E402


def agreement(a_dir: Path, b_dir: Path, partial_dir: Path) -> dict:
    same = total = images = 0
    worst = (1.0, None)
    for p in sorted(partial_dir.glob("*.png")):
        a, b = a_dir / p.name, b_dir / p.name
        if not (a.is_file() and b.is_file()):
            continue
        hole = read_label(p)[0] == UNKNOWN
        la, lb = read_label(a)[0][hole], read_label(b)[0][hole]
        s = int((la == lb).sum())
        same, total, images = same + s, total + la.size, images + 1
        if la.size and s / la.size < worst[0]:
            worst = (s / la.size, p.name)
    return {"images": images, "filled_pixels": total, "agreement_pct": 100.0 * same / max(total, 1),
            "worst_image": worst[1], "worst_image_agreement_pct": 100.0 * worst[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, type=Path)
    ap.add_argument("--b", required=True, type=Path)
    ap.add_argument("--partial", required=True, type=Path)
    ap.add_argument("--min-pct", type=float, default=99.9, help="exit 1 below this agreement")
    args = ap.parse_args(argv)
    r = agreement(args.a, args.b, args.partial)
    print(json.dumps(r, indent=1))
    return 0 if r["agreement_pct"] >= args.min_pct else 1


if __name__ == "__main__":
    raise SystemExit(main())
