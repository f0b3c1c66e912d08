"""Data-pipeline adapters: torch IterableDataset and the Ray Data map_batches callable."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from lmae_sdk.labels import write_label
from lmae_sdk.runtime.pipelines import CompletionDataset, RayCompleter


def _pairs(n, same_size=False, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (48, 64) if same_size else (int(rng.integers(30, 90)), int(rng.integers(30, 120)))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
        lab[: int(h * [0.3, 0.8][i % 2])] = 255
        out.append((img, lab))
    return out


def test_iterable_dataset_pairs_and_folders(ckpt, tmp_path):
    pairs = _pairs(5)
    ds = CompletionDataset(ckpt, pairs, backend="torch", batch_size=2)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    items = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert len(items) == 5
    for (img, lab), it in zip(pairs, items):
        assert it["label"].shape == lab.shape and (it["label"][lab != 255] == lab[lab != 255]).all()
    # from folders, names kept, a bad pair reported in place
    (tmp_path / "i").mkdir()
    for i, (img, lab) in enumerate(pairs[:3]):
        Image.fromarray(img).save(tmp_path / "i" / f"p{i}.png")
        write_label(tmp_path / "l" / f"p{i}.png", lab)
    write_label(tmp_path / "l" / "zz_orphan.png", np.zeros((5, 5), np.uint8))
    ds = CompletionDataset(ckpt, (tmp_path / "i", tmp_path / "l"), backend="torch", on_error="return")
    got = list(ds)
    assert [g["name"] for g in got] == ["p0", "p1", "p2", "zz_orphan"]
    assert got[3]["label"] is None and "not found" in got[3]["error"]


def test_ray_callable_directly(ckpt):
    fn = RayCompleter(ckpt, backend="torch", batch_size=2)
    pairs = _pairs(3)
    col = np.empty(3, dtype=object)
    labs = np.empty(3, dtype=object)
    for i, (img, lab) in enumerate(pairs):
        col[i], labs[i] = img, lab
    out = fn({"image": col, "label": labs, "id": np.arange(3)})
    assert list(out["id"]) == [0, 1, 2] and len(out["completed"]) == 3
    for (img, lab), done in zip(pairs, out["completed"]):
        assert (done[lab != 255] == lab[lab != 255]).all() and (done != 255).all()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'lmae-sdk[ray]')")
def test_ray_map_batches_on_local_cluster(ckpt):
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        pairs = _pairs(6, same_size=True)
        ds = ray.data.from_items([{"image": img, "label": lab, "id": i} for i, (img, lab) in enumerate(pairs)])
        done = ds.map_batches(RayCompleter, fn_constructor_kwargs={"model": str(ckpt), "backend": "torch"},
                              batch_size=3, batch_format="numpy", concurrency=1).take_all()
        assert len(done) == 6
        for row in done:
            img, lab = pairs[int(row["id"])]
            c = np.asarray(row["completed"])
            assert c.shape == lab.shape and (c[lab != 255] == lab[lab != 255]).all() and (c != 255).all()
            assert np.asarray(row["confidence"]).shape == lab.shape
    finally:
        ray.shutdown()
