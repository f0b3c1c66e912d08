"""The training loop: ``train(TrainConfig) -> checkpoint paths``.

Single process, or DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on
CUDA).  Every ``val_every`` epochs: val PA-mIoU / global mIoU with Background-First routing
(the inference strategy) on 50% random holes, 50% Background-First holes and whole objects
removed; CSV + JSON log; best (mean of the random-hole and whole-object PA-mIoU) and last
checkpoints; ``resume`` continues from the last one.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lmae_sdk.boundaries import boundaries_from_checkpoint, boundary_maps
from lmae_sdk.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from lmae_sdk.datasets import load_dataset
from lmae_sdk.masking import DEFAULT_UNKNOWN_THRESHOLD
from lmae_sdk.metrics import CompletionMeter
from lmae_sdk.model import LMAE, count_parameters, make_config
from lmae_sdk.pipeline import CompletionSettings, ModelInputs, finish, graph_inputs
from lmae_sdk.routing import mask_plan

from .amp import check_bf16_autocast
from .data import CompletionTrainSet, SampleSpec, ValSet, collate, load_pairs, read_contexts, train_loader
from .loss import class_frequencies, class_weights, training_loss


@dataclass
class TrainConfig:
    data: str
    out: str
    mask_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)  # one model over all of them; (0.5,) = the paper's per-ratio
    preset: str = "small"
    image_size: tuple[int, int] = (224, 288)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw-cosine"  # or "adam-plateau" (the paper's)
    warmup_epochs: float = 1.0
    holes: str = "mixed"
    mask_mix: dict | None = None  # None = the paper's 1:2:2 mix (masking.DEFAULT_MIX)
    hole_mix: dict | None = None  # None = data.DEFAULT_HOLE_MIX
    label_resize: str = "soft"
    visible_weight: float = 0.1
    gap_weight: float = 0.0  # the loss at unknown target pixels: their gaps' end classes (loss.gap_loss)
    class_weighting: bool = True
    threshold: float = DEFAULT_UNKNOWN_THRESHOLD
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # 0 = leave torch's default
    workers: int = 1
    val_limit: int = 0  # 0 = the whole val split
    val_every: int = 1
    time_budget_min: float = 0.0  # stop after this many minutes (0 = none)
    stop_at: float = 0.0  # or at this wall-clock time (time.time(); 0 = none): whichever comes first
    resume: bool = False
    layout: str = "auto"
    model_overrides: dict = field(default_factory=dict)
    progress: bool = True
    max_train_items: int = 0  # 0 = all (tests use a few)
    amp: str = "none"  # "bf16": autocast matmuls/convs to bfloat16 (2.5x faster on AVX512-BF16 CPUs)
    init_from: str | None = None  # warm start: load every tensor of this checkpoint whose name and shape match
    # a checkpoint with a boundary net (lmae fit-boundaries): its net and step-cost weights make the prior
    boundaries_from: str | None = None
    # a folder of label PNGs named as the train labels: where a train label is unknown, the model's inputs take
    # these labels' known pixels (pseudo-labels of a partial dataset: data.make_sample's context)
    context_labels: str | None = None


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _is_dist() else 0


def routed_logits(model: LMAE, inp: ModelInputs, mask_ratio: float, strategy: str, threshold: float,
                  background_index: int | None = None, device: str = "cpu",
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Plan every image of a stacked batch the way the runtime does (one engine, one pass:
    :func:`lmae_sdk.routing.mask_plan`) and run the model on the pipeline's graph inputs:
    (B, N, h, w) logits as numpy."""
    cfg = model.cfg
    rng = rng or np.random.default_rng(0)
    items = [inp.item(j) for j in range(inp.image.shape[0])]
    plans = [mask_plan(it, cfg, mask_ratio, strategy, threshold, background_index, rng) for it in items]
    feed = {k: None if v is None else torch.from_numpy(v).to(device) for k, v in graph_inputs(items, plans).items()}
    with torch.no_grad():
        logits = model(feed["image"], feed["label_planes"], feed["ids_keep"], feed["ids_mask"], feed["ids_restore"],
                       feed["prior"])
    return logits.float().cpu().numpy()


