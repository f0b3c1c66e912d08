"""``lmae`` command line: fit, info, train, degrade, evaluate, complete, export, demo, visualize.

``main`` is the click group (the ``lmae`` entry point); each command lives in the module of
its topic and is registered here.  Importing this package needs no torch: the training
commands import it when they run.
"""
from __future__ import annotations

import click

from lmae_sdk.cli.complete import complete
from lmae_sdk.cli.degrade_evaluate import degrade, evaluate
from lmae_sdk.cli.demo import demo
from lmae_sdk.cli.fit_info import fit, info
from lmae_sdk.cli.training_commands import calibrate, fit_boundaries, fit_fusion, train
from lmae_sdk.cli.visualize import visualize


@click.group()
@click.version_option(package_name="lmae-sdk")
def main() -> None:
    """L-MAE label completion: train, export, complete."""


for _command in (fit, info, train, calibrate, fit_boundaries, fit_fusion, degrade, evaluate, complete, demo,
                 visualize):
    main.add_command(_command)

__all__ = ["main"]
