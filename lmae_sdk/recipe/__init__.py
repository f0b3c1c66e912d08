"""``lmae fit``: the whole recipe, from a labelled dataset to a verified bundle with its model
card, within a time budget.  It sits above the runtime, training and export (it runs all
three) and below the CLI.

- :mod:`.plan`: the options, the stages and the budget rule;
- :mod:`.state`: the work folder (record, artifacts, resuming);
- :mod:`.stages`: what each stage does, in its own process;
- :mod:`.card_eval`: the card stage's scoring on val;
- :mod:`.runner`: runs the stages, with progress, and publishes the bundle.
"""
from lmae_sdk.recipe.plan import FitOptions, make_plan
from lmae_sdk.recipe.runner import fit

__all__ = ["FitOptions", "fit", "make_plan"]