def evaluate(model: LMAE, valset: ValSet, mask_ratio: float, settings: CompletionSettings, device: str = "cpu",
             batch_size: int = 16) -> dict:
    """Complete the val partial labels the way the runtime does (Background-First plans,
    ``settings``' finishing rule); pooled metrics."""
    meter = CompletionMeter(model.cfg.num_classes)
    model.eval()
    rng = np.random.default_rng(0)
    for gts, partials, inp, propagated in valset.batches(batch_size):
        logits = routed_logits(model, inp, mask_ratio, "background_first", settings.unknown_threshold,
                               settings.background_index, device, rng)
        for j, (gt, partial) in enumerate(zip(gts, partials)):
            meter.update(finish(logits[j], partial, settings, propagated[j])[0], gt, partial)
    return meter.summary(settings.class_names)


def _paths(out: str) -> dict[str, Path]:
    p = Path(out)
    stem = p.with_suffix("")
    return {"best": p, "last": Path(f"{stem}.last.pt"), "csv": Path(f"{stem}.log.csv"),
            "json": Path(f"{stem}.log.json")}


def train(tc: TrainConfig) -> Path:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not _is_dist():
        dist.init_process_group("nccl" if tc.device.startswith("cuda") else "gloo")
    rank = _rank()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    import cv2

    cv2.setNumThreads(1)  # OpenCV's own pool oversubscribes small CPUs next to torch
    torch.manual_seed(tc.seed)
    device = tc.device
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"

    # the checkpoints this run reads are checked before any data is read
    init_state = load_checkpoint(tc.init_from)["state_dict"] if tc.init_from else None
    src_ck = load_checkpoint(tc.boundaries_from) if tc.boundaries_from else None
    info = load_dataset(tc.data, ("train", "val"), tc.layout)
    train_pairs, val_pairs = info.pairs["train"], info.pairs["val"]
    if tc.max_train_items:
        train_pairs = train_pairs[: tc.max_train_items]
    if tc.val_limit:
        val_pairs = val_pairs[: tc.val_limit]
    n = info.num_classes
    train_data = load_pairs(train_pairs, n)
    val_data = load_pairs(val_pairs, n)
    overrides, boundary_entry, train_maps, val_maps = dict(tc.model_overrides), None, None, None
    if src_ck is not None:
        boundaries = boundaries_from_checkpoint(src_ck, source=tc.boundaries_from)
        if boundaries is None:
            raise ValueError(f"{tc.boundaries_from}: no boundary net in this checkpoint (lmae fit-boundaries)")
        boundary_entry = src_ck["boundary_net"]
        step_cost = ("geodesic_edge_weight", "geodesic_boundary_weight", "geodesic_boundary_power")  # as fitted
        overrides.update({k: src_ck["config"][k] for k in step_cost if k in src_ck["config"]})  # power: since s9
        train_maps = boundary_maps(boundaries, [img for img, _ in train_data])
        val_maps = boundary_maps(boundaries, [img for img, _ in val_data])
    cfg = make_config(tc.preset, n, img_size=tuple(tc.image_size), **overrides)
    model = LMAE(cfg).to(device)
    if init_state is not None:
        own = model.state_dict()
        take = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(take, strict=False)
        if rank == 0:
            print(f"warm start from {tc.init_from}: {len(take)}/{len(own)} tensors", flush=True)
    spec = SampleSpec(mask_ratios=tuple(tc.mask_ratios), holes=tc.holes, label_resize=tc.label_resize,
                      mask_mix=tc.mask_mix, hole_mix=tc.hole_mix,
                      threshold=tc.threshold, background_index=info.background_index, gaps=tc.gap_weight > 0)
    contexts = None if not tc.context_labels else read_contexts(Path(tc.context_labels), train_pairs, train_data)
    trainset = CompletionTrainSet(train_data, cfg, spec, tc.batch_size, tc.seed, world, train_maps, contexts)
    loader, sampler = train_loader(trainset, tc.batch_size, tc.workers, world)
    eval_ratio = float(np.median(tc.mask_ratios))
    val_bg = ValSet(val_data, cfg, "background", eval_ratio, tc.label_resize, background_index=info.background_index,
                    boundary_maps=val_maps)
    val_rand = ValSet(val_data, cfg, "random", eval_ratio, tc.label_resize, boundary_maps=val_maps)
    # whole objects removed: what propagation cannot recover
    val_obj = ValSet(val_data, cfg, "objects", 0.5, tc.label_resize, boundary_maps=val_maps)

    cw = None
    if tc.class_weighting:
        cw = torch.from_numpy(class_weights(class_frequencies([lab for _, lab in train_data], n))).to(device)

    steps_per_epoch = max(len(loader), 1)
    total_steps = steps_per_epoch * tc.epochs
    t0 = time.time()  # the run's start (the time budget's); a resumed run counts its earlier epochs' time

    def stop_time() -> float | None:
        """When the run stops: the end of its time budget or ``stop_at``, the earlier."""
        ends = ([t0 + 60 * tc.time_budget_min] if tc.time_budget_min else []) + ([tc.stop_at] if tc.stop_at else [])
        return min(ends) if ends else None

    def out_of_time_now() -> bool:
        end = stop_time()
        return end is not None and time.time() >= end
    if tc.amp not in ("none", "bf16"):
        raise ValueError(f"amp must be 'none' or 'bf16', got {tc.amp!r}")
    if tc.optimizer == "adam-plateau":
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=5, threshold=1e-3,
                                                             factor=0.8)
        step_sched = None
    elif tc.optimizer == "adamw-cosine":
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=0.05)
        warm = max(int(tc.warmup_epochs * steps_per_epoch), 1)

        def lr_factor(s: int) -> float:
            progress = min(s, total_steps) / total_steps
            end = stop_time()
            if end is not None:  # a time-boxed run decays by the end of its budget
                progress = max(progress, min(1.0, (time.time() - t0) / max(end - t0, 1e-3)))
            return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * progress))

        step_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        plateau = None
    else:
        raise ValueError(f"unknown optimizer {tc.optimizer!r}")

    paths = _paths(tc.out)
    start_epoch, best, history = 0, -1.0, []
    if tc.resume and paths["last"].is_file():
        last = load_checkpoint(paths["last"])
        model.load_state_dict(last["state_dict"])
        opt.load_state_dict(last["train_state"]["optimizer"])
        if step_sched is not None:
            step_sched.load_state_dict(last["train_state"]["scheduler"])
        if plateau is not None:
            plateau.load_state_dict(last["train_state"]["scheduler"])
        start_epoch = int(last["train_state"]["epoch"]) + 1
        best = float(last["train_state"]["best"])
        history = json.loads(last["train_state"]["history"])
        t0 = time.time() - float(history[-1]["elapsed_s"]) if history else t0
        if rank == 0:
            print(f"resumed from {paths['last']} at epoch {start_epoch}", flush=True)

    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device == "cpu" else [device])
    if rank == 0:
        print(f"L-MAE {cfg.preset}: {count_parameters(model) / 1e6:.2f}M params, L={cfg.num_patches}, "
              f"K={[cfg.num_visible(m) for m in tc.mask_ratios]}, {len(train_data)} train / {len(val_data)} val, "
              f"{steps_per_epoch} steps/epoch x {tc.epochs} epochs, world={world}", flush=True)

    if tc.amp == "bf16":  # before the run relies on it: a wrong bf16 kernel would be learned around
        probe = {k: v.to(device) for k, v in collate([trainset[i] for i in range(min(4, len(trainset)))]).items()}
        err = check_bf16_autocast(model, lambda: model(probe["image"], probe["label_planes"], probe["ids_keep"],
                                                       probe["ids_mask"], probe["ids_restore"], probe.get("prior")),
                                  "lmae train --amp bf16", device.split(":")[0],
                                  loss=lambda logits: training_loss(logits, probe, cw, tc.visible_weight,
                                                                    tc.gap_weight))
        if rank == 0:
            print(f"bf16 autocast checked (outputs and gradients): largest layer error {err:.4f} (relative, against "
                  f"float32)", flush=True)
    args_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(tc).items()}
    ck_kw = dict(class_names=info.class_names, palette=info.palette, mask_ratios=list(tc.mask_ratios),
                 label_resize=tc.label_resize, unknown_threshold=tc.threshold, train_args=args_dict,
                 background_index=info.background_index)
    extra = {"boundary_net": boundary_entry} if boundary_entry else {}
    metrics: dict = {}

    def validate(row: dict) -> dict:
        """Score the model on val into its epoch's ``row``; keep it as the best checkpoint when it is."""
        nonlocal best
        settings = CompletionSettings(info.class_names, label_resize=tc.label_resize,
                                      unknown_threshold=tc.threshold, background_index=info.background_index)
        m_bg, m_rand, m_obj = (evaluate(model, v, eval_ratio, settings, device) for v in (val_bg, val_rand, val_obj))
        row.update({"val_pa_miou_background": m_bg["pa_miou"], "val_global_miou_background": m_bg["global_miou"],
                    "val_pa_miou_random": m_rand["pa_miou"], "val_global_miou_random": m_rand["global_miou"],
                    "val_pa_acc_random": m_rand["pa_pixel_acc"], "val_pa_miou_objects": m_obj["pa_miou"]})
        # the best checkpoint serves both kinds of hole (as lmae calibrate's objective)
        score = (m_rand["pa_miou"] + m_obj["pa_miou"]) / 2
        if plateau is not None:
            plateau.step(score)
        metrics = {"epoch": row["epoch"], "val_random": m_rand, "val_background": m_bg, "val_objects": m_obj}
        if score > best:
            best = score
            save_checkpoint({**make_checkpoint(model, metrics=metrics, **ck_kw), **extra}, paths["best"])
        print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  val PA-mIoU random {m_rand['pa_miou']:.2f} "
              f"(acc {m_rand['pa_pixel_acc']:.1f})  background-first {m_bg['pa_miou']:.2f}  "
              f"objects {m_obj['pa_miou']:.2f}  "
              f"global {m_rand['global_miou']:.2f}  [{row['epoch_s']:.0f}s, {row['elapsed_s'] / 60:.1f} min]",
              flush=True)
        return metrics

    for epoch in range(start_epoch, tc.epochs):
        trainset.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        losses = []
        te = time.time()
        it = loader
        if tc.progress and rank == 0:
            from tqdm import tqdm

            it = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, mininterval=5)
        for batch in it:
            if world == 1 and out_of_time_now():
                break  # the budget ends inside an epoch: validate and save what there is
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=tc.amp == "bf16"):
                logits = ddp_model(batch["image"], batch["label_planes"], batch["ids_keep"], batch["ids_mask"],
                                   batch["ids_restore"], batch.get("prior"))
            loss = training_loss(logits, batch, cw, tc.visible_weight, tc.gap_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step_sched is not None:
                step_sched.step()
            losses.append(float(loss.detach()))
        if not losses and (epoch > start_epoch or history) and out_of_time_now():
            # the budget ended between epochs (or before a resumed run's first): nothing new to train; the
            # last epoch is scored if it was not
            if rank == 0 and history and "val_pa_miou_random" not in history[-1]:
                metrics = validate(history[-1])
                _write_logs(history, paths)
            if rank == 0:
                print(f"time budget reached after epoch {epoch} ({(time.time() - t0) / 60:.1f} min)", flush=True)
            break
        row = {"epoch": epoch + 1, "steps": len(losses),
               "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "lr": opt.param_groups[0]["lr"], "epoch_s": time.time() - te, "elapsed_s": time.time() - t0}
        out_of_time = out_of_time_now()
        do_val = ((epoch + 1) % tc.val_every == 0) or epoch + 1 == tc.epochs or out_of_time
        if rank == 0 and do_val:
            metrics = validate(row)
            history.append(row)
        elif rank == 0:
            history.append(row)
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f} [{row['epoch_s']:.0f}s]", flush=True)
        if rank == 0:  # every epoch: a killed run resumes from here (--resume)
            last = {**make_checkpoint(model, metrics=metrics, **ck_kw), **extra}
            last["train_state"] = {"optimizer": opt.state_dict(), "scheduler": (step_sched or plateau).state_dict(),
                                   "epoch": epoch, "best": best, "history": json.dumps(history)}
            save_checkpoint(last, paths["last"])
            _write_logs(history, paths)
        if out_of_time:
            if rank == 0:
                print(f"time budget reached after epoch {epoch + 1} ({(time.time() - t0) / 60:.1f} min)", flush=True)
            break
    if _is_dist():
        dist.barrier()
        dist.destroy_process_group()
    return paths["best"]


def _write_logs(history: list[dict], paths: dict[str, Path]) -> None:
    from lmae_sdk.labels import atomic_write_bytes

    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    atomic_write_bytes(paths["json"], json.dumps(history, indent=1).encode())
