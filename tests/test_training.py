import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmae_sdk.checkpoint import load_checkpoint
from lmae_sdk.datasets import DatasetError, load_dataset
from lmae_sdk.training.loss import class_frequencies, class_weights, completion_loss
from lmae_sdk.training.train import TrainConfig, train


def _tc(root, out, **kw):
    base = dict(data=str(root), out=str(out), preset="tiny", image_size=(64, 96), epochs=3, batch_size=4,
                lr=3e-3, workers=0, threads=1, progress=False, warmup_epochs=0.5)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_weights():
    freq = class_frequencies([np.array([[0, 0, 0, 1]], np.uint8)], 2)
    np.testing.assert_allclose(freq, [0.75, 0.25])
    w = class_weights(freq)
    assert w[1] > w[0] and w.mean() == pytest.approx(1.0)
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    target = torch.tensor([[[0, 1]]])
    # only the pixel to complete counts when visible_weight = 0
    l0 = completion_loss(logits, target, torch.tensor([[[True, False]]]), None, visible_weight=0.0)
    assert l0.item() == pytest.approx(np.log(2))
    # void is ignored
    l1 = completion_loss(logits, torch.tensor([[[0, 255]]]), torch.tensor([[[True, True]]]), None)
    assert l1.item() == pytest.approx(np.log(2))
    # class weights change which pixel dominates
    lg = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # pixel0 right (class0), pixel1 wrong (class1)
    cw = torch.tensor([1.0, 10.0])
    weighted = completion_loss(lg, target, torch.ones(1, 1, 2, dtype=torch.bool), cw)
    plain = completion_loss(lg, target, torch.ones(1, 1, 2, dtype=torch.bool), None)
    assert weighted > plain


