"""The runtime without torch: a process where ``import torch`` fails completes a bundle
with ONNX Runtime, byte for byte as the full install does, and the commands that need
torch say which extra to install instead of a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# run a console command in a process where torch cannot be imported
NO_TORCH = r"""
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
command, args = sys.argv[1], sys.argv[2:]
if command == "python":
    exec(args[0])
else:
    import importlib
    main = importlib.import_module({"lmae": "lmae_sdk.cli", "lmae-export": "lmae_sdk.export.cli"}[command]).main
    try:
        main(args, prog_name=command)
    finally:
        assert "torch" not in sys.modules, "torch was imported"
"""


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    from lmae_sdk.degrade import degrade
    from lmae_sdk.labels import write_label
    from lmae_sdk.synthetic import synth_pair

    root = tmp_path_factory.mktemp("in")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "full").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        img, lab = synth_pair(rng, (70, 100))
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        write_label(root / "full" / f"s{i}.png", lab)
        write_label(root / "labels" / f"s{i}.png", degrade(lab, 0.5, "random", np.random.default_rng(i), patch=16))
    return root


def test_import_and_load_without_torch(onnx_bundle):
    r = run_without_torch("python", f"""
import lmae_sdk, lmae_sdk.bundle, lmae_sdk.runtime
from lmae_sdk import LMAECompleter
c = LMAECompleter.load({str(onnx_bundle)!r}, threads=1)
print(c.backend_name, c.mask_ratios)
assert "torch" not in sys.modules
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["onnxruntime", "[0.5]"]


def test_complete_without_torch_gives_the_same_bytes(onnx_bundle, folder, tmp_path):
    from lmae_sdk.cli import main as lmae

    common = ["--model", str(onnx_bundle), "--images", str(folder / "images"), "--labels", str(folder / "labels"),
              "--threads", "1", "--lanes", "1", "--quiet"]
    full = CliRunner().invoke(lmae, ["complete", "--out", str(tmp_path / "full"), *common])
    assert full.exit_code == 0, full.output
    lean = run_without_torch("lmae", "complete", "--out", str(tmp_path / "lean"), *common)
    assert lean.returncode == 0, lean.stderr
    names = sorted(p.name for p in (folder / "labels").iterdir())
    assert [(tmp_path / "lean" / n).read_bytes() for n in names] == [(tmp_path / "full" / n).read_bytes()
                                                                      for n in names]
    for command in (["evaluate", "--pred", str(tmp_path / "lean"), "--gt", str(folder / "full"),
                     "--partial", str(folder / "labels"), "--num-classes", "5"],
                    ["degrade", "--labels", str(folder / "labels"), "--out", str(tmp_path / "deg")]):
        r = run_without_torch("lmae", *command)
        assert r.returncode == 0, r.stderr


def test_complete_of_a_bundle_leaves_an_installed_torch_unimported(onnx_bundle, folder, tmp_path):
    """With torch installed, ``lmae complete`` of an ONNX bundle on the CPU (its default
    ``--backend auto`` and ``--lanes 0``) never imports it: torch adds about 160 MB to the
    process and a second to its start, and would run nothing here."""
    pytest.importorskip("torch")
    args = ["complete", "--model", str(onnx_bundle), "--images", str(folder / "images"), "--labels",
            str(folder / "labels"), "--out", str(tmp_path / "o"), "--quiet"]
    script = ("import sys\nfrom lmae_sdk.cli import main\ntry:\n    main(sys.argv[1:], prog_name='lmae')\n"
              "finally:\n    print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[-2] == "torch not imported", r.stdout + r.stderr


@pytest.mark.parametrize("command", [
    ["lmae", "train", "--data", "{data}", "--out", "{tmp}/m.pt"],
    ["lmae", "fit-fusion", "--ckpt", "{ckpt}", "--data", "{data}"],
    ["lmae", "demo", "--workdir", "{tmp}/demo"],
    ["lmae-export", "--ckpt", "{ckpt}", "--out", "{tmp}/b"],
    ["lmae", "complete", "--model", "{ckpt}", "--images", "{data}/images", "--labels", "{data}/labels",
     "--out", "{tmp}/o"],
])
def test_commands_that_need_torch_name_the_extra(command, ckpt, folder, tmp_path):
    args = [a.format(data=folder, tmp=tmp_path, ckpt=ckpt) for a in command]
    r = run_without_torch(*args)
    assert r.returncode != 0
    assert "lmae-sdk[train]" in r.stderr and "needs torch" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
