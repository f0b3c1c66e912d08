"""``lmae fit`` (a labelled dataset -> a verified bundle with its model card, within a time
budget) and ``lmae info`` (what a bundle is: its card, or its manifest's summary)."""
from __future__ import annotations

import re

import click

from lmae_sdk.cli.options import require_torch
from lmae_sdk.datasets import LAYOUTS


def parse_budget(value: str) -> float:
    """'2h', '30m', '90' (minutes), '1h30m' -> minutes."""
    text = value.strip().lower()
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m?)?", text)
    if not text or not m or not any(m.groups()):
        raise click.BadParameter(f"{value!r}: expected a duration such as 2h, 30m, 1h30m or 45 (minutes)",
                                 param_hint="--budget")
    minutes = float(m.group(1) or 0) * 60 + float(m.group(2) or 0)
    if minutes < 1:
        raise click.BadParameter(f"{value!r}: at least 1 minute (20m gives a usable completer)",
                                 param_hint="--budget")
    return minutes


@click.command("fit")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="dataset root, in any layout lmae train reads (train and val splits)")
@click.option("--out", required=True, help="the bundle folder to write (replaced only if an earlier fit wrote it)")
@click.option("--budget", default="2h", show_default=True, help="wall time for the whole fit: 2h, 30m, 1h30m, 45")
@click.option("--work", default=None, help="work folder for the stages' artifacts and logs (default: OUT.work)")
@click.option("--restart", is_flag=True, help="empty the work folder and start over (needed after changing an option)")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["tiny", "small", "base"]))
@click.option("--layout", default="auto", show_default=True, type=click.Choice(["auto", *LAYOUTS]),
              help="how --data is laid out (README: Dataset layouts); auto detects it")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, type=int, help="CPU cores to use (0 = every core this process may use)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: a CUDA GPU when torch sees one (training with bf16 autocast)")
def fit(data: str, out: str, budget: str, work: str | None, restart: bool, preset: str, layout: str, seed: int,
        threads: int, device: str) -> None:
    """Fit a completer to a dataset within a time budget: check the data, measure this machine,
    train the model and the boundary net (side by side), fine-tune, fit pixel fusion,
    calibrate, export, verify the bundle and write its model card.  Rerun the same command to
    continue an interrupted fit.  Exits 1 when the completer does not beat nearest-label fill
    on val (the bundle is written all the same, marked so on its card)."""
    require_torch("lmae fit")
    from lmae_sdk.checkpoint import CheckpointError
    from lmae_sdk.cli.options import refuse_out_inside
    from lmae_sdk.datasets import DatasetError
    from lmae_sdk.labels import InputError
    from lmae_sdk.recipe.plan import FitOptions
    from lmae_sdk.recipe.runner import FitError, FitGateError, fit as run
    from lmae_sdk.recipe.state import FitStateError

    refuse_out_inside(out, {"--data": data})
    if work:
        refuse_out_inside(work, {"--data": data}, option="--work")
    options = FitOptions(data=data, budget_min=parse_budget(budget), preset=preset, layout=layout, seed=seed,
                         threads=threads, device=device)
    try:
        run(options, out, work, restart, echo=click.echo)
    except (FitStateError, FitError, FitGateError, DatasetError, InputError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None


@click.command("info")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="print card.json instead of its Markdown rendering")
def info(bundle: str, as_json: bool) -> None:
    """Print a bundle's model card (or, without one, its manifest's summary), after the checks
    loading the bundle makes (files, sha256, the manifest against its engines and graphs): a
    bundle that fails them is refused with the problem, card or not."""
    import json
    from pathlib import Path

    from lmae_sdk.bundle import MANIFEST, BundleError, check_bundle
    from lmae_sdk.card import CardError, read_card, render_markdown

    man = None
    if (Path(bundle) / MANIFEST).is_file():  # a folder with a card but no manifest is only a card
        try:
            man = check_bundle(bundle)
        except (BundleError, OSError) as e:
            raise click.ClickException(f"{bundle}: not a usable bundle: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # keys of the wrong type
            raise click.ClickException(f"{bundle}: not a usable bundle: malformed {MANIFEST} "
                                       f"({type(e).__name__}: {e})") from None
    try:
        card = read_card(bundle)
    except CardError as e:
        raise click.ClickException(str(e)) from None
    if card is not None:
        click.echo(json.dumps(card, indent=1) if as_json else render_markdown(card))
        return
    if man is None:
        raise click.ClickException(f"{bundle}: not a bundle (no {MANIFEST}) and no model card")
    d = man.data
    click.echo(f"{bundle}: a bundle without a model card (not written by lmae fit)")
    click.echo(f"  classes ({len(d['class_names'])}): {', '.join(d['class_names'])}")
    click.echo(f"  engines: {', '.join(e['name'] for e in d.get('engines', []))}")