def test_dataset_errors(tmp_path, synth_root):
    with pytest.raises(DatasetError, match="missing split folder 'test'"):
        load_dataset(synth_root, ("test",))
    bad = tmp_path / "bad"
    (bad / "train" / "images").mkdir(parents=True)
    (bad / "train" / "labels").mkdir(parents=True)
    (bad / "train" / "images" / "a.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="unpaired files"):
        load_dataset(bad, ("train",))


def test_ids_beyond_num_classes_are_refused(tmp_path, synth_root):
    import shutil

    from lmae_sdk.labels import InputError, read_label, write_label

    root = tmp_path / "ds"
    shutil.copytree(synth_root, root)
    f = sorted((root / "train" / "labels").iterdir())[0]
    lab, _ = read_label(f)
    lab[0, 0] = 9
    write_label(f, lab)
    with pytest.raises(InputError, match=f"{f.name}: class ids \\[9\\]"):
        train(_tc(root, tmp_path / "x.pt", epochs=1))


def test_tiny_training_loss_falls_and_checkpoints(tmp_path, synth_root):
    out = tmp_path / "syn_m0.5.pt"
    best = train(_tc(synth_root, out, epochs=4))
    log = json.loads((tmp_path / "syn_m0.5.log.json").read_text())
    losses = [r["train_loss"] for r in log]
    assert losses[-1] < losses[0] * 0.8, losses
    assert best.is_file() and (tmp_path / "syn_m0.5.last.pt").is_file()
    assert {"val_pa_miou_random", "val_pa_miou_background"} <= set(log[-1])
    ck = torch.load(best, weights_only=True)
    assert ck["mask_ratios"] == [0.25, 0.5, 0.75]  # the default: one model over a ratio range
    assert ck["metrics"]["val_random"]["pa_miou"] >= 0


def test_seed_is_deterministic_and_resume_continues(tmp_path, synth_root):
    a = train(_tc(synth_root, tmp_path / "a.pt", epochs=2))
    b = train(_tc(synth_root, tmp_path / "b.pt", epochs=2))
    sa, sb = torch.load(a, weights_only=True)["state_dict"], torch.load(b, weights_only=True)["state_dict"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)
    # resume: a 3-epoch run continued from the 2-epoch one has 3 epochs of history
    train(_tc(synth_root, tmp_path / "a.pt", epochs=3, resume=True))
    log = json.loads((tmp_path / "a.log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_a_budget_that_ends_between_epochs_adds_no_empty_epoch(tmp_path, synth_root, monkeypatch, capsys):
    import lmae_sdk.training.train as train_module

    tc = _tc(synth_root, tmp_path / "t.pt", epochs=5, stop_at=1e12)
    real_evaluate, calls = train_module.evaluate, []

    def evaluate_then_run_out_of_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # epoch 1's validation is done: the budget ends before epoch 2 starts
            tc.stop_at = 1.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluate_then_run_out_of_time)
    train(tc)
    log = json.loads((tmp_path / "t.log.json").read_text())
    assert [r["epoch"] for r in log] == [1] and np.isfinite(log[0]["train_loss"])
    assert len(calls) == 3  # no second validation of the same weights
    assert "time budget reached after epoch 1" in capsys.readouterr().out


def test_a_budget_that_ends_after_an_unvalidated_epoch_still_gives_a_best_checkpoint(tmp_path, synth_root,
                                                                                      monkeypatch):
    import lmae_sdk.training.train as train_module

    tc = _tc(synth_root, tmp_path / "t.pt", epochs=5, val_every=10, stop_at=1e12)
    real_save = train_module.save_checkpoint

    def save_then_run_out_of_time(ck, path):
        real_save(ck, path)
        if str(path).endswith(".last.pt"):  # epoch 1 is saved, unvalidated: the budget ends before epoch 2
            tc.stop_at = 1.0

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_run_out_of_time)
    best = train(tc)
    assert best.is_file()
    assert load_checkpoint(best)["metrics"]["epoch"] == 1
    log = json.loads((tmp_path / "t.log.json").read_text())
    assert [r["epoch"] for r in log] == [1] and "val_pa_miou_random" in log[0]


def test_range_model_trains_over_several_ratios(tmp_path, synth_root):
    best = train(_tc(synth_root, tmp_path / "r.pt", epochs=1, mask_ratios=(0.4, 0.6)))
    assert torch.load(best, weights_only=True)["mask_ratios"] == [0.4, 0.6]


def test_ddp_two_cpu_processes(tmp_path, synth_root):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmae_sdk.cli",
           "train", "--data", str(synth_root), "--out", str(out), "--preset", "tiny", "--image-size", "64x96",
           "--epochs", "1", "--batch-size", "2", "--workers", "0", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "world=2" in r.stdout
    # the CLI's default range (parsed with numpy) must still give a weights_only checkpoint
    assert load_checkpoint(out)["mask_ratios"] == [0.25, 0.5, 0.75]


def test_warm_start_takes_matching_tensors(tmp_path, synth_root):
    a = train(_tc(synth_root, tmp_path / "a.pt", epochs=1))
    # lr 0: the warm-started weights pass through one epoch unchanged
    b = train(_tc(synth_root, tmp_path / "b.pt", epochs=1, lr=0.0, init_from=str(a),
                  model_overrides={"refine_arch": "unet"}))
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    torch.testing.assert_close(sa["patch_embed.proj.weight"], sb["patch_embed.proj.weight"])
    torch.testing.assert_close(sa["blocks.0.attn.qkv.weight"], sb["blocks.0.attn.qkv.weight"])
    assert "refine.down1.0.0.weight" in sb and "refine.down1.0.0.weight" not in sa


def test_bf16_autocast_trains(tmp_path, synth_root, capsys):
    best = train(_tc(synth_root, tmp_path / "bf.pt", epochs=4, amp="bf16"))
    assert "bf16 autocast checked" in capsys.readouterr().out  # checked against float32 before the run
    log = json.loads((tmp_path / "bf.log.json").read_text())
    assert all(np.isfinite(r["train_loss"]) for r in log)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    # the checkpoint holds fp32 weights: autocast never changes parameter dtypes
    assert torch.load(best, weights_only=True)["state_dict"]["patch_embed.proj.weight"].dtype == torch.float32


def test_bf16_patch_embedding_matches_float32():
    """Patchify convs with an even number of input channels >= 4 (the IPS embedding has 16)
    come out wrong in bf16 on CPUs with AMX in torch 2.13; PatchEmbed runs them in float32
    under autocast, so training and float32 serving see the same layer."""
    from lmae_sdk.model import PatchEmbed

    torch.manual_seed(0)
    for in_chans in (3, 4, 16, 17):
        embed = PatchEmbed(in_chans, 64, 16).eval()
        x = torch.randn(2, in_chans, 64, 96)
        with torch.no_grad():
            exact = embed(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                approx = embed(x).float()
        assert float((approx - exact).norm() / exact.norm()) < 0.01, in_chans


def test_the_bf16_check_names_a_layer_that_autocast_breaks():
    from lmae_sdk.training.amp import AutocastMismatch, check_bf16_autocast

    class WrongUnderAutocast(torch.nn.Module):  # what a broken bf16 kernel looks like from outside
        def forward(self, x):
            return -x if torch.is_autocast_enabled("cpu") else x

    torch.manual_seed(0)
    good = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 16, 16)
    good.train()
    assert check_bf16_autocast(good, lambda: good(x), "good") < 0.05
    assert good.training  # the mode is restored
    bad = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), WrongUnderAutocast(), torch.nn.Conv2d(8, 4, 1))
    with pytest.raises(AutocastMismatch, match=r"layer '1'.*--amp none"):
        check_bf16_autocast(bad, lambda: bad(x), "bad")

    # autograd runs backward outside autocast: the flag is what the forward saw
    class WrongBackwardUnderAutocast(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.amp = torch.is_autocast_enabled("cpu")
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return -grad if ctx.amp else grad

    class Flip(torch.nn.Module):
        def forward(self, x):
            return WrongBackwardUnderAutocast.apply(x)

    flip = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), Flip(), torch.nn.Conv2d(8, 4, 1))
    assert check_bf16_autocast(flip, lambda: flip(x), "forward only") < 0.05  # the outputs agree
    with pytest.raises(AutocastMismatch, match=r"gradient of '0\.weight'"):
        check_bf16_autocast(flip, lambda: flip(x), "with gradients", loss=lambda out: out.float().square().mean())
    assert all(p.grad is None for p in flip.parameters())  # the probe leaves no gradients behind


