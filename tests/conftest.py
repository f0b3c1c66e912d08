import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from lmae_sdk.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=24, n_val=8)


def camvid_or_skip() -> Path:
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not present at {CAMVID} (../shared is absent)")
    return CAMVID


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random-weight tiny checkpoint with engines at 0.5 and 0.75 (runtime tests)."""
    from lmae_sdk import LMAE, make_config
    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    m = LMAE(make_config("tiny", 5, img_size=(64, 96)))
    save_checkpoint(make_checkpoint(m, class_names=list("abcde"), palette=None, mask_ratios=[0.5, 0.75],
                                    label_resize="soft", unknown_threshold=0.5), path)
    return path
