"""Datasets whose splits are annotation-tool exports (layouts coco, cvat, labelstudio of
load_dataset): converted once into label PNGs in a cache outside DATA, unknown (255) where
no annotation is, classes by name, reused by later loads, read by the training loader and
the fit's data check."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmae_sdk.datasets import DatasetError, load_dataset
from lmae_sdk.labels import read_label

H, W = 24, 32


def _rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _coco_split(split: Path, names: list[str], categories=(("road", 5), ("car", 2))) -> dict[str, np.ndarray]:
    """DATA/<split>/images/*.png + DATA/<split>/instances.json; returns the partial labels it
    stands for with the classes ``names``."""
    rng = np.random.default_rng(len(split.name))
    (split / "images").mkdir(parents=True)
    files = ["x.png", "y.jpg"]
    for n in files:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(split / "images" / n)
    (road, road_id), (car, car_id) = categories
    doc = {"images": [{"id": i + 1, "file_name": n, "width": W, "height": H} for i, n in enumerate(files)],
           "categories": [{"id": road_id, "name": road}, {"id": car_id, "name": car}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": road_id, "segmentation": [_rect(0, 16, W, H)], "iscrowd": 0},
               {"id": 2, "image_id": 1, "category_id": car_id, "segmentation": [_rect(4, 4, 12, 10)], "iscrowd": 0}]}
    (split / "instances.json").write_text(json.dumps(doc))
    x = np.full((H, W), 255, np.uint8)
    x[16:, :] = names.index(road) if road in names else 0
    x[4:10, 4:12] = names.index(car) if car in names else 0
    return {"x": x, "y": np.full((H, W), 255, np.uint8)}  # y: no annotation, all unknown


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_coco_layout_converts_once_into_partial_label_pngs_outside_data(tmp_path):
    pytest.importorskip("pycocotools.mask")
    data, cache = tmp_path / "data", tmp_path / "cache"
    want = {s: _coco_split(data / s, ["car", "road"]) for s in ("train", "val")}
    before = _digest(data)
    info = load_dataset(data, cache_dir=cache)  # --layout auto
    assert info.layout == "coco" and info.class_names == ["car", "road"]  # category ids 2, 5: id order
    assert _digest(data) == before  # DATA is only read
    for s in ("train", "val"):
        assert [img.name for img, _ in info.pairs[s]] == ["x.png", "y.jpg"]
        for img, lab in info.pairs[s]:
            assert img == (data / s / "images" / img.name).resolve() and cache in lab.parents
            label, _ = read_label(lab)
            np.testing.assert_array_equal(label, want[s][img.stem])
    assert "train: 1 unannotated" in info.notes

    labels = [lab for _, lab in info.pairs["train"]]
    stamps = [lab.stat().st_mtime_ns for lab in labels]
    again = load_dataset(data, ("val",), "coco", cache_dir=cache)  # reused, not converted again
    assert [lab for _, lab in again.pairs["val"]] == [lab for _, lab in info.pairs["val"]]
    assert [lab.stat().st_mtime_ns for lab in labels] == stamps

    from lmae_sdk.recipe.data_check import inspect_dataset
    from lmae_sdk.training.data import load_pairs

    report = inspect_dataset(info)
    assert report.problems == [] and 0 < report.known_share["train"] < 1  # partial labels: the point
    assert [lab.shape for _, lab in load_pairs(info.pairs["train"], info.num_classes)] == [(H, W), (H, W)]


def test_coco_layout_classes_json_orders_classes_and_an_unknown_category_is_an_error(tmp_path, monkeypatch):
    pytest.importorskip("pycocotools.mask")
    data = tmp_path / "data"
    names = ["background", "road", "car", "sign"]
    _coco_split(data / "train", names)
    want = _coco_split(data / "val", names)
    (data / "classes.json").write_text(json.dumps({"classes": names}))
    monkeypatch.setenv("LMAE_CACHE_DIR", str(tmp_path / "env_cache"))
    info = load_dataset(data, ("val",))
    assert info.class_names == names and info.background_index == 0
    assert (tmp_path / "env_cache") in info.pairs["val"][0][1].parents
    np.testing.assert_array_equal(read_label(info.pairs["val"][0][1])[0], want["x"])

    (data / "classes.json").write_text(json.dumps({"classes": ["road", "sign"]}))
    with pytest.raises(DatasetError) as err:
        load_dataset(data, ("val",), cache_dir=tmp_path / "cache")
    assert "'car'" in str(err.value) and "instances.json" in str(err.value)


def test_coco_layout_reconverts_after_the_export_changes_and_checks_split_formats(tmp_path):
    pytest.importorskip("pycocotools.mask")
    data, cache = tmp_path / "data", tmp_path / "cache"
    for s in ("train", "val"):
        _coco_split(data / s, ["car", "road"])
    first = load_dataset(data, cache_dir=cache).pairs["train"][0][1]
    doc = json.loads((data / "train" / "instances.json").read_text())
    doc["annotations"] = doc["annotations"][:1]  # the car annotation removed
    (data / "train" / "instances.json").write_text(json.dumps(doc))
    second = load_dataset(data, cache_dir=cache).pairs["train"][0][1]
    assert second != first and (read_label(second)[0] != 0).all()

    (data / "val" / "instances.json").unlink()
    with pytest.raises(DatasetError, match="no annotation export"):
        load_dataset(data, cache_dir=cache)


def test_cvat_layout_reads_each_split_export(tmp_path):
    data = tmp_path / "data"
    for s in ("train", "val"):
        root = data / s
        (root / "JPEGImages").mkdir(parents=True)
        (root / "SegmentationClass").mkdir()
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
        (root / "labelmap.txt").write_text("background:0,0,0::\nsky:0,0,255::\ntree:0,255,0::\n")
        mask = np.zeros((H, W, 3), np.uint8)
        mask[:8] = (0, 0, 255)
        mask[20:, :10] = (0, 255, 0)
        Image.fromarray(mask).save(root / "SegmentationClass" / "a.png")
    info = load_dataset(data, cache_dir=tmp_path / "cache")
    assert info.layout == "cvat" and info.class_names == ["sky", "tree"]
    assert info.palette == [[0, 0, 255], [0, 255, 0]]
    label = read_label(info.pairs["val"][0][1])[0]
    assert (label[:8] == 0).all() and (label[20:, :10] == 1).all() and (label[8:20] == 255).all()


def test_train_offers_the_export_layouts():
    from lmae_sdk.cli.training_commands import train
    from lmae_sdk.datasets import LAYOUTS

    layout = next(p for p in train.params if p.name == "layout")
    assert list(layout.type.choices) == ["auto", *LAYOUTS] and {"coco", "cvat", "labelstudio"} <= set(LAYOUTS)


def test_labelstudio_layout_reads_tasks_with_images_in_images_folder(tmp_path):
    from lmae_sdk.formats.brush_rle import mask_to_rle

    data = tmp_path / "data"
    for s, label in (("train", "water"), ("val", "sand")):
        (data / s / "images").mkdir(parents=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(data / s / "images" / "a.png")
        mask = np.zeros((H, W), bool)
        mask[2:9, 3:20] = True
        result = {"id": "r", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": W,
                  "original_height": H, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}
        tasks = [{"id": 1, "data": {"image": "/data/upload/1/0a1b2c3d-a.png"}, "annotations": [{"result": [result]}]}]
        (data / s / "project-1.json").write_text(json.dumps(tasks))
    (data / "classes.json").write_text(json.dumps({"classes": ["sand", "water"]}))
    info = load_dataset(data, cache_dir=tmp_path / "cache")
    assert info.layout == "labelstudio" and info.class_names == ["sand", "water"]
    for s, cls in (("train", 1), ("val", 0)):
        label = read_label(info.pairs[s][0][1])[0]
        assert (label[2:9, 3:20] == cls).all() and (label == 255).sum() == H * W - 7 * 17
