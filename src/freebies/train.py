"""Image classification on the run engine: `build` makes the task, `train_step` is its step.

The step, in order: augment -> soft targets -> forward and loss (with distillation) ->
backward and optimizer step -> LR schedule step, lookahead and EMA. Every trick is called in
`train_step`; there are no hooks. The run folder, checkpoints, resume and Ctrl-C belong to
`freebies.engine`, shared with detection.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from freebies import checkpoint, engine, runtime
from freebies.build import base_lr, build_model, make_lookahead, make_optimizer, make_scheduler
from freebies.config import Config, DetCfg, mixers
from freebies.data.loader import (
    alternating_flip,
    channel_stats,
    normalize,
    random_crop,
    random_flip,
    sample_images,
    train_batches,
)
from freebies.data.splits import Splits, prepare
from freebies.deploy import count_macs, load_model, plain_fused
from freebies.distributed import Dist
from freebies.errors import UsageError
from freebies.evaluate import evaluate
from freebies.runtime import autocast_for, param_dtype
from freebies.tricks import (
    autoaugment,
    color_jitter,
    cutmix,
    cutout,
    ema_model,
    kd_loss,
    make_policy,
    mixup,
    one_hot,
    pca_basis,
    pca_lighting,
    pick_mixer,
    random_erasing,
    random_rotate,
    ricap,
    smooth_targets,
)

MIXERS: dict[str, Callable] = {"mixup": mixup, "cutmix": cutmix, "ricap": ricap}

# The detection tricks (det.*), which only `freebies detect train` reads.
DETECTION_ONLY = (
    "mixup",
    "label_smoothing",
    "hflip",
    "expand",
    "crop",
    "color_jitter",
    "random_shapes",
)


@dataclass
class Step:
    """Everything the classification step reads; `build` makes it once per run."""

    cfg: Config
    net: nn.Module  # the unwrapped network (the EMA averages it)
    model: nn.Module  # what runs forward: `net`, or its DDP / compiled wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # this rank's augmentation stream
    mean: torch.Tensor  # (C,) per-channel mean of the training images, pixel units
    std: torch.Tensor  # (C,)
    num_classes: int
    steps_per_epoch: int
    ema: Any = None  # AveragedModel, when ema.decay > 0
    lookahead: Any = None  # (optimizer, step) -> None, when optim.lookahead_every > 0
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    loss_dtype: torch.dtype = torch.float32  # logits and targets meet in this dtype
    policy: nn.Module | None = None  # AutoAugment / RandAugment / TrivialAugment
    pca: tuple[Any, Any] = (None, None)  # PCA lighting basis (eigvals, eigvecs)
    first_flips: torch.Tensor | None = None  # alternating flip: (dataset size,) bool
    erase_fill: Any = "random"  # Random Erasing fill, in normalised units
    teacher: nn.Module | None = None  # distillation teacher, eval mode, no grad
    t_scale: Any = 1.0  # student inputs -> teacher inputs: x * t_scale + t_shift
    t_shift: Any = 0.0
    mixers: dict[str, Callable] = field(default_factory=lambda: dict(MIXERS))


def train_step(s: Step, batch: tuple[torch.Tensor, ...], epoch: int, step: int) -> torch.Tensor:
    """One training step on batch (indices (N,), uint8 images (N, C, H, W), labels (N,)).

    Returns the detached loss (a 0-d tensor on the device; no host sync).
    """
    idx, xb, yb = batch
    aug = s.cfg.aug
    # 1. augment (uint8, batched, each image its own draw), then normalise
    xb = random_crop(xb, aug.crop_padding, s.gen)
    if aug.hflip and aug.flip_mode == "alternate":
        xb = alternating_flip(xb, idx, epoch, s.first_flips)
    elif aug.hflip:
        xb = random_flip(xb, s.gen)
    if aug.vflip:
        xb = random_flip(xb, s.gen, dim=2)
    xb = autoaugment(xb, s.policy, s.gen)
    if aug.rotate or aug.color_jitter or aug.pca_lighting:
        xb = xb.float()  # pixel units 0..255; black outside a rotated image
        xb = random_rotate(xb, aug.rotate, s.gen)
        xb = color_jitter(xb, aug.color_jitter, s.gen)
        xb = pca_lighting(xb, aug.pca_lighting, *s.pca, s.gen)
    xb = normalize(xb, s.mean, s.std, s.cfg.train.channels_last)
    # 2. erase after normalisation, so a zero fill is the dataset mean
    if aug.cutout:
        xb = cutout(xb, aug.cutout, aug.cutout_holes, s.gen)
    if aug.random_erasing:
        scale, ratio = aug.erasing_scale, aug.erasing_ratio
        xb = random_erasing(xb, aug.random_erasing, scale, ratio, s.erase_fill, s.gen)
    # 3. soft targets: mix at most one way, then smooth once, on the final targets
    target = one_hot(yb, s.num_classes).to(s.loss_dtype)
    mixer = pick_mixer(
        mixers(aug) if epoch < s.cfg.train.epochs - aug.mix_off_epochs else [],
        prob=aug.mix_prob,
        mode=aug.mix_mode,
        weights=aug.switch_prob,
        step=epoch * s.steps_per_epoch + step,
        generator=s.gen,
    )
    if mixer is not None:
        xb, target = s.mixers[mixer](xb, target, getattr(aug, mixer), s.gen)
    target = smooth_targets(target, s.cfg.loss.label_smoothing)
    # 4. forward and loss; the teacher sees the same (mixed, erased) batch, in its own units
    with s.autocast:
        logits = s.model(xb)
    if s.teacher is None:
        loss = F.cross_entropy(logits.to(s.loss_dtype), target)
    else:
        with torch.no_grad(), s.autocast:
            t_logits = s.teacher(xb * s.t_scale + s.t_shift)
        d = s.cfg.distill
        loss = kd_loss(
            logits.to(s.loss_dtype), t_logits.to(s.loss_dtype), target, d.alpha, d.temperature
        )
    # 5. backward, optimizer step, LR schedule step, lookahead, EMA
    engine.update(loss, s.opt, s.sched, s.ema, s.net, s.lookahead)
    return loss.detach()


def load_teacher(
    cfg: Config, classes: list[str], shape: Any, mean: torch.Tensor, std: torch.Tensor
) -> tuple[nn.Module | None, Any, Any]:
    """The distillation teacher (eval mode, no grad) and the affine map from the student's
    normalised inputs to the teacher's: x_teacher = x * scale + shift, per channel."""
    if cfg.distill.teacher is None:
        return None, 1.0, 0.0
    ckpt = checkpoint.load(Path(cfg.distill.teacher), "classify")
    t_classes, t_shape = ckpt.data["classes"], ckpt.data["shape"]
    if len(t_classes) != len(classes):
        raise UsageError(
            f"distill.teacher {cfg.distill.teacher} predicts {len(t_classes)} classes but the "
            f"data have {len(classes)}; use a teacher trained on the same classes"
        )
    if list(t_shape) != list(shape):
        raise UsageError(
            f"distill.teacher {cfg.distill.teacher} takes {t_shape} images but the data are "
            f"{list(shape)}; use a teacher trained on the same image size and channels"
        )
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    teacher = load_model(ckpt).to(mean.device, mean.dtype, memory_format=fmt)
    t_mean = ckpt.data["mean"].to(mean.device, mean.dtype)
    t_std = ckpt.data["std"].to(mean.device, mean.dtype)
    scale = (std / t_std)[None, :, None, None]
    shift = ((mean - t_mean) / t_std)[None, :, None, None]
    return teacher.requires_grad_(False), scale, shift


