
import pytest
import torch

from lmae_sdk.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from lmae_sdk.model import LMAE, make_config


def _ckpt(tmp_path):
    model = LMAE(make_config("tiny", 3, img_size=(32, 32)))
    ck = make_checkpoint(model, class_names=["a", "b", "c"], palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]],
                         mask_ratios=[0.5], label_resize="soft", unknown_threshold=0.5, metrics={"pa_miou": 50.0})
    path = tmp_path / "m.pt"
    save_checkpoint(ck, path)
    return model, path


def test_round_trip_with_weights_only(tmp_path):
    model, path = _ckpt(tmp_path)
    raw = torch.load(path, weights_only=True)  # must not need unpickling
    assert raw["format_version"] == 1 and raw["class_names"] == ["a", "b", "c"]
    ck = load_checkpoint(path)
    back = model_from_checkpoint(ck)
    assert back.cfg == model.cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    for key in ("config", "mask_ratios", "normalization", "image_size", "metrics", "palette"):
        assert key in ck


def test_numpy_values_are_saved_as_builtins(tmp_path):
    """A numpy scalar anywhere (a metric, a parsed range of mask ratios) must not make the
    file unreadable under weights_only."""
    import numpy as np

    model, path = _ckpt(tmp_path)
    ck = load_checkpoint(path)
    ck["metrics"] = {"pa_miou": np.float64(61.5), "confusion": np.eye(2, dtype=np.int64)}
    ck["train_args"] = {"mask_ratios": (np.float64(0.25), np.float64(0.5))}
    save_checkpoint(ck, path)
    back = load_checkpoint(path)
    assert back["metrics"] == {"pa_miou": 61.5, "confusion": [[1, 0], [0, 1]]}
    assert back["train_args"]["mask_ratios"] == (0.25, 0.5) and type(back["train_args"]["mask_ratios"][0]) is float


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "lmae-checkpoint", "format_version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"evil.pt: not an lmae checkpoint \(refused without loading"):
        load_checkpoint(path)


def test_refuses_unknown_version_and_foreign_files(tmp_path):
    _, path = _ckpt(tmp_path)
    ck = torch.load(path, weights_only=True)
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an lmae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
