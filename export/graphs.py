"""Traceable wrappers around :class:`lmae_sdk.model.LMAE` for ONNX export.

In the style of segment-anything's ``utils/onnx.py``: one ``nn.Module`` per exported
graph whose ``forward`` takes exactly the graph inputs, by name, in the contract order

* encoder: ``image, label_planes, [prior], ids_keep`` -> ``latent``
* decoder: ``latent, image, ids_mask, ids_restore, [label_planes], [prior]`` -> ``logits``

``prior`` is present only when ``cfg.prior``; the decoder's ``label_planes`` only when
``cfg.refine_width > 0``.  Every index tensor comes from the host (``masking.py``), so
the graphs hold no argsort and no data-dependent shape; IPS is the model's static
``torch.gather`` (ONNX ``GatherElements``).

fp16 variant (``half=True``): weights and compute in float16, LayerNorm kept in float32,
graph inputs/outputs stay float32 (casts at the graph boundary), so the runtime feeds
the same arrays to every precision.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lmae_sdk.boundaries import BoundaryNet, boundary_probabilities
from lmae_sdk.model import LMAE, LMAEConfig

PARTS = ("encoder", "decoder")


def encoder_input_names(cfg: LMAEConfig) -> list[str]:
    return cfg.graph_inputs()["encoder"]


def decoder_input_names(cfg: LMAEConfig) -> list[str]:
    return cfg.graph_inputs()["decoder"]


def input_names(cfg: LMAEConfig, part: str) -> list[str]:
    if part == "encoder":
        return encoder_input_names(cfg)
    if part == "decoder":
        return decoder_input_names(cfg)
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def output_names(part: str) -> list[str]:
    return ["latent"] if part == "encoder" else ["logits"]


class _Fp32LayerNorm(nn.Module):
    """LayerNorm computed in float32 inside an fp16 graph."""

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.ln = ln.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.float()).to(x.dtype)


def half_model(model: LMAE) -> LMAE:
    """A float16 copy of ``model`` whose LayerNorms stay float32."""
    m = copy.deepcopy(model).eval().half()
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(mod, cname, _Fp32LayerNorm(child))
    return m


class _GraphBase(nn.Module):
    def __init__(self, model: LMAE, half: bool = False) -> None:
        super().__init__()
        self.half = half
        self.model = half_model(model) if half else model.eval()
        self.cfg = model.cfg

    def _in(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return x.half() if (self.half and x is not None) else x

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if self.half else x


class EncoderGraph(_GraphBase):
    """(image, label_planes, [prior], ids_keep) -> latent (B, K, E)."""

    def encode(self, image, label_planes, ids_keep, prior=None):
        return self._out(self.model.encode(self._in(image), self._in(label_planes), ids_keep, self._in(prior)))


class _EncPrior(EncoderGraph):
    def forward(self, image: torch.Tensor, label_planes: torch.Tensor, prior: torch.Tensor,
                ids_keep: torch.Tensor) -> torch.Tensor:
        return self.encode(image, label_planes, ids_keep, prior)


class _EncNoPrior(EncoderGraph):
    def forward(self, image: torch.Tensor, label_planes: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        return self.encode(image, label_planes, ids_keep)


class DecoderGraph(_GraphBase):
    """(latent, image, ids_mask, ids_restore, [label_planes], [prior]) -> logits (B, N, H, W)."""

    def decode(self, latent, image, ids_mask, ids_restore, label_planes=None, prior=None):
        return self._out(self.model.decode(self._in(latent), self._in(image), ids_mask, ids_restore,
                                           self._in(label_planes), self._in(prior)))


class _DecRefinePrior(DecoderGraph):
    def forward(self, latent: torch.Tensor, image: torch.Tensor, ids_mask: torch.Tensor, ids_restore: torch.Tensor,
                label_planes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        return self.decode(latent, image, ids_mask, ids_restore, label_planes, prior)


class _DecRefine(DecoderGraph):
    def forward(self, latent: torch.Tensor, image: torch.Tensor, ids_mask: torch.Tensor, ids_restore: torch.Tensor,
                label_planes: torch.Tensor) -> torch.Tensor:
        return self.decode(latent, image, ids_mask, ids_restore, label_planes)


class _DecPrior(DecoderGraph):
    def forward(self, latent: torch.Tensor, image: torch.Tensor, ids_mask: torch.Tensor, ids_restore: torch.Tensor,
                prior: torch.Tensor) -> torch.Tensor:
        return self.decode(latent, image, ids_mask, ids_restore, None, prior)


class _DecPlain(DecoderGraph):
    def forward(self, latent: torch.Tensor, image: torch.Tensor, ids_mask: torch.Tensor,
                ids_restore: torch.Tensor) -> torch.Tensor:
        return self.decode(latent, image, ids_mask, ids_restore)


def make_graph(model: LMAE, part: str, half: bool = False) -> _GraphBase:
    """The wrapper whose forward signature is exactly ``input_names(cfg, part)``."""
    cfg = model.cfg
    if part == "encoder":
        cls = _EncPrior if cfg.prior else _EncNoPrior
    elif part == "decoder":
        cls = {(True, True): _DecRefinePrior, (True, False): _DecRefine, (False, True): _DecPrior,
               (False, False): _DecPlain}[(cfg.refine_width > 0, cfg.prior)]
    else:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    return cls(model, half=half).eval()


def example_inputs(cfg: LMAEConfig, part: str, mask_ratio: float, batch: int = 2,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid example tensors for tracing (index plans are real permutations)."""
    g = torch.Generator().manual_seed(seed)
    n, (h, w), L = cfg.num_classes, cfg.img_size, cfg.num_patches
    k = cfg.num_visible(mask_ratio)
    perm = torch.stack([torch.randperm(L, generator=g) for _ in range(batch)])
    keep = perm[:, :k].sort(dim=1).values
    mask = perm[:, k:].sort(dim=1).values
    restore = torch.argsort(torch.cat([keep, mask], dim=1), dim=1)
    full = {
        "image": torch.randn(batch, 3, h, w, generator=g),
        "label_planes": torch.rand(batch, n, h, w, generator=g),
        "prior": torch.rand(batch, cfg.prior_channels, h, w, generator=g),
        "ids_keep": keep.long(), "ids_mask": mask.long(), "ids_restore": restore.long(),
        "latent": torch.randn(batch, k, cfg.embed_dim, generator=g),
    }
    return {name: full[name] for name in input_names(cfg, part)}


