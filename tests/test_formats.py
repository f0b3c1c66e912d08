"""Annotation-tool formats (lmae_sdk.formats): COCO and CVAT masks, format detection, atomic output.

Each format: known annotations come back unchanged after read -> write -> re-read, the real
library (pycocotools) re-reads what is written, and each bad-input rule holds (an error that
names the file, or a counted warning).  Label Studio: tests/test_formats_labelstudio.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from formats_data import H, W, completions_of, labels_of, write_images
from lmae_sdk.formats import (Completion, FormatError, detect_format, read_annotations, read_coco, read_cvat,
                              write_annotations, write_coco, write_cvat)


def _needs_pycocotools():
    return pytest.importorskip("pycocotools.mask", reason="pycocotools (extra 'formats') is not installed")


# ---------------------------------------------------------------- COCO


def _rect(x0, y0, x1, y1):
    """A polygon covering pixels x0..x1-1, y0..y1-1 (pycocotools' rasterisation)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _coco_doc(annotations, categories=("cat", "dog", "sky")):
    return {"info": {"description": "test"}, "licenses": [],
            "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                       {"id": 2, "file_name": "b.png", "width": W, "height": H}],
            "categories": [{"id": 10 + i, "name": n, "supercategory": ""} for i, n in enumerate(categories)],
            "annotations": [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]}


def _coco_export(tmp_path, annotations, **doc_args) -> Path:
    write_images(tmp_path / "images", ["a.png", "b.png"])
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances.json"
    path.write_text(json.dumps(_coco_doc(annotations, **doc_args)))
    return path


def test_coco_polygons_and_rles_read_as_class_ids(tmp_path):
    api = _needs_pycocotools()
    sky = np.zeros((H, W), np.uint8)
    sky[:4] = 1
    dog_rle = {"size": [H, W], "counts": api.encode(np.asfortranarray(sky))["counts"].decode()}
    cat_uncompressed = {"size": [H, W], "counts": [H * 20, H * 2, H * (W - 22)]}  # columns 20, 21
    path = _coco_export(tmp_path, [
        {"image_id": 1, "category_id": 10, "segmentation": [_rect(2, 6, 8, 12)]},
        {"image_id": 1, "category_id": 11, "segmentation": dog_rle},
        {"image_id": 2, "category_id": 10, "segmentation": cat_uncompressed}])
    export = read_coco(path)
    assert export.class_names == ["cat", "dog", "sky"] and len(export) == 2
    labels = labels_of(export)
    want = np.full((H, W), 255, np.uint8)
    want[6:12, 2:8] = 0
    want[:4] = 1
    np.testing.assert_array_equal(labels["a.png"], want)
    want_b = np.full((H, W), 255, np.uint8)
    want_b[:, 20:22] = 0
    np.testing.assert_array_equal(labels["b.png"], want_b)
    assert export.warnings == []


def test_coco_round_trip_and_pycocotools_rereads(tmp_path):
    _needs_pycocotools()
    from pycocotools.coco import COCO

    path = _coco_export(tmp_path, [
        {"image_id": 1, "category_id": 10, "segmentation": [_rect(2, 6, 8, 12), _rect(20, 0, 30, 3)]},
        {"image_id": 1, "category_id": 12, "segmentation": [_rect(0, 20, W, H)]},
        {"image_id": 2, "category_id": 11, "segmentation": [_rect(5, 5, 15, 15)]}])
    export = read_coco(path, class_names=["sky", "cat", "dog", "tree"])
    before = labels_of(export)
    confidence = np.linspace(0, 1, H * W).reshape(H, W)
    written = write_coco(tmp_path / "out", export, completions_of(export, confidence))
    assert written.main_file == tmp_path / "out" / "instances.json" and written.images == 2
    again = labels_of(read_coco(written.main_file, tmp_path / "images", ["sky", "cat", "dog", "tree"]))
    for name in before:
        np.testing.assert_array_equal(again[name], before[name])
    coco = COCO(str(written.main_file))
    doc = json.loads(written.main_file.read_text())
    assert doc["info"] == {"description": "test"}
    assert {c["name"]: c["id"] for c in doc["categories"]} == {"cat": 10, "dog": 11, "sky": 12, "tree": 13}
    names = {c["id"]: c["name"] for c in doc["categories"]}
    classes = ["sky", "cat", "dog", "tree"]
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]["file_name"]
        mask = coco.annToMask(ann).astype(bool)
        np.testing.assert_array_equal(mask, before[image] == classes.index(names[ann["category_id"]]))
        assert ann["score"] == pytest.approx(confidence[mask].mean(), abs=1e-6)
    assert len(coco.getAnnIds()) == 3  # one per (image, class present)


