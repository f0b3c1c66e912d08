"""What the gaps of a partial label teach: the boundary net's gap bags (training/boundary_loss.py)
and the model's candidate classes (training/loss.py), both from training/gaps.py."""
import numpy as np
import torch

from lmae_sdk.boundaries import boundary_targets
from lmae_sdk.training.boundary_loss import BoundaryTargets, boundary_loss
from lmae_sdk.training.gaps import gap_bags, gap_ends
from lmae_sdk.training.loss import gap_candidates, gap_loss

U = 255


def test_gap_bags_are_the_pairs_between_known_pixels_of_two_classes():
    label = np.array([[0, U, U, 1, 1],
                      [0, U, U, 0, 1],   # a same-class gap: no bag
                      [U, 0, U, 2, U],   # open at both edges: only the inner gap
                      [3, 3, 3, 3, 3]], np.uint8)
    bags = gap_bags(label)
    assert bags.shape == (2, 4, 5)
    right = bags[0]
    assert (right[0, :3] == right[0, 0]).all() and right[0, 0] >= 0 and (right[0, 3:] == -1).all()
    assert (right[1] == -1).all()
    assert (right[2, 1:3] == right[2, 1]).all() and right[2, 1] not in (-1, right[0, 0])
    assert right[2, 0] == -1 and (right[2, 3:] == -1).all() and (right[3] == -1).all()
    lower = bags[1]  # columns 0 and 4 cross a gap from class 0 / 1 to 3; columns 1-3 are open at the top or known
    assert (lower[1:3, 0] == lower[1, 0]).all() and (lower[1:3, 4] == lower[1, 4]).all()
    assert lower[1, 0] >= 0 and lower[1, 4] >= 0 and lower[1, 0] != lower[1, 4]
    assert (lower[:, 1:4] == -1).all() and (lower[[0, 3]] == -1).all()
    column_gap = gap_bags(label.T.copy())[1].T  # the same label transposed: its lower plane is the right plane
    np.testing.assert_array_equal(column_gap >= 0, right >= 0)
    assert set(np.unique(bags[bags >= 0])) == set(range(int(bags.max()) + 1))  # numbered 0.. without holes


def test_a_band_holed_label_teaches_boundaries_only_through_its_gap_bags():
    # class 0 on the left, 1 on the right, the boundary hidden in an unknown band (columns 10-14)
    label = np.zeros((8, 24), np.uint8)
    label[:, 12:] = 1
    label[:, 10:15] = U
    assert not (boundary_targets(label) == 1).any()  # the known pairs hold no boundary

    def fit(gap_weight: float) -> np.ndarray:
        logits = torch.zeros(1, 2, 8, 24, requires_grad=True)
        opt = torch.optim.Adam([logits], 0.1)
        targets = BoundaryTargets([label], use_gaps=gap_weight > 0)
        for _ in range(150):
            opt.zero_grad()
            boundary_loss(logits, targets, gap_weight=gap_weight).backward()
            opt.step()
        return torch.sigmoid(logits).detach().numpy()[0]

    with_gaps, without = fit(1.0), fit(0.0)
    band = slice(9, 15)  # the right-neighbour pairs (9, 10) .. (14, 15) cross the band
    # with the gap bags every row finds a boundary in the band; known pairs stay without one
    assert (with_gaps[0, :, band].max(1) > 0.5).all()
    assert with_gaps[0, :, :9].max() < 0.1 and with_gaps[0, :, 15:-1].max() < 0.1
    assert without[0, :, band].max() < 0.51  # known pairs only: nothing pushes a boundary up


