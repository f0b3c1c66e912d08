"""What ``lmae fit``'s stages cost on this machine with this dataset, measured before the plan.

``python -m lmae_sdk.recipe.probe REQUEST.json`` runs in its own process (it sets torch's
threads) and prints :class:`Timings` as JSON: a few model training steps on the dataset's
first train images at the plan's batch and threads, and one image's completion at the
dataset's size, part by part, on one thread (propagation with class costs, the boundary map,
the model, pixel fusion's finish) with untrained weights of the shapes the fit makes, plus
the card's two fills.  Compiling (numba) and the first runs stay outside the clock.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np


FUSION_PIXELS_PER_IMAGE = 6000  # training/fusion_fit.py's per_image


class ProbeError(RuntimeError):
    """Measuring failed; the message carries the probe's own output."""


@dataclass(frozen=True)
class Timings:
    train_step_s: float  # one model training step (batch ``batch``, ``threads`` threads)
    prepare_s: float  # one image's propagation with class costs (its prior and fusion's input), one thread
    boundary_s: float  # one image's boundary map, one thread
    model_s: float  # the model's forward pass per image in a batch of 8, one thread
    finish_s: float  # pixel fusion's finish of one image, one thread
    fill_s: float  # nearest-label and geodesic fill of one image (the card's peers), one thread
    features_s: float  # pixel fusion's features at the pixels its fit samples from one image, one thread
    startup_s: float = 10.0  # what a stage's process spends before its work: imports, first calls (compiled code)
    measured_s: float = 0.0  # what measuring took

    @property
    def completion_s(self) -> float:
        """One image completed as calibration, the card and fusion's sampling run it, one thread."""
        return self.prepare_s + self.boundary_s + self.model_s + self.finish_s

    @property
    def collect_s(self) -> float:
        """One train image sampled for pixel fusion's fit, one thread."""
        return self.prepare_s + self.boundary_s + self.model_s + self.features_s

    def describe(self) -> str:
        return (f"measured here: a training step {self.train_step_s:.2f} s; one image's completion "
                f"{self.completion_s:.2f} s on one core (propagation {self.prepare_s:.2f}, boundary map "
                f"{self.boundary_s:.2f}, model {self.model_s:.2f}, fusion {self.finish_s:.2f})")


@dataclass(frozen=True)
class ProbeRequest:
    data: str
    layout: str
    preset: str
    model_size: tuple[int, int]
    batch: int
    threads: int
    device: str = "cpu"


class _Clock:
    """Steady-state timings, and what the first calls cost beyond them (loading compiled code,
    allocating): a stage's process pays that once."""

    def __init__(self) -> None:
        self.first_extra_s = 0.0

    def time(self, fn: Callable[[], Any], repeats: int = 3) -> float:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        steady = float(np.median(times))
        self.first_extra_s += max(0.0, first - steady)
        return steady


