"""Files that are not lmae checkpoints: one loader refuses them with a one-line reason that
names the file and never suggests unpickling; the training commands report it cleanly."""
import pickle
import warnings

import pytest
import torch
from click.testing import CliRunner

from lmae_sdk import LMAE, make_config
from lmae_sdk.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


class Custom:
    pass


def _good(path):
    model = LMAE(make_config("tiny", 3, img_size=(32, 32)))
    save_checkpoint(make_checkpoint(model, class_names=["a", "b", "c"], palette=None, mask_ratios=[0.5],
                                    label_resize="soft", unknown_threshold=0.5), path)
    return path


def _write_bad(kind, folder):
    """A file of one kind of non-checkpoint; returns its path."""
    path = folder / f"{kind}.pt"
    if kind == "evil":
        torch.save({"format": "lmae-checkpoint", "format_version": 1, "x": Evil()}, path)
    elif kind == "custom_class":
        torch.save({"format": "lmae-checkpoint", "format_version": 1, "x": Custom()}, path)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"format": "lmae-checkpoint", "format_version": 1}))
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        data = _good(folder / "whole.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bare_state_dict":
        torch.save({"weight": torch.zeros(2)}, path)
    elif kind == "no_weights":
        good = load_checkpoint(_good(folder / "whole.pt"))
        del good["state_dict"]
        torch.save(good, path)
    return path


KINDS = ["evil", "custom_class", "plain_pickle", "zero_bytes", "text", "truncated", "bare_state_dict", "no_weights"]


def _clean_refusal(text, path):
    return (str(path) in text and "not an lmae checkpoint" in text and "weights_only" not in text
            and "unpickl" not in text.lower() and "Traceback" not in text)


@pytest.mark.parametrize("kind", KINDS)
def test_loader_refuses_with_a_short_reason_and_no_unpickling_advice(kind, tmp_path, capsys):
    path = _write_bad(kind, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warnings about pickle protocols are not the user's business
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not an lmae checkpoint ("), msg
    assert _clean_refusal(msg, path) and "\n" not in msg and len(msg) < len(str(path)) + 200, msg
    assert "pwned" not in capsys.readouterr().out  # never unpickled


def test_refusal_names_the_refused_object(tmp_path):
    with pytest.raises(CheckpointError, match=r"refused without loading: it stores a Python object \(print\)"):
        load_checkpoint(_write_bad("evil", tmp_path))


def test_a_config_that_does_not_make_a_model_is_a_checkpoint_error(tmp_path):
    ck = load_checkpoint(_good(tmp_path / "m.pt"))
    ck["state_dict"] = {k: v for k, v in list(ck["state_dict"].items())[1:]}
    with pytest.raises(CheckpointError, match="m.pt: not an lmae checkpoint .*does not load"):
        model_from_checkpoint(ck, tmp_path / "m.pt")


def test_train_reports_a_bad_init_from_before_reading_the_dataset(tmp_path):
    from lmae_sdk.training.train import TrainConfig, train

    bad = _write_bad("custom_class", tmp_path)
    tc = TrainConfig(data=str(tmp_path / "no_such_dataset"), out=str(tmp_path / "o.pt"), preset="tiny",
                     image_size=(32, 32), epochs=1, progress=False, init_from=str(bad))
    with pytest.raises(CheckpointError, match="custom_class.pt: not an lmae checkpoint"):
        train(tc)


def _cli(args):
    from lmae_sdk.cli import main

    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("kind", ["custom_class", "plain_pickle", "zero_bytes"])
@pytest.mark.parametrize("command", ["fit-fusion", "fit-boundaries", "calibrate", "train"])
def test_cli_training_commands_print_one_clean_line(command, kind, tmp_path, synth_root):
    bad = _write_bad(kind, tmp_path)
    if command == "train":
        args = ["train", "--data", str(synth_root), "--out", str(tmp_path / "o.pt"), "--preset", "tiny",
                "--image-size", "32x32", "--epochs", "1", "--mask-ratio", "0.5", "--init-from", str(bad)]
    else:
        args = [command, "--ckpt", str(bad), "--data", str(synth_root), "--out", str(tmp_path / "o.pt")]
    res = _cli(args)
    assert res.exit_code not in (0, None), res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # a clean exit, not an uncaught error
    assert _clean_refusal(res.output, bad), res.output
    assert not (tmp_path / "o.pt").exists()
