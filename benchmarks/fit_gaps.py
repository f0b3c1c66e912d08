"""Fits on partial labels against fits on complete labels, kind by kind, with the spread of refitting.

    python benchmarks/hole_kinds.py --bundle C1 --data ../shared/data/camvid --kinds K --out c1.json  # each bundle
    python benchmarks/fit_gaps.py --reference c1.json c2.json --fits r1.json r2.json --within 1.0

Reads ``hole_kinds.py``'s JSON of each bundle (the same kinds, the same val images).  For each kind of
hole that every file scored: each reference fit's and each fit's PA-mIoU, the two groups' means and the
gap of the means (fits minus references).  Below the table, for each fit, the kinds on which it is
within ``--within`` of the reference mean; and, with two or more references, the same for each
reference against the mean of the others: one recipe refitted lands that far from itself, the floor
under any "within X of a complete-label fit" target.
"""
from __future__ import annotations

import argparse
import json
import sys
from statistics import fmean as mean
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import fmt, machine_info, out_paths, table, write_json  # noqa: E402


def read_scores(path: Path) -> dict[str, float]:
    """{kind: completer PA-mIoU} of one ``hole_kinds.py`` JSON; ValueError naming the file."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("benchmark") != "hole_kinds" or not isinstance(doc.get("results"), list):
        raise ValueError(f"{path}: not the JSON of benchmarks/hole_kinds.py")
    scores = {r["protocol"]: float(r["completer"]) for r in doc["results"]
              if isinstance(r, dict) and r.get("completer") is not None and "protocol" in r}
    if not scores:
        raise ValueError(f"{path}: no scored kind of hole")
    return scores


def column_names(paths: list[Path]) -> list[str]:
    """Each file's stem, or its path where two stems are the same."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths)]


def within(scores: dict[str, float], target: dict[str, float], kinds: list[str], margin: float) -> dict:
    """How a fit's scores stand against target scores: the kinds within ``margin`` below (or above)."""
    gaps = {k: scores[k] - target[k] for k in kinds}
    worst = min(kinds, key=lambda k: gaps[k])
    return {"kinds_within": [k for k in kinds if gaps[k] >= -margin], "of": len(kinds),
            "worst_kind": worst, "worst_gap": round(gaps[worst], 2)}


def compare(references: dict[str, dict[str, float]], fits: dict[str, dict[str, float]],
            margin: float) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    """(rows per kind, each fit against the reference mean, each reference against the others' mean)."""
    every = [*references.values(), *fits.values()]
    kinds = [k for k in next(iter(references.values())) if all(k in s for s in every)]
    if not kinds:
        raise ValueError("the files share no kind of hole: score every bundle with the same --kinds")
    ref_mean = {k: mean([s[k] for s in references.values()]) for k in kinds}
    fit_mean = {k: mean([s[k] for s in fits.values()]) for k in kinds}
    rows = []
    for k in kinds:
        row = {"protocol": k, **{f"reference {n}": s[k] for n, s in references.items()},
               "reference_mean": round(ref_mean[k], 2), **{f"fit {n}": s[k] for n, s in fits.items()},
               "fits_mean": round(fit_mean[k], 2), "gap": round(fit_mean[k] - ref_mean[k], 2)}
        row["within"] = row["gap"] >= -margin
        rows.append(row)
    mean_row = {"protocol": "mean of the kinds", **{key: round(mean([r[key] for r in rows]), 2)
                                                    for key in rows[0] if key not in ("protocol", "within")}}
    rows.append(mean_row)
    fit_standing = {n: within(s, ref_mean, kinds, margin) for n, s in fits.items()}
    fit_standing["the fits' mean"] = within(fit_mean, ref_mean, kinds, margin)
    refit = {}
    if len(references) > 1:
        for n, s in references.items():
            others = [o for m, o in references.items() if m != n]
            refit[n] = within(s, {k: mean([o[k] for o in others]) for k in kinds}, kinds, margin)
    return rows, fit_standing, refit


def standing_line(name: str, s: dict, margin: float, against: str) -> str:
    return (f"{name}: within {margin:g} of {against} on {len(s['kinds_within'])} of {s['of']} kinds "
            f"(furthest below: {s['worst_kind']} {fmt(s['worst_gap'])})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, nargs="+", required=True,
                    help="hole_kinds.py JSON of each complete-label fit")
    ap.add_argument("--fits", type=Path, nargs="+", required=True, help="hole_kinds.py JSON of each fit to compare")
    ap.add_argument("--within", type=float, default=1.0, help="the margin in PA-mIoU points (default: %(default)s)")
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/fit_gaps.json)")
    a = ap.parse_args(argv)
    try:
        ref_names, fit_names = column_names(a.reference), column_names(a.fits)
        references = {n: read_scores(p) for n, p in zip(ref_names, a.reference)}
        fits = {n: read_scores(p) for n, p in zip(fit_names, a.fits)}
        rows, fit_standing, refit = compare(references, fits, a.within)
    except ValueError as e:
        print(f"fit_gaps: {e}", file=sys.stderr)
        return 2
    cols = ([("protocol", "kind of hole")] + [(f"reference {n}", n) for n in references]
            + [("reference_mean", "reference mean")] + [(f"fit {n}", n) for n in fits]
            + [("fits_mean", "fits' mean"), ("gap", "gap")])
    print(table(rows, cols))
    for n, s in fit_standing.items():
        print(standing_line(n, s, a.within, "the reference mean"))
    for n, s in refit.items():
        print(standing_line(n, s, a.within, "the other references' mean") + "  (refitting's spread)")
    json_path, _ = out_paths(a.out, "fit_gaps", False)
    write_json(json_path, {"benchmark": "fit_gaps", "args": vars(a), "machine": machine_info(), "within": a.within,
                           "results": rows, "fits": fit_standing, "refitting": refit})
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
