"""RayCompleter in ray.data map_batches on a local two-CPU Ray cluster, with an actor pool.

The actors complete a folder of images and partial labels read by path; every row must
equal what the local completer gives for the same pair, bit for bit (ONNX Runtime on CPU
runs its graphs one image at a time with one thread, so batching cannot change a result).
"""
import os
import signal
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lmae_sdk.degrade import degrade
from lmae_sdk.labels import write_label
from lmae_sdk.runtime.pipelines import RayCompleter, folder_pairs
from lmae_sdk.synthetic import synth_pair

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'lmae-sdk[ray]')")
pytest.importorskip("ray.data", reason="ray is installed without Ray Data (pip install 'ray[data]')")

# the driver's environment while the cluster runs; the workers get RAY_WORKER_ENV as well
RAY_DRIVER_ENV = {"RAY_DISABLE_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
RAY_WORKER_ENV = {**RAY_DRIVER_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SIZES = [(64, 96), (37, 53), (120, 150), (64, 96), (1, 40), (90, 31), (64, 96)]


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local cluster of 2 CPUs; the process's environment, SIGTERM handler and
    excepthook (which ray.init changes) are restored after shutdown."""
    saved_env, saved_hook = dict(os.environ), sys.excepthook
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    os.environ.update(RAY_DRIVER_ENV)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": RAY_WORKER_ENV})
        yield ray
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved_env)
        sys.excepthook = saved_hook
        signal.signal(signal.SIGTERM, saved_sigterm)


@pytest.fixture(scope="module")
def bundle(onnx_bundle):
    return onnx_bundle


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Synthetic images (PNG and JPEG) with partial labels of 0-100% unknown, sizes from
    1x40 to larger than the model's 64x96, and one label whose size differs from its image's."""
    root = tmp_path_factory.mktemp("ray_folder")
    (root / "images").mkdir()
    rng = np.random.default_rng(3)
    strategies = ["random", "blocks", "objects", "background", "random", "blocks", "random"]
    ratios = [0.5, 0.3, 0.6, 0.9, 0.0, 1.0, 0.75]
    for i, (size, strategy, ratio) in enumerate(zip(SIZES, strategies, ratios)):
        image, full = synth_pair(rng, (max(size[0], 32), max(size[1], 32)))  # scenes need some room
        image, full = image[: size[0], : size[1]], full[: size[0], : size[1]]
        partial = degrade(full, ratio, strategy, rng, patch=8)
        Image.fromarray(image).save(root / "images" / f"s{i}.{'jpg' if i % 3 == 1 else 'png'}")
        write_label(root / "labels" / f"s{i}.png", partial)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "zz_bad.png")
    write_label(root / "labels" / "zz_bad.png", np.zeros((21, 30), np.uint8))
    return root


def test_map_batches_with_an_actor_pool_matches_the_local_completer(ray_cluster, bundle, folder):
    from lmae_sdk import LMAECompleter
    from lmae_sdk.labels import InputError

    threads_before = torch.get_num_threads()
    pairs = folder_pairs(folder / "images", folder / "labels")
    assert len(pairs) == len(SIZES) + 1
    rows = [{"name": stem, "image": str(image), "label": str(label)} for image, label, stem in pairs]
    done = ray.data.from_items(rows).map_batches(
        RayCompleter, fn_constructor_kwargs={"model": str(bundle), "backend": "onnxruntime", "batch_size": 2,
                                             "on_error": "return"},
        batch_size=3, batch_format="numpy", num_cpus=1, compute=ray.data.ActorPoolStrategy(size=2)).take_all()
    by_name = {row["name"]: row for row in done}
    assert sorted(by_name) == [stem for _, _, stem in pairs]

    local = LMAECompleter.load(bundle, backend="onnxruntime", threads=1)
    for image, label, stem in pairs:
        row = by_name[stem]
        if stem == "zz_bad":
            with pytest.raises(InputError, match="differs") as bad:
                local.complete(image, label)
            assert row["error"] == str(bad.value) and "zz_bad.png" in row["error"]
            assert np.asarray(row["completed"]).size == 0 and np.isnan(row["mask_ratio"])
            continue
        want = local.complete(image, label)
        assert row["error"] == ""
        got, conf = np.asarray(row["completed"]), np.asarray(row["confidence"])
        assert got.dtype == np.uint8 and got.shape == want.label.shape
        np.testing.assert_array_equal(got, want.label)
        np.testing.assert_array_equal(conf, want.confidence)
        assert row["mask_ratio"] == np.float32(want.mask_ratio)
    assert torch.get_num_threads() == threads_before  # the cluster's workers did not touch this process
