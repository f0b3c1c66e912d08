"""Fitting on partial labels: the holes training makes are topped up to the unknown shares the
runtime meets (natural holes included), and only known pixels teach."""
from __future__ import annotations

import json
from pathlib import Path

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


def test_the_inputs_of_a_partial_label_take_its_pseudo_labels_and_the_loss_only_its_known_pixels():
    """A label whose left half is unknown and a context (pseudo-labels) that knows it as class
    3: with the context, the model's input shows class 3 there (the input's known share spans
    the trained range as a complete label's would), while the target keeps the left half
    unknown, so that only known pixels teach."""
    from lmae_sdk.model import make_config
    from lmae_sdk.training.data import SampleSpec, make_sample, with_context

    cfg = make_config("tiny", 4, img_size=(64, 96))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 144, 3), dtype=np.uint8)
    lab = np.ones((96, 144), np.uint8)
    lab[:, :72] = UNKNOWN
    context = with_context(lab, np.full_like(lab, 3))
    assert (context[:, :72] == 3).all() and (context[:, 72:] == 1).all()  # known pixels are the label's own
    spec = SampleSpec(mask_ratios=(0.5,), hole_mix={"random": 1.0}, hole_ratio=(0.2, 0.3), crop_scale=(1.0, 1.0))
    shown, plain = [], []
    for seed in range(6):
        with_ctx = make_sample(image, lab, cfg, spec, 0.5, np.random.default_rng(seed), context=context)
        without = make_sample(image, lab, cfg, spec, 0.5, np.random.default_rng(seed))
        shown.append(with_ctx["label_planes"][3].mean())
        plain.append(without["label_planes"][3].mean())
        target = with_ctx["target"]
        assert set(np.unique(target)) <= {1, UNKNOWN} and (target == UNKNOWN).mean() > 0.4
        np.testing.assert_array_equal(target, without["target"])
    assert min(shown) > 0.2 and max(plain) == 0.0


def test_context_labels_are_read_by_name_and_checked(tmp_path):
    from lmae_sdk.labels import InputError, write_label
    from lmae_sdk.training.data import read_contexts

    lab = _label(0.5)
    write_label(tmp_path / "a.png", np.full_like(lab, 2))
    data = [(None, lab), (None, lab)]
    out = read_contexts(tmp_path, [("a.jpg", "labels/a.png"), ("b.jpg", "labels/b.png")], data)
    np.testing.assert_array_equal(out[0], np.where(lab == UNKNOWN, 2, lab))
    np.testing.assert_array_equal(out[1], lab)  # no pseudo-labels for b: the label as it is
    write_label(tmp_path / "a.png", np.full((10, 10), 2, np.uint8))
    with pytest.raises(InputError, match="a.png.*size"):
        read_contexts(tmp_path, [("a.jpg", "labels/a.png")], data[:1])


def test_the_fine_tune_of_a_partial_dataset_writes_confident_pseudo_labels_once(tmp_path, synth_root, monkeypatch):
    """The fine-tune stage completes the train labels of a partial dataset with the model
    stage's model: known pixels stay, holes take the model's class where its confidence
    reaches ``PSEUDO_MIN_CONFIDENCE`` and stay unknown elsewhere; a resumed stage reads them
    again instead of recomputing."""
    import shutil
    from types import SimpleNamespace

    from conftest import tiny_checkpoint
    from lmae_sdk.degrade import degrade
    from lmae_sdk.labels import read_label, write_label
    from lmae_sdk.recipe import stages
    from lmae_sdk.recipe.plan import FitOptions
    from lmae_sdk.recipe.state import WorkFolder
    from lmae_sdk.runtime import LMAECompleter

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    train = sorted((data / "train" / "labels").glob("*.png"))
    for i, lab_path in enumerate(train):  # partial: half of each train label unknown
        lab, palette = read_label(lab_path)
        write_label(lab_path, degrade(lab, 0.5, "random", np.random.default_rng(i), patch=8), palette)
    model = tiny_checkpoint(tmp_path / "model.pt", mask_ratios=(0.5,))
    completer = LMAECompleter.load(model, backend="torch")
    images = {p.stem: p for p in (data / "train" / "images").iterdir()}
    results = {p.stem: completer.complete(str(images[p.stem]), str(p)) for p in train[:4]}
    holes = np.concatenate([r.confidence[read_label(p)[0] == UNKNOWN] for p, r in zip(train, results.values())])
    # a threshold between the random model's confidences: some hole pixels filled, some left unknown
    monkeypatch.setattr(stages, "PSEUDO_MIN_CONFIDENCE", float(np.median(holes)))
    (tmp_path / "work").mkdir()
    ctx = SimpleNamespace(work=WorkFolder(tmp_path / "work"), device="cpu",
                          options=FitOptions(data=str(data), budget_min=5.0))
    folder = Path(stages._pseudo_labels(ctx, model))
    record = json.loads((folder / stages.PSEUDO_RECORD).read_text())
    assert record["images"] == len(train) == len(list(folder.glob("*.png")))
    assert record["min_confidence"] == stages.PSEUDO_MIN_CONFIDENCE
    assert 0.2 < record["filled_share_of_unknown"] < 0.8
    for lab_path in train[:4]:
        lab, pseudo = read_label(lab_path)[0], read_label(folder / lab_path.name)[0]
        known = lab != UNKNOWN
        np.testing.assert_array_equal(pseudo[known], lab[known])
        result = results[lab_path.stem]
        clear = np.abs(result.confidence - stages.PSEUDO_MIN_CONFIDENCE) > 1e-4  # batched runs may differ by ~1e-7
        sure = ~known & clear & (result.confidence >= stages.PSEUDO_MIN_CONFIDENCE)
        np.testing.assert_array_equal(pseudo[sure], result.label[sure])
        assert (pseudo[~known & clear & ~sure] == UNKNOWN).all()
    (folder / train[0].name).unlink()
    assert stages._pseudo_labels(ctx, model) == str(folder) and not (folder / train[0].name).exists()


