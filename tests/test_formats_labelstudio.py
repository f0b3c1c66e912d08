"""Label Studio brush labels (lmae_sdk.formats.labelstudio, .brush_rle): the RLE codec against
the encodings of Label Studio's own converter, the export read -> predictions -> re-read, and
the bad-input rules."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from formats_data import H, W, completions_of, labels_of, write_images
from lmae_sdk.formats import FormatError, detect_format, read_annotations, read_labelstudio, write_labelstudio
from lmae_sdk.formats import brush_rle
from lmae_sdk.formats.brush_rle import decode_rle, encode_rle, mask_to_rle, rle_to_mask


# ---------------------------------------------------------------- Label Studio brushes

# encodings made by label-studio-converter 0.0.59's own encode_rle / mask2rle
LS_MASK = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], bool)
LS_MASK_RLE = [0, 0, 0, 60, 57, 27, 252, 224, 22, 255, 227, 0, 183, 255, 133, 192, 0]
LS_VALUES = [5] + [7] * 3 + [9] * 12 + [200] * 100 + [1] + [0] * 300
LS_VALUES_RLE = [0, 0, 1, 161, 57, 27, 248, 0, 177, 3, 219, 9, 204, 121, 0, 0, 240, 18, 176, 0]
LS_LONG_RLE = [0, 1, 17, 112, 57, 27, 255, 255, 255, 0, 226, 45, 224, 0]  # 70000 zeros
LS_LONG2_RLE = [0, 1, 0, 2, 57, 27, 255, 255, 255, 3, 224, 0, 0, 96, 2, 0]  # 65537 threes, a four
LS_ALIGNED_RLE = [0, 0, 1, 44, 57, 27, 255, 1, 43, 0, 0]  # 300 zeros: 80 bits, so a whole zero byte of padding


@pytest.fixture(params=["compiled", "python"])
def decoder(request, monkeypatch):
    """Both block readers: numba's (where installed) and the Python one."""
    if request.param == "python":
        monkeypatch.setattr(brush_rle, "_compiled_blocks", lambda: None)
    elif brush_rle._compiled_blocks() is None:
        pytest.skip("numba is not installed")
    return request.param


def test_brush_rle_matches_the_converters_encodings(decoder):
    assert mask_to_rle(LS_MASK) == LS_MASK_RLE
    np.testing.assert_array_equal(rle_to_mask(LS_MASK_RLE, 3, 5), LS_MASK)
    assert encode_rle(np.array(LS_VALUES, np.uint8)) == LS_VALUES_RLE
    assert decode_rle(LS_VALUES_RLE).tolist() == LS_VALUES
    assert encode_rle(np.zeros(70000, np.uint8)) == LS_LONG_RLE
    assert decode_rle(LS_LONG_RLE).tolist() == [0] * 70000
    assert encode_rle(np.array([3] * 65537 + [4], np.uint8)) == LS_LONG2_RLE
    assert decode_rle(LS_LONG2_RLE).tolist() == [3] * 65537 + [4]
    assert encode_rle(np.zeros(300, np.uint8)) == LS_ALIGNED_RLE
    assert decode_rle(LS_ALIGNED_RLE).tolist() == [0] * 300


def _bits_to_bytes(bits: str) -> list[int]:
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def test_brush_rle_decodes_literal_blocks_and_other_field_sizes(decoder):
    """Streams as the frontend's rle-pack writes them: literal blocks of several words, word
    sizes and run-length fields other than the converter's."""
    header = f"{6:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    literal = "0" + "00" + f"{2:03b}" + "".join(f"{v:08b}" for v in (10, 20, 30))
    run = "1" + "00" + f"{2:03b}" + f"{40:08b}"
    assert decode_rle(_bits_to_bytes(header + literal + run)).tolist() == [10, 20, 30, 40, 40, 40]
    header = f"{5:032b}{3:05b}" + "".join(f"{s - 1:04b}" for s in (2, 3, 4, 5))
    literal = "0" + "01" + f"{4:03b}" + "".join(f"{v:04b}" for v in (1, 2, 3, 4, 15))
    assert decode_rle(_bits_to_bytes(header + literal)).tolist() == [1, 2, 3, 4, 15]
    with pytest.raises(ValueError, match="stream ends"):
        decode_rle(_bits_to_bytes(header + literal)[:-2])
    with pytest.raises(ValueError, match="runs past the stream's 5 values"):
        decode_rle(_bits_to_bytes(header + "1" + "10" + f"{5:04b}" + "0001"))


def test_brush_rle_decodes_a_large_colour_mask_both_ways(decoder):
    """RGBA of a painted region (colour bytes, alpha 255), encoded as the converter does:
    one short block per byte change, as in frontend masks."""
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[10:50, 5:70] = (255, 0, 17, 255)
    rle = encode_rle(rgba.ravel())
    np.testing.assert_array_equal(decode_rle(rle), rgba.ravel())
    np.testing.assert_array_equal(rle_to_mask(rle, 60, 80), rgba[..., 3] == 255)


