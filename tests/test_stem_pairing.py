"""Pairing images and labels by stem: two images of one stem (a.png and a.jpg) are never
paired silently; every pairing refuses them with an error naming both files."""
from __future__ import annotations

import click
import numpy as np
import pytest
from PIL import Image

from lmae_sdk.labels import InputError


def _folders(tmp_path):
    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(imgs / f"{stem}.png")
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(labs / f"{stem}.png")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(imgs / "a.jpg")
    return imgs, labs


def test_image_files_refuses_two_images_of_one_stem(tmp_path):
    from lmae_sdk.labels import image_files

    imgs, _ = _folders(tmp_path)
    with pytest.raises(InputError) as err:
        image_files(imgs)
    assert str(imgs / "a.png") in str(err.value) and str(imgs / "a.jpg") in str(err.value)
    (imgs / "a.jpg").unlink()
    assert sorted(image_files(imgs)) == ["a", "b"]


def test_pipeline_folder_pairs_refuses_two_images_of_one_stem(tmp_path):
    from lmae_sdk.runtime.pipelines import folder_pairs

    imgs, labs = _folders(tmp_path)
    with pytest.raises(InputError) as err:
        folder_pairs(imgs, labs)
    assert "a.png" in str(err.value) and "a.jpg" in str(err.value)


def test_pipeline_folder_pairs_refuses_two_labels_of_one_stem(tmp_path):
    from lmae_sdk.runtime.pipelines import folder_pairs

    imgs, labs = _folders(tmp_path)
    (imgs / "a.jpg").unlink()
    (labs / "b.png").rename(labs / "b.PNG")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(labs / "b.png")
    if len(list(labs.iterdir())) < 3:
        pytest.skip("case-insensitive file system")
    with pytest.raises(InputError) as err:
        folder_pairs(imgs, labs)
    assert "b.png" in str(err.value) and "b.PNG" in str(err.value)


def test_pair_folders_refuses_by_default_and_reports_on_request(tmp_path):
    from lmae_sdk.cli.batch import pair_folders

    imgs, labs = _folders(tmp_path)
    with pytest.raises(click.ClickException) as err:
        pair_folders(imgs, labs)
    assert str(imgs / "a.png") in err.value.format_message() and str(imgs / "a.jpg") in err.value.format_message()
    found = pair_folders(imgs, labs, clashes="report")
    assert [stem for _, _, stem in found.pairs] == ["b"]
    assert list(found.clashes) == [labs / "a.png"]
    why = found.clashes[labs / "a.png"]
    assert str(imgs / "a.png") in why and str(imgs / "a.jpg") in why
    assert found.labels_without_image == [] and found.images_without_label == []


def test_the_cli_and_the_runtime_share_one_pairing(tmp_path):
    from lmae_sdk.cli.batch import pair_folders
    from lmae_sdk.runtime.pipelines import folder_pairs

    imgs, labs = _folders(tmp_path)
    with pytest.raises(InputError) as runtime_err:
        folder_pairs(imgs, labs)
    with pytest.raises(click.ClickException) as cli_err:
        pair_folders(imgs, labs)
    assert cli_err.value.format_message() == str(runtime_err.value)  # the same refusal, word for word
    (imgs / "a.jpg").unlink()
    (imgs / "b.png").unlink()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(imgs / "c.png")
    found = pair_folders(imgs, labs)
    assert [stem for _, _, stem in found.pairs] == ["a"]
    assert found.labels_without_image == [labs / "b.png"] and found.images_without_label == [imgs / "c.png"]
    assert folder_pairs(imgs, labs) == [(imgs / "a.png", labs / "a.png", "a"), (None, labs / "b.png", "b")]
