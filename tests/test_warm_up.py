"""``LMAECompleter.load`` warms the completer: every compiled kernel that a completion calls
is loaded before the first image, and no graph runs for it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]

# in a fresh process: which numba kernels have a compiled signature after loading (warmed or
# not), then after one real completion, and that completion's label
KERNELS = r"""
import json, sys
import numpy as np
from lmae_sdk import LMAECompleter, fusion_kernels, planes, propagation, upsampling
from lmae_sdk.synthetic import synth_pair

def loaded():
    out = set()
    for name in dir(fusion_kernels):
        if name.startswith("_") and name.endswith("_loops"):
            k = fusion_kernels.compiled(name[1:-6])
            if k is not None and k.signatures:
                out.add(name[1:-6])
    for mod in (planes, propagation, upsampling):
        for name in dir(mod):
            if name.startswith("_compiled"):
                k = getattr(mod, name)()
                if k is not None and k.signatures:
                    out.add(name)
    return out

c = LMAECompleter.load(sys.argv[1], threads=1, warm_up=sys.argv[2] == "1")
after_load = loaded()
img, lab = synth_pair(np.random.default_rng(3), (70, 100))
lab = lab.copy()
lab[10:50, 20:70] = 255
r = c.complete(img, lab, confidence=False)
print(json.dumps({"after_load": sorted(after_load), "after_one": sorted(loaded()),
                  "label": r.label.tolist()}))
"""


def _kernels(bundle: Path, warm: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", KERNELS, str(bundle), "1" if warm else "0"], capture_output=True,
                       text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def whole_bundle(tmp_path_factory):
    from lmae_sdk.export import export_bundle

    root = tmp_path_factory.mktemp("warm")
    ck = tiny_checkpoint(root / "whole.pt", whole_recipe=True)
    export_bundle([ck], root / "b", mask_ratios=[0.5], verify=False, lint=False)
    return root / "b"


def test_load_warms_every_kernel_a_completion_calls(whole_bundle):
    pytest.importorskip("numba")
    cold, warm = _kernels(whole_bundle, False), _kernels(whole_bundle, True)
    used = set(cold["after_one"]) - set(cold["after_load"])
    assert {"hole_logits", "rows", "_compiled_class_sweeps", "_compiled_normalize"} <= used
    assert used <= set(warm["after_load"]), f"not warmed: {sorted(used - set(warm['after_load']))}"
    assert warm["label"] == cold["label"]  # the warm-up changes no result


def test_warm_up_runs_no_graph(whole_bundle, monkeypatch):
    from lmae_sdk import LMAECompleter

    c = LMAECompleter.load(whole_bundle, threads=1, warm_up=False)
    calls = []
    for engine in c.engines.values():
        run = engine.backend.run_images
        monkeypatch.setattr(engine.backend, "run_images",
                            lambda *a, run=run, **k: calls.append("engine") or run(*a, **k))
    boundaries = c.boundaries
    c.boundaries = lambda image: calls.append("boundary") or boundaries(image)
    c.warm_up()
    assert calls == []
    image, partial = np.zeros((64, 96, 3), np.uint8), np.full((64, 96), 255, np.uint8)
    partial[:, :40] = 1
    c.complete(image, partial)
    assert calls == ["boundary", "engine"]