def infer_macs(cfg: Config, num_classes: int, shape: tuple[int, ...]) -> int:
    """MACs per image of the model as deployed (ACNet fused, conv+BN folded; TTA views counted)."""
    model = plain_fused(cfg, num_classes, shape[0])
    views = (2 if cfg.train.tta else 1) * (3 if cfg.train.tta_shift else 1)
    return count_macs(model, torch.zeros(1, *shape)) * views


def load_data(cfg: Config) -> Splits:
    """The splits, checked against the batch size and TTA shift."""
    data = prepare(cfg.data)
    n_train, batch = len(data.train_x), cfg.train.batch_size
    if batch > n_train:
        raise UsageError(
            f"train.batch_size={batch} is larger than the training set "
            f"({n_train} images); lower --batch-size"
        )
    if cfg.train.tta_shift >= min(data.train_x.shape[2:]):
        raise UsageError(
            f"train.tta_shift={cfg.train.tta_shift} must be smaller than the images "
            f"({'x'.join(map(str, data.train_x.shape[2:]))}); use 1 or 2"
        )
    engine.check_early_stop(cfg.train.early_stop_patience, data.val_x is not None)
    return data


def check_no_detection_tricks(cfg: Config) -> None:
    """Refuse det.* tricks: a classifier would train without them (`freebies detect train`
    reads them)."""
    default = DetCfg()
    on = [f"det.{k}" for k in DETECTION_ONLY if getattr(cfg.det, k) != getattr(default, k)]
    if on:
        fix = " ".join(f"{k}={getattr(default, k.removeprefix('det.'))}" for k in on)
        raise UsageError(
            f"{', '.join(on)}: detection tricks that classification does not use; train a "
            f"detector with `freebies detect train`, or set {fix}"
        )


