#!/usr/bin/env bash
# The GPU check: what a CUDA machine with TensorRT 10 must show, in one run of < 10 minutes.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default: benchmarks/results/gpu_check)
#
# Install first (a fresh GPU machine):  pip install torch && pip install -e ".[gpu,train,trt,dev]"
#
# Five steps, each writing JSON into OUT_DIR:
#   1. export.json      lmae-export of a random-weight `small` checkpoint with --trt --fp16
#                       (ONNX fp32 + fp16, TensorRT fp32 + fp16 engines, batch up to 64)
#   2. parity.json      the parity of every engine against torch, from the bundle's manifest
#   3. throughput.json  benchmarks/throughput.py: torch CUDA, ORT CUDA and TensorRT fp16,
#                       batch 1 / 16 / 64, end-to-end and engine-only, side by side
#   4. wiring.json      tests/test_tensorrt_real.py (real tensorrt) and tests/test_tensorrt_wiring.py (the double)
#   5. bundle_speed_tensorrt.json, bundle_speed_onnxruntime.json: benchmarks/bundle_speed.py on a whole bundle as
#                       lmae fit makes it (random weights, boundary net, pixel fusion, every graph on TensorRT):
#                       e2e img/s, the per-stage profile, the host's share and each graph alone
# On a machine without a CUDA GPU it says which steps it skips and why, and exits 0.
# A failed step is reported and the others still run; the exit code is 1 when any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-benchmarks/results/gpu_check}" && cd "${1:-benchmarks/results/gpu_check}" && pwd)
PY=${PYTHON:-python}
STEPS="1 export small --trt --fp16; 2 parity; 3 throughput torch-cuda / ort-cuda / trt-fp16 at batch 1,16,64; 4 wiring test on the real tensorrt; 5 a whole bundle's e2e and profile on tensorrt and ort-cuda"

why_not=$("$PY" - <<'EOF'
import shutil, subprocess
if shutil.which("nvidia-smi") is None:
    print("nvidia-smi not found: no NVIDIA driver on this machine")
elif subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode != 0:
    print("nvidia-smi -L failed: no usable NVIDIA GPU")
else:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:
        print(f"tensorrt does not import ({e}); pip install -e '.[trt]'")
EOF
)
if [ -n "$why_not" ]; then
    echo "gpu_check: skipping all five steps ($STEPS): $why_not"
    printf '{"skipped": true, "reason": "%s", "steps": "%s"}\n' "$why_not" "$STEPS" > "$OUT/gpu_check.json"
    exit 0
fi

failed=0
step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then
        echo "   ok ($((SECONDS - t0)) s)"
    else
        echo "   FAILED ($((SECONDS - t0)) s); last lines of $OUT/$name.log:"; tail -n 20 "$OUT/$name.log"
        failed=1
    fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1

# 1. export
step make_checkpoint "$PY" -c "
import sys; sys.path.insert(0, '.')
from benchmarks._common import random_checkpoint
random_checkpoint('$OUT/small.pt', preset='small', num_classes=11, img_size=(224, 288), mask_ratios=(0.5,))"
rm -rf "$OUT/bundle"
step export "$PY" -m lmae_sdk.export.cli --ckpt "$OUT/small.pt" --out "$OUT/bundle" --trt --fp16 --max-batch 64
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
man = out / "bundle" / "manifest.json"
if not man.is_file():
    (out / "export.json").write_text(json.dumps({"ok": False, "log": str(out / "export.log")}) + "\n")
    sys.exit(0)
m = json.loads(man.read_text())
engines = [{k: e.get(k) for k in ("name", "backend", "precision", "mask_ratio", "max_batch", "producer")}
           for e in m["engines"]]
(out / "export.json").write_text(json.dumps({"ok": True, "engines": engines}, indent=1) + "\n")
# 2. parity, as the export verified it against torch
parity = {e["name"]: e.get("parity") for e in m["engines"]}
ok = all(p and p.get("verified") and p.get("passed") for p in parity.values())
(out / "parity.json").write_text(json.dumps({"ok": ok, "engines": parity}, indent=1) + "\n")
print(f"parity: {'all passed' if ok else 'NOT all passed'}; " + ", ".join(
    f"{n} max|d| {p.get('max_abs_diff') if p else None}" for n, p in parity.items()))
EOF
[ -f "$OUT/parity.json" ] && grep -q '"ok": true' "$OUT/parity.json" || { echo "   parity FAILED"; failed=1; }

# 3. throughput
step throughput "$PY" benchmarks/throughput.py --presets small --batch-sizes 1,16,64 \
    --backends torch-cuda,ort-cuda,trt-fp16 --images 128 --threads 4 --out "$OUT/throughput.json" --no-plot

# 4. the wiring test on the real tensorrt (the double runs too)
step wiring "$PY" -m pytest -q -rs tests/test_tensorrt_wiring.py tests/test_tensorrt_real.py --junitxml="$OUT/wiring.xml"
"$PY" - "$OUT" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
out = Path(sys.argv[1])
if (out / "wiring.xml").is_file():
    cases = ET.parse(out / "wiring.xml").getroot().iter("testcase")
    rows = [{"test": c.get("name"), "result": ("failed" if c.find("failure") is not None or c.find("error") is not None
                                                else "skipped" if c.find("skipped") is not None else "passed")}
            for c in cases]
    (out / "wiring.json").write_text(json.dumps(rows, indent=1) + "\n")
    real = [r for r in rows if "real" in r["test"]]
    print("wiring on the real tensorrt:", ", ".join(f"{r['test']} {r['result']}" for r in real) or "no such test")
EOF

# 5. a whole bundle as lmae fit makes it (random weights: the same work per image), e2e, per stage and each
#    graph, on TensorRT and on ONNX Runtime CUDA: what the host leaves a GPU (the host-bound ceiling)
step make_recipe_checkpoint "$PY" -c "
import sys; sys.path.insert(0, '.')
from benchmarks._common import random_checkpoint
from lmae_sdk.synthetic import make_synthetic_dataset
random_checkpoint('$OUT/recipe.pt', preset='small', num_classes=11, img_size=(224, 288), mask_ratios=(0.5,),
                  boundary_size=(360, 480), boundary_width=16, flip_average=True, fusion=True)
make_synthetic_dataset('$OUT/recipe_data', n_train=1, n_val=64, size=(360, 480), seed=0)"
rm -rf "$OUT/recipe_bundle"
step export_recipe "$PY" -m lmae_sdk.export.cli --ckpt "$OUT/recipe.pt" --out "$OUT/recipe_bundle" --trt --no-verify
step holes "$PY" -m lmae_sdk.cli degrade --labels "$OUT/recipe_data/val/labels" --out "$OUT/recipe_holes" \
    --ratio 0.5 --strategy random --seed 0
for backend in tensorrt "onnxruntime --device cuda"; do
    name=bundle_speed_$(echo $backend | cut -d' ' -f1)
    step "$name" "$PY" benchmarks/bundle_speed.py --bundle "$OUT/recipe_bundle" --images "$OUT/recipe_data/val/images" \
        --labels "$OUT/recipe_holes" --backend $backend --out "$OUT/$name.json"
    tail -n 16 "$OUT/$name.log"
done

echo "gpu_check: results in $OUT" $([ $failed = 1 ] && echo "(some steps FAILED)")
exit $failed