def _halves_with_random_holes() -> tuple[np.ndarray, np.ndarray]:
    """A label of two classes split at column 240, and the same with 50% random 32-px holes."""
    from lmae_sdk.degrade import degrade

    lab = np.zeros((360, 480), np.uint8)
    lab[:, 240:] = 1
    return lab, degrade(lab, 0.5, "random", np.random.default_rng(3), patch=32)


def test_bands_in_a_partial_label_run_along_its_class_boundaries_not_along_its_holes():
    """Coarse-polygon bands hide known pixels next to a class boundary.  A partial label's
    holes are not class boundaries: bands drawn along them hid the interior of each region,
    so the fusion of a partial fit never saw a thin band between two classes."""
    from lmae_sdk.degrade import degrade

    lab, partial = _halves_with_random_holes()
    for seed in range(3):
        again = degrade(partial, 0.1, "bands", np.random.default_rng(seed))
        hidden = (again == UNKNOWN) & (partial != UNKNOWN)
        cols = np.nonzero(hidden)[1]
        assert cols.size > 0.05 * np.count_nonzero(partial != UNKNOWN)
        assert np.median(np.abs(cols + 0.5 - 240)) < 40  # known columns reach 240 px from the boundary


def test_objects_in_a_partial_label_are_removed_whole_not_piece_by_piece():
    """An object cut in two by an unknown stripe is still one object: removing one piece and
    leaving the other is not the removed-object hole the runtime meets."""
    from lmae_sdk.degrade import degrade

    lab = np.zeros((240, 320), np.uint8)
    squares = [(y, x) for y in (20, 140) for x in (20, 120, 220)]
    for y, x in squares:
        lab[y: y + 60, x: x + 60] = 1
    partial = lab.copy()
    partial[45:51] = UNKNOWN  # an unlabelled stripe across each row of squares cuts each in two
    partial[165:171] = UNKNOWN
    known = partial != UNKNOWN
    halves = 0
    for seed in range(8):
        hidden = (degrade(partial, 0.04, "objects", np.random.default_rng(seed)) == UNKNOWN) & known
        assert hidden.any()
        for y, x in squares:
            share = hidden[y: y + 60, x: x + 60][known[y: y + 60, x: x + 60]].mean()
            halves += 0.0 < share < 1.0
    assert halves == 0


def test_holes_in_a_complete_label_follow_its_own_classes():
    """A complete label is its own class extents: its bands and objects are what they were."""
    from lmae_sdk.degrade import class_extents, degrade

    lab, _ = _halves_with_random_holes()
    assert class_extents(lab) is lab
    hidden = degrade(lab, 0.1, "bands", np.random.default_rng(0)) == UNKNOWN
    assert 0.05 < hidden.mean() < 0.15
    assert np.abs(np.nonzero(hidden)[1] + 0.5 - 240).max() < 50


def test_the_fusion_learns_a_partial_image_from_its_filled_label():
    """Pixel fusion of a partial split: holes made in the label filled by its pseudo-labels and
    made complete (what they leave unknown takes the nearest known class), the kind's share
    hidden, as complete labels with holes are at the runtime; every image learns so, or every
    other one where the split's class boundaries are mostly unknown (the others' holes made in
    the label as it is)."""
    from lmae_sdk.training.fusion_fit import fusion_input, hidden_share, learns_from_context

    rng = np.random.default_rng(0)
    filled = np.zeros((256, 256), np.uint8)
    filled[:, 128:] = 1
    filled[96:160, 40:90] = 2
    label = filled.copy()
    label[rng.random(label.shape) < 0.5] = UNKNOWN  # half its pixels never labelled
    assert [learns_from_context(i, every_image=True) for i in range(4)] == [True] * 4
    assert [learns_from_context(i, every_image=False) for i in range(4)] == [False, True, False, True]
    unknown = [np.mean(fusion_input(label, context, "random", 0.3, np.random.default_rng(1), None) == UNKNOWN)
               for context in (None, filled)]
    assert unknown[0] > 0.5  # the label as it is, more of it hidden
    assert abs(unknown[1] - 0.3) < 0.1  # the filled label, holes of the kind's share
    from_filled = fusion_input(label, filled, "random", 0.3, np.random.default_rng(1), None)
    known = from_filled != UNKNOWN
    assert (from_filled[known] == filled[known]).all() and (known & (label == UNKNOWN)).any()
    sure_only = filled.copy()
    sure_only[:, 120:136] = UNKNOWN  # the pseudo-labels were not sure along the boundary
    from_filled = fusion_input(label, sure_only, "random", 0.3, np.random.default_rng(1), None)
    assert abs(np.mean(from_filled == UNKNOWN) - 0.3) < 0.1  # made complete first: only the kind's holes
    known = from_filled != UNKNOWN  # the strip takes the class of its nearest known pixel, each side its own
    assert (from_filled[known] == filled[known]).all() and (known & (sure_only == UNKNOWN)).any()
    as_is = fusion_input(label, None, "random", 0.3, np.random.default_rng(1), None)  # no pseudo-labels
    assert np.mean(as_is == UNKNOWN) > 0.5
    assert hidden_share(filled, 0.3) == 0.3  # a complete label: the share itself
    assert hidden_share(label, 0.3) == pytest.approx(MIN_HIDDEN_SHARE, abs=0.02)  # topped up by the minimum
