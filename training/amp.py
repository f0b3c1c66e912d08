"""bf16 autocast on CPU, checked before a training run relies on it.

Training under autocast and serving in float32 (ONNX Runtime, TensorRT fp32) is only sound
while the two agree to bf16 rounding.  A wrong bf16 kernel breaks that silently: the model
learns around it, its training loss falls, and in float32 it completes labels far worse
(torch 2.13 on CPUs with AMX: ``lmae_sdk.model.PatchEmbed``; benchmarks/HISTORY.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

MAX_RELATIVE_ERROR = 0.05  # bf16 rounding through a few layers stays well under 1%
MAX_GRADIENT_ERROR = 0.25  # gradients sum many rounded terms; a wrong kernel is off by ~1


class AutocastMismatch(RuntimeError):
    pass


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, read from /proc/cpuinfo).
    Only there does bf16 autocast speed training up; elsewhere torch emulates it, several
    times slower than float32 (about 9x per training step of the `small` model on an AVX2 Xeon)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _relative(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.float() - exact.float()).norm() / exact.float().norm().clamp_min(1e-12))


def layer_errors(module: torch.nn.Module, forward: Callable[[], torch.Tensor], device: str = "cpu"
                 ) -> list[tuple[str, float]]:
    """(name, relative error) of each leaf layer's output under bf16 autocast against float32,
    in the order the layers ran, then ("output", error of ``forward()``'s result)."""
    outputs: dict[bool, dict[str, torch.Tensor]] = {False: {}, True: {}}
    order: list[str] = []

    def keep(name: str, amp: bool):
        def hook(_mod, _inp, out):
            if isinstance(out, torch.Tensor):
                outputs[amp][name] = out.detach()
                if not amp:
                    order.append(name)
        return hook

    results = {}
    for amp in (False, True):
        hooks = [m.register_forward_hook(keep(n, amp)) for n, m in module.named_modules()
                 if n and not any(True for _ in m.children())]
        try:
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                results[amp] = forward()
        finally:
            for h in hooks:
                h.remove()
    errors = [(n, _relative(outputs[True][n], outputs[False][n])) for n in order
              if n in outputs[True] and outputs[True][n].shape == outputs[False][n].shape]
    return errors + [("output", _relative(results[True], results[False]))]


def gradient_errors(module: torch.nn.Module, loss: Callable[[], torch.Tensor], device: str = "cpu"
                    ) -> list[tuple[str, float]]:
    """(name, relative error) of each parameter's gradient of ``loss()`` under bf16 autocast
    against float32 (the backward kernels can be wrong where the forward ones are right)."""
    grads: dict[bool, dict[str, torch.Tensor]] = {}
    for amp in (False, True):
        module.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            value = loss()
        value.float().backward()
        grads[amp] = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return [(n, _relative(grads[True][n], g)) for n, g in grads[False].items() if n in grads[True]]


def check_bf16_autocast(module: torch.nn.Module, forward: Callable[[], torch.Tensor], what: str,
                        device: str = "cpu", loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        tolerance: float = MAX_RELATIVE_ERROR) -> float:
    """Raise :class:`AutocastMismatch` naming the first layer whose output bf16 autocast moves
    by more than ``tolerance``, or (with ``loss``, a scalar of ``forward()``'s output) the first
    parameter whose gradient it moves by more than :data:`MAX_GRADIENT_ERROR`.  ``module`` runs
    in eval mode, restored after; returns the largest relative layer error."""
    was_training = module.training
    module.eval()
    try:
        errors = layer_errors(module, forward, device)
        grad_errors = gradient_errors(module, lambda: loss(forward()), device) if loss is not None else []
    finally:
        module.train(was_training)
    hint = ("a bf16 kernel here is wrong, and a model trained through it would not work in float32. Train with "
            "--amp none (fit-boundaries: --no-bf16).")
    bad = [(n, e) for n, e in errors if not e <= tolerance]  # NaN counts as bad
    if bad:
        name, err = bad[0]
        raise AutocastMismatch(f"{what}: bf16 autocast changes the output of layer {name!r} by {err:.3f} (relative) "
                               f"on this machine, far more than bf16 rounding: {hint}")
    bad = [(n, e) for n, e in grad_errors if not e <= MAX_GRADIENT_ERROR]
    if bad:
        name, err = bad[0]
        raise AutocastMismatch(f"{what}: bf16 autocast changes the gradient of {name!r} by {err:.3f} (relative) on "
                               f"this machine: {hint}")
    return max(e for _, e in errors)