def build(cfg: Config, d: Dist, recorded_precision: list[str] | None = None) -> engine.Task:
    """The classification task for the engine: data on the device, model, optimizer, schedule,
    the step's tricks, and evaluation."""
    check_no_detection_tricks(cfg)
    data, dev, dtype = load_data(cfg), d.device, param_dtype(cfg.train.precision)
    fingerprint, shape = data.fingerprint, list(data.train_x.shape[1:])
    mean, std = channel_stats(data.train_x)  # pixel units, from the training images
    mean, std = mean.to(dev, dtype), std.to(dev, dtype)
    data = data.to(dev)  # once: in-memory images and all labels live on the device
    n_train, batch, num_classes = len(data.train_x), cfg.train.batch_size, len(data.classes)

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    net = build_model(cfg, num_classes, shape[0]).to(dev, dtype)
    if hasattr(net, "init_from_data"):  # e.g. AirNet's frozen patch whitening
        net.init_from_data(normalize(sample_images(data.train_x, 10_000).to(dev), mean, std))
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    per_rank = batch // d.world
    precision = engine.decide_precision(
        cfg,
        d,
        recorded_precision,
        probe=lambda: bf16_step_speedup(net, (per_rank, *shape), num_classes, fmt),
        key=f"{cfg.model.name}, batch {per_rank}x{'x'.join(map(str, shape))}, {fmt}",
    )
    steps_per_epoch, lr = n_train // batch, base_lr(cfg)
    opt = make_optimizer(net, cfg, lr)
    s = Step(
        cfg=cfg,
        net=net,
        model=net,
        opt=opt,
        sched=make_scheduler(opt, cfg, lr, steps_per_epoch),
        lookahead=make_lookahead(cfg, steps_per_epoch),
        gen=torch.Generator(dev).manual_seed(cfg.train.seed + 1_000_003 * d.rank),
        mean=mean,
        std=std,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        autocast=autocast_for(precision[0], dev),
        loss_dtype=torch.promote_types(dtype, torch.float32),
        policy=make_policy(cfg.aug.autoaugment),
        # Random Erasing's "zero" fill is black, i.e. (0 - mean) / std in normalised units.
        erase_fill=-mean / std if cfg.aug.erasing_value == "zero" else cfg.aug.erasing_value,
    )
    if cfg.aug.flip_mode == "alternate":  # which images flip in even epochs, same on every rank
        draw = torch.rand(n_train, generator=torch.Generator().manual_seed(cfg.train.seed))
        s.first_flips = (draw < 0.5).to(dev)
    if cfg.aug.pca_lighting:
        s.pca = tuple(t.to(dev) for t in pca_basis(sample_images(data.train_x, 10_000)))
    s.teacher, s.t_scale, s.t_shift = load_teacher(cfg, data.classes, shape, mean, std)
    # The global RNG (dropout) gets its own stream per rank, after everything that builds models.
    torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank + 1)
    s.ema = ema_model(net, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.decay else None
    s.model = engine.wrap(net, d, cfg.train.compile)
    return engine.Task(
        name="classify",
        net=net,
        opt=opt,
        sched=s.sched,
        ema=s.ema,
        gen=s.gen,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch,
        batches=lambda epoch, first: train_batches(
            data.train_x,
            data.train_y,
            batch,
            seed=cfg.train.seed,
            epoch=epoch,
            rank=d.rank,
            world=d.world,
            start_step=first,
            workers=cfg.data.workers,
        ),
        step=lambda b, epoch, i: train_step(s, b, epoch, i),
        evaluate=lambda final: eval_row(s, data, d, tta=final and cfg.train.tta),
        summary=summary_keys,
        infer_macs=lambda: infer_macs(cfg, num_classes, tuple(shape)),
        data={
            "fingerprint": fingerprint,
            "classes": data.classes,
            "mean": mean.float().cpu(),
            "std": std.float().cpu(),
            "shape": shape,
        },
        precision=precision,
    )


def bf16_step_speedup(
    net: nn.Module, shape: tuple[int, ...], num_classes: int, fmt: torch.memory_format
) -> float:
    """How much faster bf16 autocast runs a training step (forward, backward, SGD step) of a
    copy of `net` on a random batch of `shape` than fp32 (`runtime.bf16_speedup`)."""
    model = copy.deepcopy(net).train()
    dev = next(model.parameters()).device
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # timing only: the copy never changes
    x = torch.randn(shape, device=dev).to(memory_format=fmt)
    y = torch.randint(num_classes, shape[:1], device=dev)

    def step(bf16: bool) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return runtime.bf16_speedup(step)


def eval_row(s: Step, data: Splits, d: Dist, tta: bool) -> dict[str, float]:
    """Validation (when split off) and test columns of a metrics row; scores the EMA weights
    when EMA is on."""
    cfg = s.cfg
    kw = dict(
        batch_size=cfg.train.eval_batch_size,
        tta=tta,
        tta_shift=cfg.train.tta_shift if tta else 0,
        autocast=s.autocast,
        channels_last=cfg.train.channels_last,
        rank=d.rank,
        world=d.world,
        workers=cfg.data.workers,
    )
    model = s.ema.module if s.ema is not None else s.model
    row = {}
    if data.val_x is not None:
        val = evaluate(model, data.val_x, data.val_y, s.mean, s.std, **kw)
        row.update(val_loss=val["nll"], val_acc=val["acc"], val_ece=val["ece"])
    test = evaluate(model, data.test_x, data.test_y, s.mean, s.std, **kw)
    row.update(test_loss=test["nll"], test_acc=test["acc"], test_ece=test["ece"])
    return row


def summary_keys(final: dict[str, Any]) -> dict[str, Any]:
    """The headline keys of summary.json, from the last metrics row."""
    return {
        "test_acc": final["test_acc"],
        "test_nll": final["test_loss"],
        "test_ece": final["test_ece"],
        **(
            {"val_acc": final["val_acc"], "val_nll": final["val_loss"], "val_ece": final["val_ece"]}
            if "val_acc" in final
            else {}
        ),
    }


def run(
    cfg: Config,
    out: Path,
    *,
    recipe: str = "custom",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train `cfg` into run folder `out`; returns the summary (also written to summary.json)."""
    return engine.run(
        cfg, out, build, recipe=recipe, resume=resume, overwrite=overwrite, progress=progress
    )
