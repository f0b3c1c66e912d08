"""Fitting on partial labels: the holes training makes are topped up to the unknown shares the
runtime meets (natural holes included), and only known pixels teach."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lmae_sdk.labels import UNKNOWN
from lmae_sdk.training.data import MIN_HIDDEN_SHARE, known_share_to_hide
from lmae_sdk.training.loss import completion_loss


def _label(natural: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 4, (100, 100)).astype(np.uint8)
    lab[rng.random((100, 100)) < natural] = UNKNOWN
    return lab


def test_a_complete_label_hides_a_uniform_share_of_the_range():
    draws = [known_share_to_hide(_label(0.0), (0.2, 0.8), np.random.default_rng(i)) for i in range(400)]
    plain = [float(np.random.default_rng(i).uniform(0.2, 0.8)) for i in range(400)]
    np.testing.assert_allclose(draws, plain)  # what training drew before partial labels were considered


def test_a_half_unknown_label_is_topped_up_to_the_range_not_beyond():
    lab = _label(0.5)
    natural = float(np.mean(lab == UNKNOWN))
    totals = [natural + known_share_to_hide(lab, (0.2, 0.8), np.random.default_rng(i)) * (1 - natural)
              for i in range(400)]
    assert min(totals) >= natural + MIN_HIDDEN_SHARE * (1 - natural) - 1e-9
    assert max(totals) <= 0.8 + 1e-9
    assert np.mean(totals) < 0.75  # half again on top of the natural holes would be 0.75 on average
    # a label that lacks more than the range's top still hides some of what it knows
    mostly_unknown = _label(0.9)
    share = known_share_to_hide(mostly_unknown, (0.2, 0.8), np.random.default_rng(0))
    assert share == MIN_HIDDEN_SHARE or abs(share - MIN_HIDDEN_SHARE) < 1e-9


def test_pixels_unknown_in_the_training_label_teach_nothing():
    logits = torch.randn(1, 4, 8, 8)
    target = torch.from_numpy(_label(0.5)[:8, :8].astype(np.int64))[None]
    everywhere = torch.ones(1, 8, 8, dtype=torch.bool)
    changed = logits.clone()
    changed[:, :, target[0] == UNKNOWN] = 100 * torch.randn_like(changed[:, :, target[0] == UNKNOWN])
    assert torch.allclose(completion_loss(logits, target, everywhere, None),
                          completion_loss(changed, target, everywhere, None))


@pytest.mark.parametrize("strategy", ["random", "blocks", "background", "label", "objects", "bands"])
def test_holes_in_a_partial_label_hide_its_known_pixels(strategy):
    """The card degrades val labels seeded per file name, as `lmae degrade --seed 0` does: on
    labels that `lmae degrade --seed 0` made partial, the same random cells came out again and
    nothing known was hidden (PA-mIoU nan)."""
    from lmae_sdk.degrade import degrade, rng_for_name

    lab = np.kron(np.random.default_rng(1).integers(0, 5, (12, 16)), np.ones((32, 32))).astype(np.uint8)
    partial = degrade(lab, 0.5, "random", rng_for_name(0, "frame"))
    known = partial != UNKNOWN
    again = degrade(partial, 0.5, strategy, rng_for_name(0, "frame"))
    hidden = np.count_nonzero((again == UNKNOWN) & known) / np.count_nonzero(known)
    assert 0.35 < hidden < 0.65
    assert (again[known & (again != UNKNOWN)] == partial[known & (again != UNKNOWN)]).all()