def test_gap_ends_are_each_unknown_pixels_row_and_column_end_classes():
    label = np.array([[4, 4, 4, 4],
                      [0, U, U, 1],
                      [0, U, U, 1],
                      [2, 2, 2, 2]], np.uint8)
    ends = gap_ends(label)
    assert ends.shape == (4, 4, 4) and ends.dtype == np.uint8
    np.testing.assert_array_equal(ends[:, 1, 1], [0, 1, 4, 2])  # left, right, above, below
    np.testing.assert_array_equal(ends[:, 2, 2], [0, 1, 4, 2])
    assert (ends[:, label != U] == U).all()  # known pixels have no gap
    open_row = np.array([[U, U, 3]], np.uint8)  # open at the left edge
    np.testing.assert_array_equal(gap_ends(open_row)[:2, 0, 0], [U, U])
    # the candidate sets: where the row's and the column's gaps are both closed, the classes in both pairs
    sets = gap_candidates(torch.from_numpy(ends[None].astype(np.int64)), 5)[0]
    assert not sets[:, 1, 1].any()  # {0, 1} and {4, 2} share no class: a hidden object, no set
    ends[2:, 1, 1] = U  # the column open: the row's pair alone
    sets = gap_candidates(torch.from_numpy(ends[None].astype(np.int64)), 5)[0]
    assert sets[:, 1, 1].tolist() == [True, True, False, False, False]
    ends[2:, 1, 1] = (1, 3)  # {0, 1} and {1, 3}: class 1
    sets = gap_candidates(torch.from_numpy(ends[None].astype(np.int64)), 5)[0]
    assert sets[:, 1, 1].tolist() == [False, True, False, False, False]


def test_the_gap_loss_puts_a_band_pixel_into_one_of_the_bands_two_classes():
    label = np.zeros((8, 24), np.uint8)
    label[:, 12:] = 1
    label[:, 10:15] = U  # the boundary in an unknown band; rows close the gap, columns do not
    target = torch.from_numpy(label[None].astype(np.int64))
    ends = torch.from_numpy(gap_ends(label)[None].astype(np.int64))
    logits = torch.zeros(1, 4, 8, 24)
    logits[0, 3, :, 10:15] = 4.0  # the model says class 3 in the band
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], 0.1)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = gap_loss(logits, target, ends)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    p = torch.softmax(logits.detach(), 1)[0]
    assert float(loss.detach()) < first / 10
    assert (p[:2, :, 10:15].sum(0) > 0.9).all()  # classes 0 or 1, which one it does not say
    assert logits.grad[0, :, :, :10].abs().max() == 0  # known pixels are not this loss's



def test_the_fit_learns_from_gaps_only_where_the_class_boundaries_are_mostly_unlabelled():
    import inspect
    from types import SimpleNamespace

    from lmae_sdk.recipe.stages import _learns_from_gaps
    from lmae_sdk.training.boundary_fit import fit_boundaries
    from lmae_sdk.training.train import TrainConfig

    def ctx(unknown):
        return SimpleNamespace(facts={"boundaries_unknown": {"train": unknown, "val": unknown}})

    assert _learns_from_gaps(ctx(1.0)) and _learns_from_gaps(ctx(0.95))  # coarse polygons
    assert not _learns_from_gaps(ctx(0.51)) and not _learns_from_gaps(ctx(0.11))  # random holes; void only
    assert not _learns_from_gaps(SimpleNamespace(facts={}))
    # outside the fit, training reads known pixels only unless asked
    assert TrainConfig(data="d", out="o").gap_weight == 0.0
    assert inspect.signature(fit_boundaries).parameters["gap_weight"].default == 0.0


def test_samples_carry_their_gap_ends_only_for_the_gap_loss():
    """A sample carries its target's gap ends where the spec asks for them (a training with a
    gap weight), and they feed the gap loss through the collated batch; without, none are made."""
    from lmae_sdk.model import make_config
    from lmae_sdk.training.data import SampleSpec, collate, make_sample
    from lmae_sdk.training.loss import training_loss

    cfg = make_config("tiny", 4, img_size=(64, 96))
    image = np.random.default_rng(0).integers(0, 256, (96, 144, 3), dtype=np.uint8)
    lab = np.ones((96, 144), np.uint8)
    lab[:, 72:] = 2
    lab[:, 60:84] = U  # a band over the class boundary
    spec = SampleSpec(mask_ratios=(0.5,), hole_mix={"random": 1.0}, hole_ratio=(0.2, 0.3), crop_scale=(1.0, 1.0))
    assert "gap_ends" not in make_sample(image, lab, cfg, spec, 0.5, np.random.default_rng(1))
    spec.gaps = True
    sample = make_sample(image, lab, cfg, spec, 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(sample["gap_ends"], gap_ends(sample["target"].astype(np.uint8)))
    batch = collate([sample])
    logits = torch.zeros((1, 4) + cfg.img_size, requires_grad=True)
    with_gaps = training_loss(logits, batch, None, 0.1, 1.0)
    assert with_gaps > training_loss(logits, batch, None, 0.1, 0.0)  # uniform logits: -log(2/4) at band pixels