def test_coco_panoptic_round_trip(tmp_path):
    write_images(tmp_path / "images", ["a.png", "b.png"])
    ids = np.zeros((H, W), np.int64)
    ids[2:10, 3:9] = 300  # one segment id over 255: needs the G channel
    ids[12:, :] = 7
    masks = tmp_path / "panoptic_val"
    masks.mkdir()
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(masks / "a.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(masks / "b.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                      {"id": 2, "file_name": "b.png", "width": W, "height": H}],
           "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 5, "name": "road", "isthing": 0}],
           "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [
               {"id": 300, "category_id": 1}, {"id": 7, "category_id": 5}]},
               {"image_id": 2, "file_name": "b.png", "segments_info": []}]}
    (tmp_path / "panoptic_val.json").write_text(json.dumps(doc))
    assert detect_format(tmp_path / "panoptic_val.json") == "coco"
    export = read_coco(tmp_path / "panoptic_val.json", tmp_path / "images")
    assert export.variant == "panoptic"
    labels = labels_of(export)
    want = np.full((H, W), 255, np.uint8)
    want[2:10, 3:9] = 0
    want[12:] = 1
    np.testing.assert_array_equal(labels["a.png"], want)
    assert (labels["b.png"] == 255).all()
    written = write_annotations(tmp_path / "out", export, completions_of(export, 0.5))
    assert written.main_file.name == "panoptic.json"
    again = read_coco(written.main_file, tmp_path / "images")
    for name, label in labels_of(again).items():
        np.testing.assert_array_equal(label, labels[name])
    segs = json.loads(written.main_file.read_text())["annotations"][0]["segments_info"]
    assert sorted((s["category_id"], s["area"], s["score"]) for s in segs) == [(1, 48, 0.5), (5, 12 * W, 0.5)]


def test_coco_unknown_category_is_an_error_naming_it(tmp_path):
    _needs_pycocotools()
    path = _coco_export(tmp_path, [{"image_id": 1, "category_id": 11, "segmentation": [_rect(0, 0, 4, 4)]}])
    with pytest.raises(FormatError, match=r"instances\.json.*\['dog'\] are not among the class names"):
        read_coco(path, class_names=["cat", "sky"])
    export = read_coco(path, class_names=["cat", "dog"])  # sky: not a class, but no annotation uses it
    assert export.warning_counts() == {"unused_category": 1}


def test_coco_overlap_of_two_classes_is_unknown_and_counted(tmp_path):
    _needs_pycocotools()
    path = _coco_export(tmp_path, [
        {"image_id": 1, "category_id": 10, "segmentation": [_rect(0, 0, 10, 10)]},
        {"image_id": 1, "category_id": 11, "segmentation": [_rect(6, 6, 16, 16)]},
        {"image_id": 1, "category_id": 10, "segmentation": [_rect(8, 0, 12, 4)]}])  # same class: no overlap
    export = read_coco(path)
    label = labels_of(export)["a.png"]
    assert (label[6:10, 6:10] == 255).all() and label[0, 0] == 0 and label[15, 15] == 1
    assert label[2, 11] == 0
    assert export.warning_counts() == {"overlap": 16, "unannotated": 1}


