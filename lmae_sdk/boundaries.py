"""Learned class boundaries for geodesic propagation.

Colour change alone is a weak guide to where one class ends and the next begins (shadows,
texture, two classes of one colour).  ``BoundaryNet`` predicts, per pixel, the probability
that its right / lower neighbour has another class; the geodesic step cost becomes
``1 + edge_weight * |colour change| + boundary_weight * p(boundary) ** boundary_power``
(power 1 or 2, tuned on train with the weights).  The net runs at half
resolution (pixel-unshuffle in, pixel-shuffle out: 2.3 GFLOP at 480x360, a quarter of a
full-resolution UNet of the same width, still a per-pixel map).  On CamVid val at 50% random
holes it lifts the geodesic fill alone from 69.42 to 73.64 PA-mIoU (benchmarks/HISTORY.md).

The net is fitted by ``lmae fit-boundaries`` (``training/boundary_fit.py``), stored in the
checkpoint under ``boundary_net`` and exported as a third graph (``boundary.onnx``, static
size, dynamic batch); the model's config carries ``geodesic_boundary_weight`` (0 = no net)
and ``geodesic_boundary_power``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .boundary_map import (BOUNDARY_FORMAT_VERSIONS, BoundaryError, BoundarySpec,  # noqa: F401  (re-exported)
                           boundary_input, boundary_targets, boundary_to_image, flip_boundaries)

def conv_bn_relu(i: int, o: int) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class UNet4(nn.Module):
    """A 4-level UNet at input resolution (widths w, 2w, 3w, 4w), logits (B, out, H, W)."""

    def __init__(self, inputs: int, outputs: int, w: int) -> None:
        super().__init__()
        self.e1 = nn.Sequential(conv_bn_relu(inputs, w), conv_bn_relu(w, w))
        self.e2 = nn.Sequential(conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w))
        self.e3 = nn.Sequential(conv_bn_relu(2 * w, 3 * w), conv_bn_relu(3 * w, 3 * w))
        self.e4 = nn.Sequential(conv_bn_relu(3 * w, 4 * w), conv_bn_relu(4 * w, 4 * w))
        self.d3, self.d2 = conv_bn_relu(7 * w, 3 * w), conv_bn_relu(5 * w, 2 * w)
        self.d1 = nn.Sequential(conv_bn_relu(3 * w, w), nn.Conv2d(w, outputs, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def up(a, b):
            return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)

        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        e4 = self.e4(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([up(e4, e3), e3], 1))
        d2 = self.d2(torch.cat([up(d3, e2), e2], 1))
        return self.d1(torch.cat([up(d2, e1), e1], 1))


class BoundaryNet(nn.Module):
    """Normalized RGB (B, 3, H, W), H and W even -> (B, 2, H, W) logits: a class boundary
    between each pixel and its right / lower neighbour."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.unshuffle = nn.PixelUnshuffle(2)  # (B, 12, H/2, W/2): every pixel kept, half the grid
        self.unet = UNet4(12, 8, width)
        self.shuffle = nn.PixelShuffle(2)  # (B, 8, H/2, W/2) -> (B, 2, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle is not None:  # None: the export's strided stem reads the image (export/graphs.py)
            x = self.unshuffle(x)
        return self.shuffle(self.unet(x))


def boundary_probabilities(net: nn.Module, x: torch.Tensor, flip_average: bool = False) -> torch.Tensor:
    """Normalized RGB (B, 3, H, W) -> (B, 2, H, W) boundary probabilities; ``flip_average``:
    the mean of the image's map and its mirror image's map mapped back (both in one batch),
    which places boundaries better (+0.2 to +0.4 PA-mIoU at random 0.5 on CamVid val) for
    twice the compute.  Traceable: the exported boundary graph is this function."""
    if not flip_average:
        return torch.sigmoid(net(x))
    b = x.shape[0]
    p = torch.sigmoid(net(torch.cat([x, x.flip(-1)])))
    direct, mirrored = p[:b], p[b:].flip(-1)
    # as flip_boundaries: the mirrored right-neighbour plane belongs one pixel to the left
    right = torch.cat([mirrored[:, :1, :, 1:], torch.zeros_like(mirrored[:, :1, :, :1])], -1)
    return (direct + torch.cat([right, mirrored[:, 1:]], 1)) / 2


def net_from_state(spec: BoundarySpec, state_dict: dict[str, torch.Tensor]) -> BoundaryNet:
    net = BoundaryNet(spec.width)
    net.load_state_dict(state_dict)
    return net.eval()


class TorchBoundaries:
    """The boundary map of one image with the torch net (checkpoints, training)."""

    def __init__(self, net: BoundaryNet, spec: BoundarySpec, device: str = "cpu") -> None:
        self.net, self.spec, self.device = net.to(device).eval(), spec, device

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(boundary_input(image, self.spec))[None].to(self.device)
        with torch.inference_mode():
            prob = boundary_probabilities(self.net, x, self.spec.flip_average)[0].float().cpu().numpy()
        return boundary_to_image(prob, image.shape[:2])


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A fingerprint of the net's weights: bundles compare it to refuse mixing two nets."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def boundaries_from_checkpoint(ckpt: dict[str, Any], device: str = "cpu",
                               source: str = "") -> TorchBoundaries | None:
    """The checkpoint's boundary net (``None`` if it has none)."""
    entry = ckpt.get("boundary_net")
    if not entry:
        return None
    spec = BoundarySpec.from_dict(entry, source)
    return TorchBoundaries(net_from_state(spec, entry["state_dict"]), spec, device)


def boundary_maps(boundaries: TorchBoundaries | None, images: list[np.ndarray]) -> list[np.ndarray] | None:
    """Every image's map as float16 (half the memory of a training set's maps), or None."""
    if boundaries is None:
        return None
    return [boundaries(img).astype(np.float16) for img in images]
