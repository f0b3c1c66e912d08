"""lmae_sdk.run_record: resume / refuse / overwrite decisions, model fingerprints, output folders."""
import hashlib
import json

import pytest

from lmae_sdk.run_record import (RUN_RECORD, OutputFolderError, RunRecord, RunRecordError, Start, check_or_start,
                                 decide, ensure_writable_folder, folder_outputs, model_sha256, remove_stray_temps)


def _record(**options):
    return RunRecord("degrade", {"labels": "/data/labels"}, {"ratio": 0.5, "strategy": "random", **options},
                     model_path="/m/a.pt", model_sha256="a" * 64)


def test_new_folder_starts_and_the_record_round_trips(tmp_path):
    out = tmp_path / "out"
    assert check_or_start(out, _record()) is Start.NEW
    data = json.loads((out / RUN_RECORD).read_text())
    assert data["command"] == "degrade" and data["options"] == {"ratio": 0.5, "strategy": "random"}
    assert data["model"] == {"path": "/m/a.pt", "sha256": "a" * 64} and "lmae_sdk" in data["info"]
    assert RunRecord.read(out).differences(_record()) == []
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_same_run_resumes_and_keeps_its_record(tmp_path):
    check_or_start(tmp_path, _record())
    (tmp_path / "a.png").write_bytes(b"x")
    before = (tmp_path / RUN_RECORD).read_bytes()
    assert check_or_start(tmp_path, _record(), bookkeeping=("report.json",)) is Start.RESUME
    assert (tmp_path / RUN_RECORD).read_bytes() == before


def test_other_options_inputs_or_model_are_refused_with_the_difference(tmp_path):
    check_or_start(tmp_path, _record())
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(RunRecordError, match=r"options\.ratio: 0\.5 -> 0\.3"):
        decide(tmp_path, _record(ratio=0.3))
    with pytest.raises(RunRecordError, match=r"options\.patch: \(unset\) -> 16"):
        decide(tmp_path, _record(patch=16))
    other_inputs = _record()
    other_inputs.inputs = {"labels": "/elsewhere"}
    with pytest.raises(RunRecordError, match="inputs.labels: /data/labels -> /elsewhere"):
        decide(tmp_path, other_inputs)
    other_model = RunRecord("degrade", {"labels": "/data/labels"}, {"ratio": 0.5, "strategy": "random"},
                            model_path="/m/b.pt", model_sha256="b" * 64)
    with pytest.raises(RunRecordError, match=r"model: sha256 aaaaaaaaaaaa \(/m/a.pt\) -> sha256 bbbbbbbbbbbb"):
        decide(tmp_path, other_model)
    # overwrite: the new record replaces the old one
    assert check_or_start(tmp_path, other_model, overwrite=True) is Start.OVERWRITE
    assert RunRecord.read(tmp_path).model_sha256 == "b" * 64


def test_what_is_not_compared(tmp_path):
    check_or_start(tmp_path, _record())
    (tmp_path / "a.png").write_bytes(b"x")
    moved = _record()
    moved.model_path = "/copy/of/a.pt"  # the same bytes elsewhere: the same model
    moved.info = {"providers": ["CUDAExecutionProvider"]}
    assert decide(tmp_path, moved) is Start.RESUME
    as_tuple = RunRecord("degrade", {"labels": "/data/labels"}, {"strategy": "random", "ratio": 0.5},
                         model_path="/m/a.pt", model_sha256="a" * 64)
    assert decide(tmp_path, as_tuple) is Start.RESUME  # key order does not matter
    listed = RunRecord("x", {}, {"r": (0.5, 0.7)})
    assert listed.differences(RunRecord("x", {}, {"r": [0.5, 0.7]})) == []  # tuples are stored as lists


def test_outputs_without_a_record_are_refused(tmp_path):
    (tmp_path / "gt_0001.png").write_bytes(b"x")
    with pytest.raises(RunRecordError, match="1 file.*gt_0001.png.*no run record"):
        decide(tmp_path, _record())
    assert check_or_start(tmp_path, _record(), overwrite=True) is Start.OVERWRITE
    assert RunRecord.read(tmp_path) is not None


def test_a_folder_with_nothing_made_yet_starts_fresh(tmp_path):
    check_or_start(tmp_path, _record())  # e.g. the model then failed to load
    (tmp_path / ".a.png.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "report.json").write_text("{}")
    assert folder_outputs(tmp_path, bookkeeping=("report.json",)) == []
    assert decide(tmp_path, _record(ratio=0.3), bookkeeping=("report.json",)) is Start.NEW
    with pytest.raises(RunRecordError):  # unless the bookkeeping file is not the job's
        decide(tmp_path, _record(ratio=0.3))


def test_unreadable_or_foreign_record_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / RUN_RECORD).write_text("{not json")
    with pytest.raises(RunRecordError, match="unreadable run record"):
        decide(tmp_path, _record())
    (tmp_path / RUN_RECORD).write_text('{"format": "something-else"}')
    with pytest.raises(RunRecordError, match="not an lmae run record"):
        decide(tmp_path, _record())
    (tmp_path / RUN_RECORD).write_text('{"format": "lmae-run", "format_version": 1}')
    with pytest.raises(RunRecordError, match="malformed"):
        decide(tmp_path, _record())


def test_model_sha256_of_a_checkpoint_is_the_files(tmp_path):
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"weights")
    assert model_sha256(pt) == hashlib.sha256(b"weights").hexdigest()


def test_model_sha256_of_a_bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "enc.onnx").write_bytes(b"encoder")
    (b / "dec.onnx").write_bytes(b"decoder")
    sha_dec = hashlib.sha256(b"decoder").hexdigest()
    manifest = {"format": "lmae-bundle", "engines": [
        {"name": "m0.5", "encoder": {"file": "enc.onnx"}, "decoder": {"file": "dec.onnx", "sha256": sha_dec}}]}
    (b / "manifest.json").write_text(json.dumps(manifest))
    first = model_sha256(b)
    assert len(first) == 64 and model_sha256(b) == first
    (b / "dec.onnx").write_bytes(b"other decoder")  # its sha256 is in the manifest (the loader checks it)
    assert model_sha256(b) == first
    (b / "enc.onnx").write_bytes(b"other encoder")  # no sha256 recorded: the file itself counts
    second = model_sha256(b)
    assert second != first
    manifest["unknown_threshold"] = 0.6  # any change of the manifest
    (b / "manifest.json").write_text(json.dumps(manifest))
    third = model_sha256(b)
    assert third not in (first, second)
    (b / "model.pt").write_bytes(b"ckpt")  # a checkpoint the torch backend may load
    assert model_sha256(b) != third
    with pytest.raises(ValueError, match="not a model"):
        model_sha256(tmp_path)


def test_ensure_writable_folder(tmp_path):
    out = ensure_writable_folder(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe is gone
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(OutputFolderError, match=f"cannot write to {blocker / 'out'}: {blocker} is a file"):
        ensure_writable_folder(blocker / "out")
    with pytest.raises(OutputFolderError, match=f"cannot write to {blocker}: {blocker} is a file, not a folder"):
        ensure_writable_folder(blocker)


def test_remove_stray_temps(tmp_path):
    (tmp_path / ".a.png.k3j2.tmp").write_bytes(b"half")
    (tmp_path / "a.png").write_bytes(b"done")
    (tmp_path / "notes.tmp").write_bytes(b"a user's file, not ours")
    assert remove_stray_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "notes.tmp"]
