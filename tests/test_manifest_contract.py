"""The bundle manifest is the contract: the runtime reads the shared settings from its top
level and refuses engines (their model_config, their ONNX graphs' metadata, the bundle's
checkpoint) that contradict it; an edit of the manifest is never silently ignored."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from lmae_sdk import LMAE, make_config
from lmae_sdk.bundle import BundleError
from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(bundle folder, its checkpoint): a tiny 5-class model at 64x96, engines m=0.5 and 0.75."""
    try:
        from lmae_sdk.export import export_bundle
    except ImportError as e:
        pytest.skip(f"lmae_sdk.export is unavailable: {e}")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("contract")
    ckpt = root / "tiny.pt"
    m = LMAE(make_config("tiny", 5, img_size=(64, 96)))
    save_checkpoint(make_checkpoint(m, class_names=list("abcde"), palette=None, mask_ratios=[0.5],
                                    label_resize="soft", unknown_threshold=0.5), ckpt)
    out = root / "b"
    export_bundle([ckpt], out, mask_ratios=[0.5, 0.75], verify=False, lint=False)
    return out, ckpt


def _edited(exported, tmp_path, edit, with_checkpoint=False):
    """A copy of the bundle whose manifest ``edit(data)`` changed (plus the .pt: the torch backend)."""
    bundle, ckpt = exported
    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    if with_checkpoint:
        shutil.copy(ckpt, copy / ckpt.name)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def _load(path, backend):
    from lmae_sdk import LMAECompleter

    return LMAECompleter.load(path, backend=backend, threads=1)


def _set(key, value):
    def edit(data):
        data[key] = value
    return edit


BACKENDS = ["onnxruntime", "auto", "torch"]

# key, edited value, what the refusal must say (the key, the manifest's value, the engine's value)
REFUSED = {
    "image_size": ([64, 80], [r"image_size \[64, 80\]", r"img_size is \[64, 96\]"]),
    "class_names": (list("abcdef"), [r"class_names \(6 names\)", "num_classes is 5"]),
    "normalization": ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 1 / 255},
                      [r"normalization \{'mean': \[0.5, 0.5, 0.5\]", r"0.485, 0.456, 0.406"]),
    "patch_size": (8, ["patch_size 8", "patch_size is 16"]),
    "num_patches": (48, ["num_patches 48", "is 24"]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", list(REFUSED))
def test_a_manifest_that_contradicts_its_engines_is_refused(exported, tmp_path, key, backend):
    value, says = REFUSED[key]
    copy = _edited(exported, tmp_path, _set(key, value), with_checkpoint=backend == "torch")
    with pytest.raises(BundleError) as info:
        _load(copy, backend)
    msg = str(info.value)
    assert "manifest.json" in msg and f"manifest {key}" in msg, msg
    for pattern in says:
        assert re.search(pattern, msg), (pattern, msg)
    assert "encoder_m0.5_fp32.onnx" in msg, msg  # the engine that disagrees, by its file


def test_a_bundle_checkpoint_that_contradicts_the_manifest_is_refused_on_torch(exported, tmp_path):
    bundle, _ = exported
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    other = LMAE(make_config("tiny", 5, img_size=(64, 80)))
    save_checkpoint(make_checkpoint(other, class_names=list("abcde"), palette=None, mask_ratios=[0.5],
                                    label_resize="soft", unknown_threshold=0.5), copy / "other.pt")
    with pytest.raises(BundleError, match=r"manifest image_size \[64, 96\] contradicts checkpoint .*other.pt: "
                                          r"its config img_size is \[64, 80\]"):
        _load(copy, "torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_renamed_classes_and_another_unknown_index_drive_the_runtime(exported, tmp_path, backend):
    names = ["road", "sky", "car", "tree", "person"]

    def edit(data):
        data["class_names"] = names
        data["unknown_index"] = 254

    c = _load(_edited(exported, tmp_path, edit, with_checkpoint=backend == "torch"), backend)
    assert c.class_names == names and c.unknown_index == 254
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    lab = rng.integers(0, 5, (40, 60)).astype(np.uint8)
    lab[10:30, 10:40] = 254  # the manifest's unknown
    r = c.complete(img, lab)
    hole = lab == 254
    assert (r.label[hole] < 5).all() and (r.label[~hole] == lab[~hole]).all() and r.filled == hole.sum()
    lab[0, 0] = 255  # no longer "unknown": a class id the model does not have
    with pytest.raises(ValueError, match=r"class ids \[255\] >= num_classes 5 \(unknown index is 254\)"):
        c.complete(img, lab)


@pytest.mark.parametrize("value", [3, 0, 256, -1, "255", None])
def test_an_unknown_index_that_collides_or_is_not_a_label_value_is_refused(exported, tmp_path, value):
    copy = _edited(exported, tmp_path, _set("unknown_index", value))
    with pytest.raises(BundleError, match=rf"manifest unknown_index {value!r}"):
        _load(copy, "onnxruntime")


def test_a_background_index_outside_the_classes_is_refused(exported, tmp_path):
    copy = _edited(exported, tmp_path, _set("background_index", 5))
    with pytest.raises(BundleError, match="manifest background_index 5 .*classes 0..4"):
        _load(copy, "onnxruntime")


def test_an_engine_entry_that_contradicts_its_graph_is_refused(exported, tmp_path):
    """Top level and entries edited consistently (6 classes): the ONNX graph's own metadata
    still says 5."""
    def edit(data):
        data["class_names"] = list("abcdef")
        for e in data["engines"]:
            e["model_config"]["num_classes"] = 6

    copy = _edited(exported, tmp_path, edit)
    with pytest.raises(BundleError, match=r"encoder_m0.5_fp32.onnx.*model_config num_classes 5.*says 6"):
        _load(copy, "onnxruntime")


def test_an_engine_entry_with_a_wrong_k_is_refused(exported, tmp_path):
    def edit(data):
        data["engines"][0]["num_visible"] = 3

    with pytest.raises(BundleError, match=r"num_visible 3 .*mask ratio 0.5 .*12"):
        _load(_edited(exported, tmp_path, edit), "onnxruntime")
