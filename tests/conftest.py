import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


def camvid_timings():
    """What ``lmae fit``'s probe measured for CamVid on a 2-core AMD EPYC."""
    from lmae_sdk.recipe.probe import Timings

    return Timings(train_step_s=1.69, prepare_s=0.03, boundary_s=0.08, model_s=0.06, finish_s=0.35, fill_s=0.006,
                   features_s=0.025)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from lmae_sdk.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=24, n_val=8)


def camvid_or_skip() -> Path:
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not present at {CAMVID} (../shared is absent)")
    return CAMVID


def tiny_checkpoint(path: Path, seed: int = 0, mask_ratios=(0.5, 0.75), whole_recipe: bool = False) -> Path:
    """A random-weight tiny checkpoint (5 classes, model size 64x96) at ``path``;
    ``whole_recipe``: with what ``lmae fit`` adds, a (random) boundary net whose map the
    geodesic step cost reads and a (random) hole-aware pixel fusion: every graph a bundle
    can hold."""
    import numpy as np

    from lmae_sdk import LMAE, make_config
    from lmae_sdk.boundaries import BoundaryNet, BoundarySpec
    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
    from lmae_sdk.fusion import FEATURES_BY_VERSION, PixelFusion

    torch.manual_seed(seed)
    extra = {"geodesic_boundary_weight": 300.0} if whole_recipe else {}
    m = LMAE(make_config("tiny", 5, img_size=(64, 96), **extra))
    ck = make_checkpoint(m, class_names=list("abcde"), palette=None, mask_ratios=list(mask_ratios),
                         label_resize="soft", unknown_threshold=0.5)
    if whole_recipe:
        ck["boundary_net"] = {**BoundarySpec(4, (64, 96), flip_average=True).to_dict(),
                              "state_dict": BoundaryNet(4).state_dict()}
        rng = np.random.default_rng(seed)
        f = len(FEATURES_BY_VERSION[4])
        ck["fusion"] = PixelFusion([(rng.normal(0, 1, (f, 16)), rng.normal(0, 0.1, 16)),
                                    (rng.normal(0, 0.4, (16, 16)), rng.normal(0, 0.1, 16)),
                                    (rng.normal(0, 1, (16, 1)), np.zeros(1))], rng.normal(0, 0.3, 5),
                                   features=FEATURES_BY_VERSION[4]).to_dict()
    save_checkpoint(ck, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random-weight tiny checkpoint with engines at 0.5 and 0.75 (runtime tests)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt")


@pytest.fixture(scope="module")
def onnx_bundle(ckpt, tmp_path_factory):
    """``ckpt`` exported to ONNX at mask ratio 0.5 (no parity check, no lint: seconds)."""
    from lmae_sdk.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle([ckpt], out, mask_ratios=[0.5], verify=False, lint=False)
    return out
