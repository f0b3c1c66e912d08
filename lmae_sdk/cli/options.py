"""Parsers for the commands' option values (click raises BadParameter with the reason), the
check that an output folder lies outside the input folders, and the check that a command's
extra is installed."""
from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

from lmae_sdk.degrade import DEGRADE_STRATEGIES


def parse_size(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{s!r}: expected HxW, e.g. 224x288") from None
    return h, w


def fraction(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback: the option's value must be a number in [0, 1] (NaN is refused too)."""
    from lmae_sdk.inputs import check_fraction

    if value is None:
        return None
    try:
        return check_fraction(param.name or "value", value)
    except ValueError:
        raise click.BadParameter(f"{value}: expected a number in [0, 1]") from None


def parse_ratios(s: str) -> list[tuple[float, ...]]:
    """'0.5' -> one model; '0.5,0.7' -> one model per ratio; 'LO:HI[:STEP]' -> one model
    over LO, LO + STEP, ..., HI (STEP 0.1 by default; a range model, exported later at
    several K)."""
    out = []
    for part in s.split(","):
        part = part.strip()
        try:
            if ":" in part:
                lo, hi, *rest = (float(v) for v in part.split(":"))
                step = rest[0] if rest else 0.1
                if len(rest) > 1 or step <= 0 or hi < lo:
                    raise ValueError
                out.append(tuple(round(float(v), 3) for v in np.arange(lo, hi + 1e-9, step)))
            else:
                out.append((float(part),))
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected a ratio (0.5) or a range LO:HI[:STEP] (0.25:0.75:0.25)") \
                from None
    for r in out:
        if not all(0 < v < 1 for v in r):
            raise click.BadParameter(f"mask ratios must be in (0, 1): {s}")
    return out


def parse_mix(s: str | None, names: tuple[str, ...] | None = None) -> dict[str, float] | None:
    if not s:
        return None
    from lmae_sdk.masking import STRATEGIES

    names = names or STRATEGIES
    out = {}
    for part in s.split(","):
        name, _, w = part.partition("=")
        if name.strip() not in names or not w:
            raise click.BadParameter(f"{part!r}: expected NAME=WEIGHT with NAME in {names}")
        out[name.strip()] = float(w)
    return out


def parse_settings(s: str) -> tuple[tuple[str, float], ...]:
    """"random:0.5,objects:0.5" -> ((strategy, ratio), ...)."""
    settings = []
    for part in filter(None, s.split(",")):
        strategy, _, ratio = part.partition(":")
        if strategy not in DEGRADE_STRATEGIES:
            raise click.BadParameter(f"{strategy!r} is not one of {DEGRADE_STRATEGIES}", param_hint="--setting")
        settings.append((strategy, float(ratio or 0.5)))
    return tuple(settings)


def require_torch(what: str) -> None:
    """A click error naming the extra to install when torch is missing."""
    from lmae_sdk.extras import MissingExtra
    from lmae_sdk.extras import require_torch as check

    try:
        check(what)
    except MissingExtra as e:
        raise click.ClickException(str(e)) from None


def refuse_out_inside(out: str | os.PathLike, inputs: dict[str, str | os.PathLike], option: str = "--out") -> None:
    """A click.BadParameter (``option``) naming both folders when the output folder ``out`` is
    one of the ``inputs`` ({option name: folder}, e.g. ``{"--labels": labels}``) or lies
    inside one: inputs are never modified.  Links are resolved first."""
    target = Path(out).resolve()
    for name, folder in inputs.items():
        source = Path(folder).resolve()
        if target == source or source in target.parents:
            where = "is" if target == source else "is inside"
            raise click.BadParameter(f"{target} {where} the {name} folder {source}; inputs are never modified: "
                                     f"choose a folder outside it", param_hint=option)
