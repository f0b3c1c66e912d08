"""Every benchmark's ``--smoke`` mode runs (synthetic data, random tiny model) and writes its
JSON with the expected keys.  Each runs in a subprocess with a timeout, as CI would call it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMON = {"benchmark", "smoke", "args", "machine", "seconds"}
MACHINE = {"date", "cpu_model", "cpu_count", "versions", "threads"}

TABLES_ONLY = {"hole_kinds", "boundary_nets"}  # benchmarks that print a table and write JSON, no plot
CASES = {
    "throughput": COMMON | {"matmul_peak", "flops", "results", "target_checks", "skipped_backends", "stage_profile"},
    "quality": COMMON | {"results", "random_walker_beta", "target_checks", "dataset"},
    "ablations": COMMON | {"runs", "summary", "paper_note"},
    "label_augmentation": COMMON | {"results", "completion_on_train_holes", "dataset"},
    "hole_kinds": COMMON | {"results", "bundle", "dataset", "images"},
    "boundary_nets": COMMON | {"results", "dataset", "split"},
}
ROW_KEYS = {
    "throughput": {"preset", "backend", "batch_size", "e2e_ips", "engine_ips", "e2e_latency_ms_p50",
                   "e2e_latency_ms_p95", "engine_latency_ms_p50", "engine_latency_ms_p95", "peak_rss_mb",
                   "roofline_share"},
    "quality": {"method", "setting", "pa_miou", "pa_pixel_acc", "global_miou", "seconds_per_image"},
    "ablations": {"arm", "pa_miou", "delta", "paper_delta", "status"},
    "label_augmentation": {"model", "variant", "val_miou"},
    "hole_kinds": {"protocol", "completer", "nearest", "geodesic", "completer_pixel_acc"},
    "boundary_nets": {"net", "weights", "own_random_0.5", "own_random_0.3", "best_random_0.5"},
}


@pytest.mark.parametrize("name", list(CASES))
def test_smoke(name, tmp_path):
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert CASES[name] <= set(data), sorted(CASES[name] - set(data))
    assert data["smoke"] is True
    assert MACHINE <= set(data["machine"])
    rows = data["summary"] if name == "ablations" else data["results"]
    assert rows, "no result rows"
    for r in rows:
        assert ROW_KEYS[name] <= set(r), sorted(ROW_KEYS[name] - set(r))
    if name == "ablations":
        assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    if name == "throughput":
        assert {r["backend"] for r in data["results"]} >= {"torch"}
        assert all(r["e2e_ips"] > 0 and r["engine_ips"] > 0 for r in data["results"])
    if name == "quality":
        assert data["random_walker_beta"]["chosen"] > 0
        assert len(data["geodesic_tuning"]["grid"]) == 4
        assert {r["method"] for r in rows} >= {"nearest", "random_walker", "slic_vote", "border-label oracle",
                                               "geodesic + learned boundaries"}
        by = {(r["method"], r["setting"]): r["pa_pixel_acc"] for r in rows}
        for (method, setting), acc in by.items():  # the oracle only turns geodesic-fill pixels right
            if method == "border-label oracle":
                assert acc >= by[("geodesic", setting)] - 1e-9
    if name == "boundary_nets":  # the colour-only fill, then the net's: each a PA-mIoU
        assert [r["net"] for r in rows][0].startswith("colour only") and len(rows) == 2
        assert all(0 <= r["own_random_0.5"] <= 100 for r in rows)
        assert rows[1]["best_random_0.5"] >= rows[1]["own_random_0.5"] - 1e-9  # the grid holds the own weights
    if name not in TABLES_ONLY:  # the others plot where matplotlib is installed
        assert out.with_suffix(".png").is_file() or not _has_matplotlib()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_throughput_times_a_given_checkpoint_with_its_pixel_fusion(tmp_path):
    import numpy as np
    import torch

    from benchmarks._common import random_checkpoint
    from lmae_sdk.fusion import FUSION_FEATURES, PixelFusion

    ck_path = random_checkpoint(tmp_path / "fused.pt", "tiny", 11, (64, 96), (0.5, 0.75))
    ck = torch.load(ck_path, weights_only=True)
    rng = np.random.default_rng(0)
    f, h = len(FUSION_FEATURES), 4
    ck["fusion"] = PixelFusion([(rng.normal(size=(f, h)), np.zeros(h)), (rng.normal(size=(h, h)), np.zeros(h)),
                                (rng.normal(size=(h, 1)), np.zeros(1))], np.zeros(11)).to_dict()
    torch.save(ck, ck_path)
    out = tmp_path / "t.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--smoke", "--backends", "torch",
                           "--checkpoint", str(ck_path), "--out", str(out), "--no-plot"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["checkpoint"] == {"path": str(ck_path), "pixel_fusion": True}
    assert data["results"] and all(r["e2e_ips"] > 0 for r in data["results"])
    assert data["stage_profile"]["tiny/torch"]["seconds_per_image"]["finish"] > 0


def test_hole_kinds_names_a_bad_kind_and_a_missing_bundle(tmp_path):
    script = str(REPO / "benchmarks" / "hole_kinds.py")
    bad_kind = subprocess.run([sys.executable, script, "--bundle", str(tmp_path), "--data", str(tmp_path),
                               "--kinds", "random:0.5,holes:0.5"], capture_output=True, text=True, timeout=60)
    assert bad_kind.returncode == 2 and "'holes:0.5'" in bad_kind.stderr, bad_kind.stderr
    assert "Traceback" not in bad_kind.stderr
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", "import sys; from lmae_sdk.synthetic import make_synthetic_dataset; "
                    "make_synthetic_dataset(sys.argv[1], n_train=2, n_val=2, size=(32, 48))", str(data)],
                   check=True, timeout=60)
    no_bundle = subprocess.run([sys.executable, script, "--bundle", str(tmp_path / "nowhere"), "--data", str(data)],
                               capture_output=True, text=True, timeout=60)
    assert no_bundle.returncode == 2 and str(tmp_path / "nowhere") in no_bundle.stderr, no_bundle.stderr
    assert "Traceback" not in no_bundle.stderr


def test_boundary_nets_names_a_checkpoint_without_a_net(tmp_path):
    from benchmarks._common import random_checkpoint

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", "import sys; from lmae_sdk.synthetic import make_synthetic_dataset; "
                    "make_synthetic_dataset(sys.argv[1], n_train=2, n_val=2, size=(32, 48))", str(data)],
                   check=True, timeout=60)
    plain = random_checkpoint(tmp_path / "plain.pt", num_classes=5, img_size=(32, 48))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "boundary_nets.py"), "--data", str(data),
                           "--nets", str(plain), "--images", "2", "--out", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{plain}: no boundary net" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_fit_gaps_compares_fits_with_the_references_and_their_spread(tmp_path):
    def scores(name, values, extra=None):
        rows = [{"protocol": k, "completer": v, "nearest": 0.0} for k, v in values.items()]
        rows += [{"protocol": k, "completer": v} for k, v in (extra or {}).items()]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"benchmark": "hole_kinds", "results": rows}))
        return str(path)

    refs = [scores("c1", {"random 0.3": 78.0, "objects 0.5": 30.0}),
            scores("c2", {"random 0.3": 76.0, "objects 0.5": 29.0}, {"background 0.5": 45.0})]
    fits = [scores("r1", {"random 0.3": 75.5, "objects 0.5": 29.0}),
            scores("r2", {"random 0.3": 76.5, "objects 0.5": 28.0})]
    out = tmp_path / "gaps.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fit_gaps.py"), "--reference", *refs,
                           "--fits", *fits, "--within", "1.0", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    rows = {r["protocol"]: r for r in data["results"]}
    assert set(rows) == {"random 0.3", "objects 0.5", "mean of the kinds"}  # only the kinds every file scored
    assert rows["random 0.3"]["reference_mean"] == 77.0 and rows["random 0.3"]["fits_mean"] == 76.0
    assert rows["random 0.3"]["gap"] == -1.0 and rows["random 0.3"]["within"] is True
    assert rows["objects 0.5"]["gap"] == -1.0 and rows["mean of the kinds"]["gap"] == -1.0
    assert data["fits"]["r1"]["kinds_within"] == ["objects 0.5"] and data["fits"]["r1"]["worst_gap"] == -1.5
    assert data["fits"]["r2"]["kinds_within"] == ["random 0.3"]
    assert data["refitting"]["c2"] == {"kinds_within": ["objects 0.5"], "of": 2, "worst_kind": "random 0.3",
                                       "worst_gap": -2.0}
    assert "c1: within 1 of the other references' mean on 2 of 2 kinds" in proc.stdout

    not_hole_kinds = tmp_path / "other.json"
    not_hole_kinds.write_text(json.dumps({"benchmark": "throughput", "results": []}))
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fit_gaps.py"), "--reference", refs[0],
                          "--fits", str(not_hole_kinds)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and f"{not_hole_kinds}: not the JSON of benchmarks/hole_kinds.py" in bad.stderr
    assert "Traceback" not in bad.stderr