def test_calibrate_stores_the_best_threshold(tmp_path, synth_root):
    from lmae_sdk.training.calibrate import calibrate

    best = train(_tc(synth_root, tmp_path / "c.pt", epochs=1))
    r = calibrate(best, synth_root, tmp_path / "cal.pt", thresholds=(0.3, 0.6, 0.9), log=lambda s: None)
    ck = torch.load(tmp_path / "cal.pt", weights_only=True)
    assert [x["unknown_threshold"] for x in r["rows"]] == [0.3, 0.6, 0.9]
    assert {x["finishing_rule"] for x in r["rows"]} == {"argmax"}
    best = max(x["pa_miou"] for x in r["rows"])
    chosen = ck["metrics"]["calibration"]["chosen"]
    assert chosen["pa_miou"] >= best - 0.1
    ties = [x for x in r["rows"] if x["pa_miou"] >= best - 0.1]
    assert chosen["unknown_threshold"] == max(x["unknown_threshold"] for x in ties)
    assert ck["unknown_threshold"] == chosen["unknown_threshold"] and "near_copy_px" not in ck
    for row in r["rows"]:  # the objective is the mean over the default settings (random holes, whole objects)
        assert set(row["pa_miou_by_setting"]) == {"random:0.5", "objects:0.5"}
        assert row["pa_miou"] == pytest.approx(np.mean(list(row["pa_miou_by_setting"].values())))


def test_calibrate_routes_a_range_model_like_the_runtime(tmp_path, synth_root, monkeypatch):
    import lmae_sdk.training.calibrate as cal

    best = train(_tc(synth_root, tmp_path / "rng.pt", epochs=1, mask_ratios=(0.25, 0.75)))
    used = []
    real = cal.routed_logits

    def spy(model, inp, mask_ratio, *a, **kw):
        used.append(mask_ratio)
        return real(model, inp, mask_ratio, *a, **kw)

    monkeypatch.setattr(cal, "routed_logits", spy)
    cal.calibrate(best, synth_root, tmp_path / "cal.pt", thresholds=(0.3,), settings=(("random", 0.5),),
                  log=lambda s: None)
    # val holes are 50% random patches: 0.25 masks too few patches, so the runtime (and
    # calibrate) must use the 0.75 engine; the old rule used the first ratio for every image
    assert used and set(used) == {0.75}


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f", False), ("avx2 avx512_bf16", True),
                                           ("avx2 amx_bf16 amx_tile", True)])
def test_bf16_is_used_by_default_only_where_the_cpu_has_it(monkeypatch, flags, native):
    import lmae_sdk.training.amp as amp

    class FakeCpuinfo:
        def __init__(self, path):
            assert str(path) == "/proc/cpuinfo"

        def read_text(self):
            return f"processor : 0\nflags : {flags}\n"

    monkeypatch.setattr(amp, "Path", FakeCpuinfo)
    assert amp.native_bf16() is native


@pytest.mark.parametrize("items", [7, 9, 8])
def test_ddp_batches_never_mix_mask_ratios(items):
    """Under torchrun, every rank's every batch has one mask ratio (one K), also when the
    train count is not a multiple of the world size (a padded sampler wrapped index 0 into
    the last batch: 'mixed K in one batch' at the end of the first epoch)."""
    from lmae_sdk.config import make_config
    from lmae_sdk.training.data import CompletionTrainSet, SampleSpec, train_loader

    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 255, (64, 96, 3), np.uint8), rng.integers(0, 4, (64, 96)).astype(np.uint8))
            for _ in range(items)]
    cfg = make_config("tiny", 4, img_size=(64, 96))
    spec = SampleSpec(mask_ratios=(0.25, 0.5, 0.75))
    world, batch = 2, 2
    for epoch in range(4):
        seen = []
        for rank in range(world):
            trainset = CompletionTrainSet(data, cfg, spec, batch, seed=0, world_size=world)
            trainset.epoch = epoch
            loader, sampler = train_loader(trainset, batch, workers=0, world=world, rank=rank)
            sampler.set_epoch(epoch)
            for b in loader:  # collate raises on a batch with two K
                seen.append(b["ids_keep"].shape[1])
        # each rank ran the same number of steps, each batch one K
        assert len(seen) == world * ((items // world) // batch)