def test_brush_rle_matches_the_installed_label_studio_library_if_any():
    brush = None
    for module in ("label_studio_sdk.converter.brush", "label_studio_converter.brush"):
        try:
            brush = __import__(module, fromlist=["encode_rle"])
            break
        except ImportError:
            continue
    if brush is None:
        pytest.skip("neither label-studio-sdk nor label-studio-converter is installed (pinned encodings are "
                    "checked in test_brush_rle_matches_the_converters_encodings)")
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((17, 23)) > 0.6
        assert mask_to_rle(mask) == brush.mask2rle(mask.astype(np.uint8) * 255)
        np.testing.assert_array_equal(decode_rle(brush.mask2rle(mask.astype(np.uint8) * 255)),
                                      np.repeat(mask.ravel().astype(np.uint8) * 255, 4))


def _ls_result(mask, *labels, rid="r"):
    return {"id": rid, "type": "brushlabels", "from_name": "brush", "to_name": "img",
            "original_width": mask.shape[1], "original_height": mask.shape[0], "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": list(labels)}}


def _block(rows, cols):
    m = np.zeros((H, W), bool)
    m[rows, cols] = True
    return m


def _ls_export(tmp_path, tasks) -> Path:
    write_images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def test_labelstudio_round_trip_through_predictions(tmp_path):
    tasks = [
        {"id": 1, "data": {"img": "/data/upload/3/8f3a2c1b-a.png"}, "annotations": [
            {"id": 1, "was_cancelled": True, "result": [_ls_result(_block(slice(None), slice(None)), "car")]},
            {"id": 2, "result": [_ls_result(_block(slice(0, 5), slice(0, 9)), "car"),
                                 _ls_result(_block(slice(10, 20), slice(3, 7)), "tree", rid="s"),
                                 {"id": "k", "type": "keypointlabels", "value": {"x": 1, "y": 2}}]}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=photos/b.png"}, "annotations": []}]
    path = _ls_export(tmp_path, tasks)
    assert detect_format(path) == "labelstudio"
    export = read_labelstudio(path, tmp_path / "images", class_names=["road", "car", "tree"])
    assert (export.from_name, export.to_name) == ("brush", "img")
    labels = labels_of(export)
    want = np.full((H, W), 255, np.uint8)
    want[0:5, 0:9] = 1
    want[10:20, 3:7] = 2
    np.testing.assert_array_equal(labels["a.png"], want)
    assert (labels["b.png"] == 255).all()
    assert export.warning_counts() == {"no_segmentation": 1, "unannotated": 1}
    written = write_labelstudio(tmp_path / "out", export, completions_of(export, 0.75))
    doc = json.loads(written.main_file.read_text())
    assert [t["data"] for t in doc] == [t["data"] for t in tasks]
    pred = doc[0]["predictions"][0]
    assert pred["score"] == 0.75 and pred["model_version"] == "lmae"
    for result in pred["result"]:
        assert result["value"]["format"] == "rle" and result["from_name"] == "brush" and result["score"] == 0.75
        cls = ["road", "car", "tree"].index(result["value"]["brushlabels"][0])
        mask = decode_rle(result["value"]["rle"]).reshape(H, W, 4)[:, :, 3] == 255
        np.testing.assert_array_equal(mask, want == cls)
    again = read_annotations(written.main_file, "auto", tmp_path / "images", ["road", "car", "tree"])
    for name, label in labels_of(again).items():
        np.testing.assert_array_equal(label, labels[name])


def test_labelstudio_overlap_unknown_labels_and_missing_images(tmp_path):
    tasks = [{"id": 7, "data": {"image": "a.png"}, "annotations": [{"result": [
        _ls_result(_block(slice(0, 10), slice(0, 10)), "car"),
        _ls_result(_block(slice(5, 15), slice(5, 15)), "tree", rid="s")]}]}]
    path = _ls_export(tmp_path, tasks)
    export = read_labelstudio(path, tmp_path / "images")
    assert export.class_names == ["car", "tree"]
    label = labels_of(export)["a.png"]
    assert (label[5:10, 5:10] == 255).all() and label[0, 0] == 0 and label[14, 14] == 1
    assert export.warning_counts() == {"overlap": 25}
    with pytest.raises(FormatError, match=r"export\.json: categories \['tree'\] are not among the class names"):
        read_labelstudio(path, tmp_path / "images", ["car", "road"])
    tasks[0]["data"]["image"] = "s3://bucket/nothing.png"
    path.write_text(json.dumps(tasks))
    with pytest.raises(FormatError, match=r"1 listed images missing .*\['s3://bucket/nothing.png'\]"):
        read_labelstudio(path, tmp_path / "images")
    tasks[0]["data"]["image"] = "a.png"
    tasks[0]["annotations"][0]["result"][0]["original_width"] = W + 1
    path.write_text(json.dumps(tasks))
    with pytest.raises(FormatError, match=r"task 7.*image sizes"):
        list(read_labelstudio(path, tmp_path / "images"))
