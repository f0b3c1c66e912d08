"""L-MAE: Label Masked Autoencoder for label completion.

Layout follows MAE's ``models_mae.py``: patch embed + fixed 2D sin-cos position
embedding, an encoder over the K visible tokens only, a lighter decoder over all L
tokens.  Two things differ from MAE:

* Stack Fuse: the encoder input is the label (N class planes, unknown = all zero)
  stacked with the RGB image, not the image alone.
* Image Patch Supplement (IPS): a masked position enters the decoder as the embedding
  of its *image* patch instead of a shared learned mask token.

Our presets add two levers that the paper does not have (both switchable, off in the
``paper`` preset):

* ``prior``: propagation planes (propagated-label one-hot + distance to the nearest
  known pixel [+ the geodesic path cost of the copy]) computed on the host, fed next to
  the image; they reach masked positions through IPS, so the model starts from what
  label propagation knows, and the path cost tells it where that copy crossed image edges.
* ``refine``: a light full-resolution conv stage over (coarse logits, image, label,
  prior) that restores thin structures the 16x16 patch head blurs.

All index tensors (``ids_keep``, ``ids_mask``, ``ids_restore``) are computed on the
host (see ``masking.py``) so nothing data dependent lives in the graph.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import FUSE_MODES, PRESETS, LMAEConfig, make_config  # noqa: F401  (the model's settings)


# --------------------------------------------------------------------------------------
# position embedding (MAE's util/pos_embed.py, rectangular grids)
# --------------------------------------------------------------------------------------
def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h * grid_w, dim) fixed 2D sin-cos embedding, row-major like the patches."""
    if dim % 4:
        raise ValueError("embedding dim must be a multiple of 4 for 2D sin-cos")
    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    emb_h = _sincos_1d(dim // 2, gh)
    emb_w = _sincos_1d(dim // 2, gw)
    return np.concatenate([emb_h, emb_w], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------
# timm-style pre-norm ViT block
# --------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
class StackFuse(nn.Module):
    """Builds the encoder's fuse map from image, label planes and (optional) prior.

    layer : [label planes (N), RGB (3)]                     -> N + 3 channels
    concat: [label as one channel (id+1)/N, 0 = unknown, RGB] -> 4 channels
    insert: [R, L, G, L, B, L] with L the one-channel label  -> 6 channels
    The prior planes (cfg.prior_channels), when enabled, are appended in every mode.
    """

    def __init__(self, cfg: LMAEConfig) -> None:
        super().__init__()
        self.mode = cfg.fuse
        n = cfg.num_classes
        # (1, N, 1, 1) class code for the one-channel modes; soft planes give soft codes
        self.register_buffer("class_code", (torch.arange(n, dtype=torch.float32) + 1).div(n).view(1, n, 1, 1),
                             persistent=False)
        base = {"layer": n + 3, "concat": 4, "insert": 6}[self.mode]
        self.out_channels = base + cfg.prior_channels

    def forward(self, image: torch.Tensor, label_planes: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        return torch.cat(self.parts(image, label_planes, prior), dim=1)

    def parts(self, image: torch.Tensor, label_planes: torch.Tensor,
              prior: torch.Tensor | None) -> list[torch.Tensor]:
        """The fuse map's channel groups in order (the fuse map is their concatenation)."""
        if self.mode == "layer":
            parts = [label_planes, image]
        else:
            code = (label_planes * self.class_code).sum(dim=1, keepdim=True)  # (B, 1, H, W)
            if self.mode == "concat":
                parts = [code, image]
            else:  # six one-channel groups would be six thin convs: one group
                parts = [torch.cat([image[:, 0:1], code, image[:, 1:2], code, image[:, 2:3], code], dim=1)]
        if prior is not None:
            parts.append(prior)
        return parts


def as_parts(x: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """A module input given whole (B, C, H, W) or as its channel groups in order -> the groups."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def conv_over_parts(conv: nn.Conv2d, parts: list[torch.Tensor]) -> torch.Tensor:
    """``conv(cat(parts, dim=1))`` as the sum of each part's conv with its slice of the
    kernel: the same function without writing the concatenation."""
    if len(parts) == 1:
        return conv(parts[0])
    w, c0, out = conv.weight, 0, None
    for x in parts:
        c1 = c0 + x.shape[1]
        y = nn.functional.conv2d(x, w[:, c0:c1], conv.bias if out is None else None, conv.stride, conv.padding,
                                 conv.dilation)
        out, c0 = (y if out is None else out + y), c1
    if c0 != w.shape[1]:
        raise ValueError(f"{type(conv).__name__} takes {w.shape[1]} channels, got {c0}")
    return out


class PatchEmbed(nn.Module):
    """Conv2d stride-p patch embedding -> (B, L, D) tokens in row-major order.

    Takes the input whole (B, C, H, W) or as its channel groups in order: then each group
    is projected by its slice of the kernel and the projections summed, the same function
    without writing the full-resolution concatenation (the engine 1.08x faster in ONNX
    Runtime, benchmarks/HISTORY.md)."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        parts = as_parts(x)
        if torch.is_autocast_enabled(parts[0].device.type):
            # in float32 under autocast: torch 2.13's bf16 kernel for a patchify conv (kernel =
            # stride >= 4, an even number of input channels >= 4) returns wrong values on CPUs
            # with AMX (relative error ~1), and a model trained through it fails in float32
            # (benchmarks/HISTORY.md); it is a small share of the FLOPs
            with torch.autocast(parts[0].device.type, enabled=False):
                return conv_over_parts(self.proj, [p.float() for p in parts]).flatten(2).transpose(1, 2)
        return conv_over_parts(self.proj, parts).flatten(2).transpose(1, 2)


class RefineHead(nn.Module):
    """Residual full-resolution correction of the patch head's logits."""

    def __init__(self, in_chans: int, num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i in range(depth):
            dilation = 1 if i % 2 == 0 else 2  # widen the receptive field cheaply
            layers += [nn.Conv2d(c, width, 3, padding=dilation, dilation=dilation), nn.GELU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, num_classes, 1)
        nn.init.zeros_(self.out.weight)  # start as identity on the coarse logits
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """x: the input (B, C, H, W) or its channel groups in order."""
        return self.out(self.body(torch.cat(as_parts(x), dim=1)))


class UNetRefineHead(nn.Module):
    """Multi-scale residual refinement: a 3-level conv encoder-decoder whose receptive
    field (~70 px at model size) spans a whole hole, so it can place a class boundary
    inside the hole on an image edge, which the plain head's ~9 px cannot."""

    def __init__(self, in_chans: int, num_classes: int, width: int) -> None:
        super().__init__()
        w0, w1, w2 = width, 2 * width, 4 * width

        def conv(ci: int, co: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(ci, co, 3, stride=stride, padding=dilation, dilation=dilation), nn.GELU())

        self.stem = nn.Sequential(nn.Conv2d(in_chans, w0, 1), nn.GELU(), conv(w0, w0))  # 1/1
        self.down1 = nn.Sequential(conv(w0, w1, stride=2), conv(w1, w1))  # 1/2
        self.down2 = nn.Sequential(conv(w1, w2, stride=2), conv(w2, w2))  # 1/4
        self.down3 = nn.Sequential(conv(w2, w2, stride=2), conv(w2, w2, dilation=2))  # 1/8
        self.up2 = nn.Sequential(nn.Conv2d(w2 + w2, w2, 1), nn.GELU())
        self.up1 = nn.Sequential(nn.Conv2d(w2 + w1, w1, 1), nn.GELU())
        self.up0 = nn.Sequential(nn.Conv2d(w1 + w0, w0, 1), nn.GELU(), conv(w0, w0))
        self.out = nn.Conv2d(w0, num_classes, 1)
        nn.init.zeros_(self.out.weight)  # start as identity on the coarse logits
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.shape[-2:] == tuple(2 * d for d in x.shape[-2:]):
            # the same numbers as size=like's, but a constant scale: ONNX Runtime then upsamples in
            # its blocked (NCHWc) layout, without layout reorders around it
            return nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return nn.functional.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def _merge(self, block: nn.Sequential, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``block(cat([up(low), skip]))`` whose first layer is a 1x1 conv, computed as
        ``up(conv_low(low)) + conv_skip(skip)``: the same function (a 1x1 conv commutes with
        bilinear upsampling), with neither the upsampled ``low`` nor the concatenation ever
        stored at the skip's resolution (the engine 1.12x faster in ONNX Runtime,
        benchmarks/HISTORY.md)."""
        conv, c = block[0], low.shape[1]
        conv2d = nn.functional.conv2d
        y = self._up(conv2d(low, conv.weight[:, :c]), skip) + conv2d(skip, conv.weight[:, c:], conv.bias)
        return block[1:](y)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """x: the input (B, C, H, W) or its channel groups in order (not concatenated)."""
        f0 = self.stem[1:](conv_over_parts(self.stem[0], as_parts(x)))
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        y = self._merge(self.up2, f3, f2)
        y = self._merge(self.up1, y, f1)
        y = self._merge(self.up0, y, f0)
        return self.out(y)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), ids (B, M) -> (B, M, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
class LMAE(nn.Module):
    def __init__(self, cfg: LMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, p = cfg.num_classes, cfg.patch_size
        gh, gw = cfg.grid

        # encoder
        self.fuse = StackFuse(cfg)
        self.patch_embed = PatchEmbed(self.fuse.out_channels, cfg.embed_dim, p)
        self.register_buffer("pos_embed", torch.from_numpy(sincos_pos_embed_2d(cfg.embed_dim, gh, gw))[None],
                             persistent=False)  # (1, L, E)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

        # decoder
        dd = cfg.decoder_embed_dim
        self.decoder_embed = nn.Linear(cfg.embed_dim, dd)
        if cfg.ips:
            # image (+ prior) only: the label of a masked patch is what we complete
            self.ips_embed = PatchEmbed(3 + cfg.prior_channels, dd, p)
        else:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", torch.from_numpy(sincos_pos_embed_2d(dd, gh, gw))[None],
                             persistent=False)  # (1, L, DD)
        self.decoder_blocks = nn.ModuleList(
            Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, n * p * p)

        if cfg.prior:
            self.prior_gain = nn.Parameter(torch.tensor(float(cfg.prior_gain)))
        if cfg.refine_width > 0:
            refine_in = n + 3 + n + cfg.prior_channels
            if cfg.refine_arch == "unet":
                self.refine = UNetRefineHead(refine_in, n, cfg.refine_width)
            else:
                self.refine = RefineHead(refine_in, n, cfg.refine_width, cfg.refine_depth)
        self._init_weights()

    def _init_weights(self) -> None:
        # as MAE: xavier for linear layers and the patch projections, zero biases
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for pe in [self.patch_embed] + ([self.ips_embed] if self.cfg.ips else []):
            w = pe.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if not self.cfg.ips:
            nn.init.normal_(self.mask_token, std=0.02)

    def _check_prior(self, prior: torch.Tensor | None) -> None:
        if self.cfg.prior and prior is None:
            raise ValueError("this model was built with prior=True: pass the propagation planes")
        if not self.cfg.prior and prior is not None:
            raise ValueError("this model was built with prior=False: prior must be None")

    def encode(self, image: torch.Tensor, label_planes: torch.Tensor, ids_keep: torch.Tensor,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        """image (B,3,H,W), label_planes (B,N,H,W), ids_keep (B,K) -> latent (B,K,E)."""
        self._check_prior(prior)
        x = self.patch_embed(self.fuse.parts(image, label_planes, prior))  # (B, L, E)
        x = gather_tokens(x + self.pos_embed, ids_keep)  # (B, K, E): the encoder sees visible tokens only
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def supplement_tokens(self, image: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """IPS: decoder-dim embedding of every image patch, (B, L, DD)."""
        return self.ips_embed([image] if prior is None else [image, prior])

    def decode(self, latent: torch.Tensor, image: torch.Tensor, ids_mask: torch.Tensor, ids_restore: torch.Tensor,
               label_planes: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B,K,E) + masked-position fill -> logits (B,N,H,W).

        ``label_planes`` is needed only by the refinement stage (refine_width > 0).
        """
        self._check_prior(prior)
        b = latent.shape[0]
        x = self.decoder_embed(latent)  # (B, K, DD)
        if self.cfg.ips:
            masked = gather_tokens(self.supplement_tokens(image, prior), ids_mask)  # (B, L-K, DD)
        else:
            masked = self.mask_token.expand(b, ids_mask.shape[1], -1)
        x = torch.cat([x, masked], dim=1)  # (B, L, DD) in [keep, mask] order
        x = gather_tokens(x, ids_restore)  # back to row-major patch order
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (B, L, N*p*p)
        logits = self.unpatchify(x)  # (B, N, H, W)
        if self.cfg.prior:
            nearest = prior[:, : self.cfg.num_classes]  # nearest-known-label one-hot
            logits = logits + self.prior_gain * nearest
        if self.cfg.refine_width > 0:
            if label_planes is None:
                raise ValueError("the refinement stage needs label_planes")
            parts = [logits, image, label_planes] + ([prior] if prior is not None else [])
            logits = logits + self.refine(parts)
        return logits

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, N*p*p) per-patch pixel logits -> (B, N, H, W).

        One 6-D transpose: the pixel shuffle of the (B, N*p*p, gh, gw) map would be a
        token transpose plus a DepthToSpace, two passes over the full-resolution logits (~5%
        off ONNX Runtime's decoder on one thread: benchmarks/HISTORY.md)."""
        (gh, gw), p, n = self.cfg.grid, self.cfg.patch_size, self.cfg.num_classes
        x = x.reshape(x.shape[0], gh, gw, n, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, N, gh, p, gw, p)
        return x.reshape(x.shape[0], n, gh * p, gw * p)

    def forward(self, image: torch.Tensor, label_planes: torch.Tensor, ids_keep: torch.Tensor,
                ids_mask: torch.Tensor, ids_restore: torch.Tensor,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        latent = self.encode(image, label_planes, ids_keep, prior)
        return self.decode(latent, image, ids_mask, ids_restore, label_planes, prior)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
