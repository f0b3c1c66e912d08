"""``lmae fit``: the whole recipe, from a labelled dataset to a verified bundle with its model
card, within a time budget.  It sits above the runtime, training and export (it runs all
three) and below the CLI.

- :mod:`.data_check`: every pair of the dataset checked before anything trains;
- :mod:`.probe`: what the work costs on this machine with this dataset, measured before planning;
- :mod:`.plan`: the options, the stages and the budget rule;
- :mod:`.state`: the work folder (record, artifacts, resuming);
- :mod:`.stages`: what each stage does, in its own process;
- :mod:`.guards`: what a stage may hand on (never what it did not make, never worse than it got);
- :mod:`.card_eval`: the card stage's scoring on val;
- :mod:`.runner`: runs the stages, with progress, publishes the bundle, and its final gate.
"""
from lmae_sdk.recipe.plan import FitOptions, make_plan
from lmae_sdk.recipe.runner import fit

__all__ = ["FitOptions", "fit", "make_plan"]