def test_coco_polygons_outside_the_image_are_clipped_and_counted(tmp_path):
    _needs_pycocotools()
    path = _coco_export(tmp_path, [
        {"image_id": 1, "category_id": 10, "segmentation": [_rect(-5, -5, 4, 4)]},
        {"image_id": 1, "category_id": 11, "segmentation": [_rect(W - 2, 10, W + 9, 12)]},
        {"image_id": 2, "category_id": 11, "segmentation": [], "bbox": [0, 0, 3, 3]}])
    export = read_coco(path)
    label = labels_of(export)["a.png"]
    assert (label[:4, :4] == 0).all() and (label == 0).sum() == 16
    assert (label[10:12, W - 2:] == 1).all() and (label == 1).sum() == 4
    assert export.warning_counts() == {"clipped": 2, "no_segmentation": 1}


def test_coco_missing_images_are_an_error_naming_them(tmp_path):
    _needs_pycocotools()
    path = _coco_export(tmp_path, [])
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(FormatError, match=r"1 listed images missing from .*images: \['b.png'\]"):
        read_coco(path)


def test_coco_bad_rle_size_and_bad_json_are_errors(tmp_path):
    _needs_pycocotools()
    path = _coco_export(tmp_path, [{"image_id": 1, "category_id": 10,
                                    "segmentation": {"size": [H + 1, W], "counts": [H * W + W]}}])
    with pytest.raises(FormatError, match=r"annotation 1.*RLE size"):
        list(read_coco(path))
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(FormatError, match=r"instances\.json: COCO JSON has no 'annotations' list"):
        read_coco(path)


def test_coco_without_pycocotools_names_the_extra(tmp_path, monkeypatch):
    from lmae_sdk.extras import MissingExtra

    path = _coco_export(tmp_path, [])
    monkeypatch.setitem(__import__("sys").modules, "pycocotools", None)
    with pytest.raises(MissingExtra, match=r"pycocotools.*lmae-sdk\[formats\]"):
        read_coco(path)


# ---------------------------------------------------------------- CVAT masks

CVAT_COLOURS = {"background": (0, 0, 0), "cat": (255, 0, 0), "dog": (0, 255, 0)}


def _cvat_export(tmp_path, masks: dict[str, np.ndarray], labelmap=CVAT_COLOURS, listed=None) -> Path:
    root = tmp_path / "cvat"
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{','.join(map(str, c))}::\n" for n, c in labelmap.items()))
    for name, rgb in masks.items():
        Image.fromarray(rgb).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(listed or masks) + "\n")
    write_images(root / "JPEGImages", [f"{n}.jpg" for n in masks])
    return root


def _paint(regions: list[tuple[slice, slice, tuple]]) -> np.ndarray:
    rgb = np.zeros((H, W, 3), np.uint8)
    for rows, cols, colour in regions:
        rgb[rows, cols] = colour
    return rgb


def test_cvat_black_is_unknown_unless_background_is_a_class_and_round_trips(tmp_path):
    root = _cvat_export(tmp_path, {
        "x1": _paint([(slice(0, 5), slice(0, 5), (255, 0, 0)), (slice(10, 20), slice(0, W), (0, 255, 0))]),
        "x2": _paint([])})
    assert detect_format(root) == "cvat" and detect_format(root / "labelmap.txt") == "cvat"
    export = read_cvat(root)
    assert export.class_names == ["cat", "dog"]
    labels = {item.meta.key: item.partial for item in export}
    want = np.full((H, W), 255, np.uint8)
    want[:5, :5] = 0
    want[10:20] = 1
    np.testing.assert_array_equal(labels["x1"], want)
    assert (labels["x2"] == 255).all() and export.warning_counts() == {"unannotated": 1}
    written = write_cvat(tmp_path / "out", export, completions_of(export))
    assert (tmp_path / "out" / "labelmap.txt").read_text().splitlines()[1:] == \
        (root / "labelmap.txt").read_text().splitlines()[1:]
    assert (tmp_path / "out" / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == ["x1", "x2"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "SegmentationClass" / "x1.png")),
                                  np.asarray(Image.open(root / "SegmentationClass" / "x1.png")))
    again = read_cvat(written.folder, root / "JPEGImages")
    for item in again:
        np.testing.assert_array_equal(item.partial, labels[item.meta.key])

    with_bg = read_cvat(root, class_names=["background", "cat", "dog"])
    label = next(iter(with_bg)).partial
    assert label[0, 0] == 1 and label[10, 0] == 2 and (label[5:10] == 0).all() and 255 not in label
    label[0, 0] = 255  # the unannotated colour is a class now: an unknown pixel cannot stay unknown
    written = write_cvat(tmp_path / "out_bg", with_bg, [Completion(next(iter(with_bg)).meta, label)])
    assert [(w.kind, w.count) for w in written.warnings] == [("unknown_written", 1)]


