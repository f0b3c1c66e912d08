import numpy as np
import pytest
import torch

from lmae_sdk.masking import plan_masks
from lmae_sdk.model import LMAE, LMAEConfig, count_parameters, make_config, sincos_pos_embed_2d


def _plan(L, n_mask, b, seed=0):
    from lmae_sdk.masking import MaskPlan

    rng = np.random.default_rng(seed)
    return MaskPlan.stack([plan_masks(np.zeros(L), rng.random(L), n_mask) for _ in range(b)])


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.img_size
    image = torch.randn(b, 3, h, w, generator=g)
    planes = torch.nn.functional.one_hot(torch.randint(0, cfg.num_classes, (b, h, w), generator=g),
                                         cfg.num_classes).permute(0, 3, 1, 2).float()
    prior = torch.rand(b, cfg.prior_channels, h, w, generator=g) if cfg.prior else None
    return image, planes, prior


@pytest.mark.parametrize("fuse", ["layer", "concat", "insert"])
@pytest.mark.parametrize("ips,prior,refine,arch", [(True, True, 16, "plain"), (True, True, 8, "unet"),
                                                   (False, False, 0, "plain"), (True, False, 0, "plain")])
def test_shapes(fuse, ips, prior, refine, arch):
    cfg = make_config("tiny", 5, img_size=(32, 48), fuse=fuse, ips=ips, prior=prior, refine_width=refine,
                      refine_arch=arch)
    model = LMAE(cfg)
    L, K = cfg.num_patches, cfg.num_visible(0.5)
    assert L == 6 and K == 3
    plan = _plan(L, L - K, 2)
    image, planes, pri = _inputs(cfg)
    latent = model.encode(image, planes, torch.from_numpy(plan.ids_keep), pri)
    assert latent.shape == (2, K, cfg.embed_dim)
    logits = model.decode(latent, image, torch.from_numpy(plan.ids_mask), torch.from_numpy(plan.ids_restore),
                          planes, pri)
    assert logits.shape == (2, 5, 32, 48)


def test_static_k_and_rectangular_grid():
    cfg = make_config("small", 11, img_size=(224, 288))
    assert cfg.grid == (14, 18) and cfg.num_patches == 252
    assert cfg.num_visible(0.5) == 126 and cfg.num_visible(0.7) == 252 - 176
    with pytest.raises(ValueError, match="multiples of patch_size"):
        make_config("tiny", 3, img_size=(30, 48))


def test_config_round_trip():
    cfg = make_config("paper", 21, img_size=(224, 224))
    assert (cfg.embed_dim, cfg.depth, cfg.decoder_embed_dim, cfg.decoder_depth) == (1440, 8, 720, 6)
    assert not cfg.prior and cfg.refine_width == 0
    assert LMAEConfig.from_dict(cfg.to_dict()) == cfg


def test_prior_mode_defaults_for_older_checkpoints_and_is_validated():
    cfg = make_config("tiny", 5)
    assert cfg.prior_mode == "geodesic" and make_config("small", 11).prior_mode == "geodesic"  # presets' default
    assert LMAEConfig.from_dict(cfg.to_dict()).prior_mode == "geodesic"
    older = cfg.to_dict()
    for name in ("prior_mode", "geodesic_edge_weight", "geodesic_blur", "prior_path_cost"):
        del older[name]  # checkpoints written before the fields existed
    old = LMAEConfig.from_dict(older)
    assert (old.prior_mode, old.geodesic_edge_weight, old.geodesic_blur, old.prior_path_cost) == \
        ("euclidean", 100.0, 2.0, False)
    with pytest.raises(ValueError, match="prior_mode"):
        make_config("tiny", 5, prior_mode="bilateral")


def test_path_cost_plane_goes_with_the_geodesic_prior():
    n = 5
    assert make_config("small", n).prior_channels == n + 2  # one-hot, distance, path cost
    assert make_config("small", n, prior_mode="euclidean").prior_channels == n + 1  # dropped with the mode
    assert make_config("small", n, prior=False).prior_channels == 0
    with pytest.raises(ValueError, match="prior_path_cost"):
        make_config("small", n, prior_mode="euclidean", prior_path_cost=True)


def test_pos_embed_is_sincos_and_distinct():
    pe = sincos_pos_embed_2d(32, 3, 4)
    assert pe.shape == (12, 32)
    assert np.abs(pe).max() <= 1.0
    # every position distinct
    d = ((pe[:, None] - pe[None]) ** 2).sum(-1) + np.eye(12)
    assert d.min() > 1e-3