def measure(req: ProbeRequest) -> Timings:
    imports_started = time.perf_counter()
    import torch

    from lmae_sdk.boundaries import BoundaryNet, TorchBoundaries
    from lmae_sdk.boundary_map import BoundarySpec
    from lmae_sdk.datasets import load_dataset
    from lmae_sdk.degrade import degrade
    from lmae_sdk.fusion import FEATURES_BY_VERSION, PixelFusion, features_at, hole_log_probs
    from lmae_sdk.labels import UNKNOWN
    from lmae_sdk.model import LMAE, make_config
    from lmae_sdk.pipeline import ModelInputs, prepare, propagate_for
    from lmae_sdk.propagation import geodesic_fill, nearest_fill
    from lmae_sdk.training.data import CompletionTrainSet, SampleSpec, collate, load_pairs
    from lmae_sdk.training.loss import training_loss
    from lmae_sdk.training.train import TrainConfig

    started = time.perf_counter()
    clock = _Clock()
    import_s = started - imports_started
    torch.manual_seed(0)
    info = load_dataset(req.data, ("train",), req.layout)
    n = info.num_classes
    pairs = load_pairs(info.pairs["train"][: max(req.batch, 2)], n)
    defaults = TrainConfig(data=req.data, out="")
    cfg = make_config(req.preset, n, img_size=tuple(req.model_size))
    model = LMAE(cfg).to(req.device)
    spec = SampleSpec(mask_ratios=(0.5,), holes=defaults.holes, label_resize=defaults.label_resize,
                      threshold=defaults.threshold, background_index=info.background_index)
    trainset = CompletionTrainSet(pairs, cfg, spec, req.batch, 0, 1, None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    torch.set_num_threads(max(1, req.threads))

    def train_step() -> None:  # the data's preparation included: the stage prepares its batches in-process
        batch = {k: v.to(req.device) for k, v in collate([trainset[i % len(trainset)]
                                                          for i in range(req.batch)]).items()}
        logits = model(batch["image"], batch["label_planes"], batch["ids_keep"], batch["ids_mask"],
                       batch["ids_restore"], batch.get("prior"))
        loss = training_loss(logits, batch, None, defaults.visible_weight, defaults.gap_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step_s = clock.time(train_step, 2)
    torch.set_num_threads(1)
    image, label = pairs[0]
    partial = degrade(label, 0.5, "random", np.random.default_rng(0))
    h, w = image.shape[:2]
    boundaries = TorchBoundaries(BoundaryNet(16), BoundarySpec(16, (h // 2 * 2, w // 2 * 2), True))
    boundary_map = boundaries(image)
    boundary_s = clock.time(lambda: boundaries(image), 2)
    bcfg = make_config(req.preset, n, img_size=tuple(req.model_size), geodesic_boundary_weight=1.0)
    prepare_s = clock.time(lambda: propagate_for(bcfg, partial, image, class_costs=True, boundary=boundary_map))
    prop = propagate_for(bcfg, partial, image, class_costs=True, boundary=boundary_map)
    inputs = ModelInputs.stack([prepare(image, partial, cfg, propagated=prop)] * 8)
    model.eval()
    from lmae_sdk.masking import MaskPlan
    from lmae_sdk.routing import mask_plan

    plan = MaskPlan.stack([mask_plan(inputs.item(j), cfg, 0.5) for j in range(8)])

    def forward() -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(inputs.image), torch.from_numpy(inputs.label_planes),
                         torch.from_numpy(plan.ids_keep), torch.from_numpy(plan.ids_mask),
                         torch.from_numpy(plan.ids_restore),
                         None if inputs.prior is None else torch.from_numpy(inputs.prior)).float().numpy()

    model_s = clock.time(forward, 2) / 8
    logits = forward()[0]
    features = FEATURES_BY_VERSION[4]
    rng = np.random.default_rng(0)
    widths = [len(features), 64, 64, 1]
    fusion = PixelFusion([(rng.standard_normal((a, b)).astype(np.float32) * 0.1, np.zeros(b, np.float32))
                          for a, b in zip(widths, widths[1:])], np.zeros(n, np.float32), {}, features=features)
    finish_s = clock.time(lambda: fusion.complete(logits, partial, prop.class_costs, boundary=prop.boundary))
    fill_s = clock.time(lambda: (nearest_fill(image, partial), geodesic_fill(image, partial)))
    hole = np.flatnonzero(partial.reshape(-1) == UNKNOWN)
    at = np.random.default_rng(0).choice(hole, min(FUSION_PIXELS_PER_IMAGE, hole.size), replace=False)
    features_s = clock.time(lambda: features_at(hole_log_probs(logits, partial.shape, at), partial, prop.class_costs, at,
                                              boundary=prop.boundary, features=features))
    return Timings(train_step_s, prepare_s, boundary_s, model_s, finish_s, fill_s, features_s,
                   import_s + clock.first_extra_s, time.perf_counter() - imports_started)


def run_probe(req: ProbeRequest, env: dict[str, str] | None = None, timeout_s: float = 900) -> Timings:
    """:func:`measure` in a child process (threads and allocations stay there)."""
    payload = json.dumps({**asdict(req), "model_size": list(req.model_size)})
    proc = subprocess.run([sys.executable, "-m", "lmae_sdk.recipe.probe", payload], capture_output=True, text=True,
                          env=env, timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ProbeError(f"measuring this machine failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return Timings(**json.loads(lines[-1]))


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    request["model_size"] = tuple(request["model_size"])
    print(json.dumps(asdict(measure(ProbeRequest(**request)))), flush=True)