def with_strided_stem(net: BoundaryNet) -> BoundaryNet:
    """The same function as ``net`` without its pixel unshuffle: the unshuffle (a 6-D
    transpose, a sixth of the int8 graph's time) and the 3x3 convolution after it are one
    6x6 convolution of stride 2 on the image (each output cell reads the same 36 pixels per
    channel, padding 2 = the unshuffled grid's padding 1)."""
    first = net.unet.e1[0][0]
    if net.unshuffle is None or not isinstance(first, nn.Conv2d) or first.kernel_size != (3, 3):
        return net
    out = copy.deepcopy(net)
    w = first.weight.detach()  # (o, c*4 + i*2 + j, ky, kx): PixelUnshuffle's channel order
    stem = nn.Conv2d(3, w.shape[0], 6, stride=2, padding=2, bias=False)
    stem.weight.data = w.reshape(w.shape[0], 3, 2, 2, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(w.shape[0], 3, 6, 6)
    out.unshuffle = None
    out.unet.e1[0][0] = stem
    return out


class BoundaryGraph(nn.Module):
    """image (B, 3, h, w), normalized -> boundary (B, 2, h, w): probability of a class
    boundary to the right / below (:func:`lmae_sdk.boundaries.boundary_probabilities`, the
    mirror-image average included where the spec asks for it), the net's stem as
    :func:`with_strided_stem`."""

    def __init__(self, net: nn.Module, flip_average: bool = False) -> None:
        super().__init__()
        self.net = with_strided_stem(net).eval()
        self.flip_average = flip_average

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return boundary_probabilities(self.net, image, self.flip_average)
