"""Shared pieces of the benchmarks: machine/version record, JSON + table output, plots,
the smoke fixtures (synthetic data + a random-weight checkpoint), peak-RSS sampling."""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CAMVID = REPO.parent / "shared" / "data" / "camvid"
RESULTS_DIR = REPO / "benchmarks" / "results"


# --------------------------------------------------------------------------------------
# environment record
# --------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:
        return None
    return str(getattr(m, "__version__", "?"))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, date, versions; ``load_average`` flags a busy machine."""
    from lmae_sdk.cores import usable_cores

    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": usable_cores(),
        "threads": threads,
        "load_average_1_5_15": _load_average(),
        "gpu": _gpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("lmae_sdk", "torch", "onnxruntime", "onnx", "numpy", "numba", "cv2",
                                               "scipy", "skimage", "tensorrt", "matplotlib")},
        "git_commit": _git_commit(),
    }


def set_threads(threads: int) -> None:
    """torch intra-op, OpenCV and BLAS threads; set before heavy work."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import cv2
    import torch

    torch.set_num_threads(int(threads))
    cv2.setNumThreads(1)  # OpenCV's own pool oversubscribes small CPUs next to torch / ORT


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating,)):
        o = float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_jsonable(payload), indent=1))
    return p


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "-"
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]], nd: int = 2) -> str:
    """Plain-text (and Markdown-compatible) table: ``cols`` = [(key, header)]."""
    head = [h for _, h in cols]
    body = [[fmt(r.get(k), nd) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return False
    return True


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def save_figure(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def out_paths(out: str | os.PathLike | None, name: str, smoke: bool) -> tuple[Path, Path]:
    """(json, png) paths: ``--out`` is the JSON path (png next to it)."""
    if out is None:
        out = RESULTS_DIR / (f"{name}_smoke.json" if smoke else f"{name}.json")
    j = Path(out)
    return j, j.with_suffix(".png")


# --------------------------------------------------------------------------------------
# smoke fixtures
# --------------------------------------------------------------------------------------
def random_checkpoint(path: str | os.PathLike, preset: str = "tiny", num_classes: int = 5,
                      img_size: tuple[int, int] = (64, 96), mask_ratios: Iterable[float] = (0.5,),
                      class_names: list[str] | None = None, seed: int = 0,
                      boundary_size: tuple[int, int] | None = None, boundary_width: int = 4,
                      flip_average: bool = False, fusion: bool = False, **overrides: Any) -> Path:
    """A random-weight checkpoint (speed benchmarks and smoke runs need no training);
    ``boundary_size``: with a random boundary net (``boundary_width``, ``flip_average``) at
    that input size; ``fusion``: with a random hole-aware pixel fusion (64 hidden, what
    ``lmae fit`` fits): a bundle of this runs the graphs and host steps of a fitted one (its
    random model leaves more candidate classes per pixel, so more fusion rows)."""
    import torch

    from lmae_sdk.boundaries import BoundaryNet, BoundarySpec
    from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
    from lmae_sdk.model import LMAE, make_config

    torch.manual_seed(seed)
    if boundary_size:
        overrides = {"geodesic_boundary_weight": 300.0, **overrides}
    model = LMAE(make_config(preset, num_classes, img_size=tuple(img_size), **overrides))
    names = class_names or [f"class{i}" for i in range(num_classes)]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ck = make_checkpoint(model, class_names=names, palette=None, mask_ratios=list(mask_ratios),
                         label_resize="soft", unknown_threshold=0.5)
    if boundary_size:
        ck["boundary_net"] = {**BoundarySpec(boundary_width, tuple(boundary_size), flip_average).to_dict(),
                              "state_dict": BoundaryNet(boundary_width).state_dict()}
    if fusion:
        from lmae_sdk.fusion import FEATURES_BY_VERSION, PixelFusion

        rng = np.random.default_rng(seed)
        features = FEATURES_BY_VERSION[4 if boundary_size else 1]
        f = len(features)
        ck["fusion"] = PixelFusion([(rng.normal(0, 0.5, (f, 64)), rng.normal(0, 0.1, 64)),
                                    (rng.normal(0, 0.15, (64, 64)), rng.normal(0, 0.1, 64)),
                                    (rng.normal(0, 0.3, (64, 1)), np.zeros(1))], rng.normal(0, 0.3, num_classes),
                                   features=features).to_dict()
    save_checkpoint(ck, p)
    return p


def smoke_dataset(root: str | os.PathLike, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (96, 128)) -> Path:
    from lmae_sdk.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(root, n_train=n_train, n_val=n_val, size=size, seed=0)


# --------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------
def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakRSS:
    """Samples VmRSS every ``interval`` s in a thread: the peak while the block ran."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0.0
        self.start = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.start = rss_mb()
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def percentiles(xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs, np.float64)
    if a.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "mean": float("nan")}
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0
