"""``lmae complete`` on annotation-tool exports (COCO, CVAT masks, Label Studio) with the
ONNX bundle of tests/conftest.py (classes a..e): the output is re-read with the real
library (pycocotools) or the SDK's readers; known pixels survive, every other pixel gets a
class, each annotation scores its pixels' mean confidence; bad images fail alone; reruns
and other runs' outputs follow the documented rules."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lmae_sdk.cli import main

H, W = 40, 56
CLASSES = list("abcde")  # the onnx_bundle fixture's class names


def _run(*args):
    return CliRunner().invoke(main, ["complete", *map(str, args), "--threads", "1", "--lanes", "1", "--quiet",
                                     "--backend", "onnxruntime"])


def _images(folder: Path, names=("a.png", "b.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / n)
    return folder


def _rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _coco(tmp_path: Path, categories=(("d", 7), ("b", 3))) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """instances.json (two images, categories named like two model classes, ids not the
    class ids) and the partial labels it stands for."""
    imgs = _images(tmp_path / "images")
    cats = [{"id": cid, "name": name} for name, cid in categories]
    anns = [{"id": 1, "image_id": 1, "category_id": cats[0]["id"], "segmentation": [_rect(0, 0, 20, 10)]},
            {"id": 2, "image_id": 1, "category_id": cats[1]["id"], "segmentation": [_rect(30, 20, 50, 36)]},
            {"id": 3, "image_id": 2, "category_id": cats[1]["id"], "segmentation": [_rect(4, 4, 40, 30)]}]
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                      {"id": 2, "file_name": "b.png", "width": W, "height": H}],
           "categories": cats, "annotations": anns}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    first, second = (CLASSES.index(name) if name in CLASSES else 0 for name, _ in categories)
    a = np.full((H, W), 255, np.uint8)
    a[0:10, 0:20] = first
    a[20:36, 30:50] = second
    b = np.full((H, W), 255, np.uint8)
    b[4:30, 4:40] = second
    return path, imgs, {"a.png": a, "b.png": b}


def _expected(bundle, image: Path, partial: np.ndarray):
    from lmae_sdk.runtime import LMAECompleter

    r = LMAECompleter.load(bundle, backend="onnxruntime", threads=1).complete(str(image), partial)
    return r.label, r.confidence


def test_complete_coco_writes_instances_json_that_pycocotools_reads(onnx_bundle, tmp_path):
    pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO

    path, imgs, partials = _coco(tmp_path)
    before = path.read_bytes()
    out = tmp_path / "out"
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 0, res.output
    assert "2 done" in res.output and "0 failed" in res.output
    assert path.read_bytes() == before  # inputs untouched
    assert sorted(p.name for p in out.iterdir()) == [".lmae-run.json", "instances.json", "report.json"]
    coco = COCO(str(out / "instances.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert names[7] == "d" and names[3] == "b" and sorted(names.values()) == CLASSES  # the export's ids kept
    for img_id, file_name in ((1, "a.png"), (2, "b.png")):
        assert coco.loadImgs(img_id)[0]["file_name"] == file_name
        label, confidence = _expected(onnx_bundle, imgs / file_name, partials[file_name])
        painted = np.full((H, W), 255, np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert len({a["category_id"] for a in anns}) == len(anns)  # one annotation per class present
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            assert (painted[mask] == 255).all()  # annotations do not overlap
            painted[mask] = CLASSES.index(names[ann["category_id"]])
            assert ann["score"] == pytest.approx(float(confidence[mask].mean()), abs=1e-4)
            assert 0 <= ann["score"] <= 1
        known = partials[file_name] != 255
        assert (painted != 255).all()  # every pixel completed
        np.testing.assert_array_equal(painted[known], partials[file_name][known])
        assert (painted == label).mean() > 0.99
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "coco" and report["images_completed"] == 2 and report["images_failed"] == 0


def test_complete_coco_bad_image_fails_alone_and_reruns_follow_the_run_record(onnx_bundle, tmp_path):
    pytest.importorskip("pycocotools.mask")
    path, imgs, _ = _coco(tmp_path)
    (imgs / "a.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 1, res.output
    assert "1 done" in res.output and "1 failed" in res.output and str(imgs / "a.png") in res.output
    doc = json.loads((out / "instances.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["b.png"]
    assert "a.png" in json.loads((out / "report.json").read_text())["failures"]

    _images(imgs, ["a.png"])  # repaired: the same run is redone whole (its report listed a failure)
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 0 and "2 done" in res.output, res.output
    finished = (out / "instances.json").read_bytes()

    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 0 and "0 done, 2 skipped" in res.output, res.output
    assert (out / "instances.json").read_bytes() == finished

    doc = json.loads(path.read_text())
    doc["annotations"] = doc["annotations"][1:]  # the export was edited: the same run is redone
    path.write_text(json.dumps(doc))
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 0 and "2 done" in res.output, res.output
    assert (out / "instances.json").read_bytes() != finished
    finished = (out / "instances.json").read_bytes()

    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out, "--min-confidence", "0.9")
    assert res.exit_code == 1 and "another run" in res.output and "min_confidence" in res.output, res.output
    assert (out / "instances.json").read_bytes() == finished  # refused: left as it was
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out, "--min-confidence", "0.9",
               "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / ".lmae-run.json").read_text())["options"]["min_confidence"] == 0.9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left beside it


def test_complete_coco_refuses_what_it_must_not_replace_or_read(onnx_bundle, tmp_path):
    pytest.importorskip("pycocotools.mask")
    path, imgs, _ = _coco(tmp_path, categories=(("d", 7), ("zebra", 3)))
    out = tmp_path / "out"
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 1 and "zebra" in res.output and "Traceback" not in res.output, res.output

    path, imgs, _ = _coco(tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", foreign, *extra)
        assert res.exit_code == 1 and "no run record" in res.output, res.output
    assert (foreign / "notes.txt").read_text() == "keep me"

    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", tmp_path, "--overwrite")
    assert res.exit_code == 2 and "replaced as a whole" in res.output, res.output
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out, "--confidence-dir",
               tmp_path / "conf")
    assert res.exit_code == 2 and "--confidence-dir" in res.output, res.output
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out, "--format", "folder")
    assert res.exit_code == 2 and "folder of partial label PNGs" in res.output, res.output
    assert not out.exists() or not any(out.iterdir())


def test_complete_cvat_export_writes_the_same_layout(onnx_bundle, tmp_path):
    from lmae_sdk.formats import read_cvat

    root = tmp_path / "cvat_export"
    _images(root / "JPEGImages", ["a.png"])
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nb:0,128,0::\n"
                                       "d:128,0,0::\n")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("a\n")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:10, :20] = (128, 0, 0)
    rgb[20:, 30:] = (0, 128, 0)
    (root / "SegmentationClass").mkdir()
    Image.fromarray(rgb).save(root / "SegmentationClass" / "a.png")
    partial = np.full((H, W), 255, np.uint8)
    partial[:10, :20] = CLASSES.index("d")
    partial[20:, 30:] = CLASSES.index("b")

    out = tmp_path / "out"
    res = _run("--model", onnx_bundle, "--images", root / "JPEGImages", "--labels", root, "--out", out)
    assert res.exit_code == 0 and "1 done" in res.output, res.output
    assert (out / "labelmap.txt").is_file() and (out / "SegmentationClass" / "a.png").is_file()
    assert (out / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == ["a"]
    again = next(iter(read_cvat(out, images_dir=root / "JPEGImages", class_names=CLASSES)))
    known = partial != 255
    assert (again.partial != 255).all()
    np.testing.assert_array_equal(again.partial[known], partial[known])


def test_complete_labelstudio_writes_predictions_json(onnx_bundle, tmp_path):
    from lmae_sdk.formats import read_labelstudio
    from lmae_sdk.formats.brush_rle import mask_to_rle

    imgs = _images(tmp_path / "images", ["a.png"])
    mask = np.zeros((H, W), bool)
    mask[5:25, 10:40] = True
    tasks = [{"id": 11, "data": {"image": "/data/upload/1/8f3a2c1b-a.png"}, "annotations": [{"id": 1, "result": [
        {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": W,
         "original_height": H, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["c"]}}]}]}]
    path = tmp_path / "project.json"
    path.write_text(json.dumps(tasks))
    out = tmp_path / "out"
    res = _run("--model", onnx_bundle, "--images", imgs, "--labels", path, "--out", out)
    assert res.exit_code == 0 and "1 done" in res.output, res.output
    written = json.loads((out / "predictions.json").read_text())
    prediction = written[0]["predictions"][0]
    assert written[0]["data"] == tasks[0]["data"] and 0 <= prediction["score"] <= 1
    assert all(0 <= r["score"] <= 1 for r in prediction["result"])
    again = next(iter(read_labelstudio(out / "predictions.json", imgs, CLASSES)))
    assert (again.partial != 255).all() and (again.partial[mask] == CLASSES.index("c")).all()


def test_label_formats_match_the_formats_package():
    from lmae_sdk.cli.complete_export import LABEL_FORMATS
    from lmae_sdk.formats import ANNOTATION_FORMATS

    assert LABEL_FORMATS == ("auto", "folder", *ANNOTATION_FORMATS)


def test_each_item_hands_on_a_bad_item_as_a_failure_and_goes_on(tmp_path):
    from lmae_sdk.formats import read_cvat
    from lmae_sdk.formats.items import ItemFailure, each_item

    root = tmp_path / "cvat"
    _images(root / "JPEGImages", ["a.png", "b.png", "c.png"])
    (root / "labelmap.txt").write_text("background:0,0,0::\nb:0,128,0::\n")
    (root / "SegmentationClass").mkdir()
    for name, colour in (("a", (0, 128, 0)), ("b", (9, 9, 9)), ("c", (0, 0, 0))):
        Image.fromarray(np.full((H, W, 3), colour, np.uint8)).save(root / "SegmentationClass" / f"{name}.png")
    export = read_cvat(root, class_names=CLASSES)
    with pytest.raises(ValueError, match="9, 9, 9"):
        list(export)  # iterating the export itself stops at the bad mask
    got = list(each_item(export))
    assert [type(g).__name__ for g in got] == ["ExportItem", "ItemFailure", "ExportItem"]
    failure = got[1]
    assert isinstance(failure, ItemFailure) and failure.image_path.name == "b.png"
    assert "b.png" in failure.message and "(9, 9, 9)" in failure.message
    assert (got[0].partial == CLASSES.index("b")).all() and (got[2].partial == 255).all()
    assert export.warning_counts().get("unannotated") == 1  # c: warnings still reach the export