def test_ips_masked_positions_carry_image_patch_embeddings():
    """With one decoder block removed from the picture (depth 0), the decoder's token at a
    masked position is exactly the IPS embedding of that image patch, a visible one is the
    encoder output, both in restored (row-major) order."""
    cfg = make_config("tiny", 4, img_size=(32, 64), decoder_depth=1, prior=False, refine_width=0)
    model = LMAE(cfg).eval()
    captured = {}
    model.decoder_blocks[0].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0].clone()))
    L, K = cfg.num_patches, cfg.num_visible(0.5)
    plan = _plan(L, L - K, 2, seed=3)
    image, planes, _ = _inputs(cfg)
    with torch.no_grad():
        latent = model.encode(image, planes, torch.from_numpy(plan.ids_keep))
        model.decode(latent, image, torch.from_numpy(plan.ids_mask), torch.from_numpy(plan.ids_restore))
        x = captured["x"] - model.decoder_pos_embed  # (B, L, DD) before positions
        supp = model.supplement_tokens(image, None)  # (B, L, DD)
        vis = model.decoder_embed(latent)  # (B, K, DD)
    for b in range(2):
        for j, pos in enumerate(plan.ids_mask[b]):
            torch.testing.assert_close(x[b, pos], supp[b, pos], atol=1e-5, rtol=1e-5)
        for j, pos in enumerate(plan.ids_keep[b]):
            torch.testing.assert_close(x[b, pos], vis[b, j], atol=1e-5, rtol=1e-5)


def test_ips_ignores_label_of_masked_patches_and_mask_token_differs():
    cfg = make_config("tiny", 4, img_size=(32, 64), prior=False, refine_width=0)
    torch.manual_seed(0)
    model = LMAE(cfg).eval()
    L, K = cfg.num_patches, cfg.num_visible(0.5)
    plan = _plan(L, L - K, 1, seed=1)
    image, planes, _ = _inputs(cfg, b=1)
    # change the label inside one masked patch only: the output must not change
    gh, gw = cfg.grid
    pos = int(plan.ids_mask[0, 0])
    r, c = divmod(pos, gw)
    planes2 = planes.clone()
    planes2[:, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = torch.roll(planes2[:, :, r * 16:(r + 1) * 16,
                                                                          c * 16:(c + 1) * 16], 1, dims=1)
    ids = [torch.from_numpy(a) for a in (plan.ids_keep, plan.ids_mask, plan.ids_restore)]
    with torch.no_grad():
        a = model(image, planes, *ids)
        b = model(image, planes2, *ids)
        # but changing the image inside that masked patch does (IPS carries it)
        image2 = image.clone()
        image2[:, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 1.0
        c_ = model(image2, planes, *ids)
    torch.testing.assert_close(a, b)
    assert (a - c_).abs().max() > 1e-4


def test_parameter_counts_grow_with_presets():
    counts = [count_parameters(LMAE(make_config(p, 11, img_size=(64, 64)))) for p in ("tiny", "small", "base")]
    assert counts == sorted(counts)


def test_unet_merge_and_patch_parts_equal_the_concatenated_form():
    """The refinement head's merges and the patch embeddings skip the full-resolution
    concatenation; they must compute what the concatenated form computes (checkpoints
    trained either way load into the other)."""
    from lmae_sdk.model import PatchEmbed, UNetRefineHead

    torch.manual_seed(0)
    head = UNetRefineHead(9, 5, 8)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 9, 40, 56)

    def concat_form(h, x):
        f0 = h.stem(x)
        f1 = h.down1(f0)
        f2 = h.down2(f1)
        f3 = h.down3(f2)
        y = h.up2(torch.cat([h._up(f3, f2), f2], 1))
        y = h.up1(torch.cat([h._up(y, f1), f1], 1))
        return h.out(h.up0(torch.cat([h._up(y, f0), f0], 1)))

    with torch.no_grad():
        want, got = concat_form(head, x), head(x)
    assert want.abs().max() > 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    pe = PatchEmbed(7, 12, 8)
    parts = [torch.randn(2, 3, 32, 48), torch.randn(2, 4, 32, 48)]
    with torch.no_grad():
        torch.testing.assert_close(pe(parts), pe(torch.cat(parts, 1)), rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="7 channels, got 6"):
            pe([parts[0], parts[0]])


def test_unpatchify_and_constant_scale_upsampling_equal_the_torch_forms():
    """The export-friendly forms (one 6-D transpose; a constant 2x scale) compute what the
    pixel shuffle and the size-driven interpolation compute."""
    from lmae_sdk.model import UNetRefineHead

    cfg = make_config("tiny", 5, img_size=(32, 48))
    model = LMAE(cfg)
    x = torch.randn(2, cfg.num_patches, 5 * 16 * 16)
    shuffled = torch.nn.functional.pixel_shuffle(x.transpose(1, 2).reshape(2, -1, *cfg.grid), 16)
    assert torch.equal(model.unpatchify(x), shuffled)
    low = torch.randn(2, 3, 7, 9)
    for size in ((14, 18), (15, 17)):  # exactly twice: the constant scale; otherwise: the size
        want = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(UNetRefineHead._up(low, torch.empty(1, 1, *size)), want, rtol=0, atol=1e-6)