def test_cvat_without_background_label_reads_black_as_unknown_and_grey_masks_as_line_indices(tmp_path):
    root = _cvat_export(tmp_path, {"x1": _paint([(slice(0, 3), slice(0, 3), (255, 0, 0))])},
                        labelmap={"cat": (255, 0, 0), "dog": (0, 255, 0)})
    label = next(iter(read_cvat(root))).partial
    assert label[0, 0] == 0 and label[5, 5] == 255
    (root / "labelmap.txt").write_text("background:0,0,0::\ncat:255,0,0::\ndog:0,255,0::\n")
    grey = np.zeros((H, W), np.uint8)  # line 0 of the labelmap: background, not annotated
    grey[:2] = 2  # line 2: dog
    Image.fromarray(grey).save(root / "SegmentationClass" / "x1.png")
    label = next(iter(read_cvat(root, class_names=["dog", "cat"]))).partial
    assert (label[:2] == 0).all() and (label[2:] == 255).all()


def test_cvat_bad_inputs_are_errors_naming_the_file(tmp_path):
    root = _cvat_export(tmp_path, {"x1": _paint([(slice(0, 2), slice(0, 2), (1, 2, 3))])})
    with pytest.raises(FormatError, match=r"x1\.png: colour \(1, 2, 3\) is not in labelmap\.txt"):
        list(read_cvat(root))
    Image.fromarray(_paint([(slice(0, 2), slice(0, 2), (0, 255, 0))])).save(root / "SegmentationClass" / "x1.png")
    with pytest.raises(FormatError, match=r"x1\.png: label 'dog' is not among the class names"):
        list(read_cvat(root, class_names=["cat"]))
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("x1\nx9\n")
    with pytest.raises(FormatError, match=r"1 listed items have no SegmentationClass PNG: \['x9'\]"):
        read_cvat(root)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("x1\n")
    (root / "JPEGImages" / "x1.jpg").unlink()
    with pytest.raises(FormatError, match=r"listed images missing from .*JPEGImages: \['x1'\]"):
        read_cvat(root)
    (root / "labelmap.txt").write_text("cat:255,0\n")
    with pytest.raises(FormatError, match=r"labelmap\.txt: line 1 'cat:255,0'"):
        read_cvat(root)


# ---------------------------------------------------------------- detection and atomic output


def test_detect_format_tells_exports_and_dataset_layouts_apart(tmp_path, synth_root):
    assert detect_format(synth_root) == "folder"  # its classes.json is not a COCO file
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    assert detect_format(voc) == "voc"
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_default.json").write_text(json.dumps(_coco_doc([])))
    assert detect_format(coco) == "coco"
    (tmp_path / "other.json").write_text('{"classes": []}')
    with pytest.raises(FormatError, match=r"other\.json: not an annotation export"):
        detect_format(tmp_path / "other.json")
    with pytest.raises(FormatError, match="dataset layout"):
        read_annotations(synth_root)


def test_writers_refuse_a_non_empty_output_and_leave_nothing_on_failure(tmp_path):
    root = _cvat_export(tmp_path, {"x1": _paint([(slice(0, 5), slice(0, 5), (255, 0, 0))])})
    export = read_cvat(root)
    done = completions_of(export)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FormatError, match="not empty"):
        write_cvat(out, export, done)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    bad = [Completion(done[0].meta, np.zeros((H + 1, W), np.uint8))]
    with pytest.raises(FormatError, match=r"completed label \(25, 32\) uint8 for image x1"):
        write_cvat(out, export, bad, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cvat", "out"]  # no temp folder left
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_cvat(out, export, done, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["ImageSets", "SegmentationClass", "labelmap.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cvat", "out"]
