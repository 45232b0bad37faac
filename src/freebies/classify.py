"""Image classification on the run engine: `build` makes the task, `train_step` is its step;
`train`, `evaluate_checkpoint` and `fuse_checkpoint` are what `freebies train | eval | fuse` run.

The step, in order: augment -> soft targets -> forward and loss (with distillation); the engine
then does backward, the optimizer step, the LR schedule step, lookahead and EMA. Every trick is
called in `train_step`; there are no hooks. The run folder, checkpoints, resume and Ctrl-C
belong to `freebies.engine`, shared with detection.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from freebies import catalog, checkpoint, config, engine, runtime
from freebies.build import Training, build_model, make_training, shuffled_batches
from freebies.config import ClassifyConfig
from freebies.data.loader import (
    channel_stats,
    eval_batches,
    normalize,
    sample_images,
    to_device,
)
from freebies.data.splits import Splits, prepare
from freebies.deploy import (
    EXPORTS,
    count_macs,
    fuse_and_check,
    load_model,
    onnx_runner,
    plain_fused,
    report_table,
)
from freebies.deploy import export as export_model
from freebies.distributed import Dist, pick_device
from freebies.errors import UsageError
from freebies.evaluate import evaluate
from freebies.runtime import autocast_for, param_dtype
from freebies.tricks import autoaugment, kd_loss, one_hot, pca_basis, pick_mixer, smooth_targets
from freebies.tricks.geometric import alternating_flip, random_flip
from freebies.tricks.mixing import MIXERS


@dataclass
class Step:
    """Everything the classification step reads; `build` makes it once per run."""

    cfg: ClassifyConfig
    model: nn.Module  # what runs forward: the network, or its DDP / compiled wrapper
    gen: torch.Generator  # this rank's augmentation stream
    mean: torch.Tensor  # (C,) per-channel mean of the training images, pixel units
    std: torch.Tensor  # (C,)
    num_classes: int
    steps_per_epoch: int
    ema: Any = None  # AveragedModel, when ema.decay > 0: evaluation scores it
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    loss_dtype: torch.dtype = torch.float32  # logits and targets meet in this dtype
    pca: tuple[Any, Any] = (None, None)  # PCA lighting basis (eigvals, eigvecs)
    first_flips: torch.Tensor | None = None  # alternating flip: (dataset size,) bool
    erase_fill: Any = "random"  # Random Erasing fill, in normalised units
    teacher: nn.Module | None = None  # distillation teacher, eval mode, no grad
    t_scale: Any = 1.0  # student inputs -> teacher inputs: x * t_scale + t_shift
    t_shift: Any = 0.0
    # The aug.* tricks that are on, built by their records (freebies.catalog); None when off.
    crop: Callable | None = None  # (x, generator) -> x
    vflip: Callable | None = None  # (x, generator) -> x
    policy: nn.Module | None = None  # AutoAugment / RandAugment / TrivialAugment
    rotate: Callable | None = None  # (x, generator) -> x
    jitter: Callable | None = None  # (x, generator) -> x
    lighting: Callable | None = None  # (x, eigval, eigvec, generator) -> x
    cutout: Callable | None = None  # (x, generator) -> x
    erasing: Callable | None = None  # (x, value, generator) -> x
    mixers: dict[str, Callable] = field(default_factory=dict)  # name -> (x, y, generator)


def train_step(
    s: Step, batch: tuple[torch.Tensor, ...], epoch: int, step: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training step on batch (indices (N,), uint8 images (N, C, H, W), labels (N,)).

    Returns the loss to minimise (a 0-d tensor on the device; no host sync) and no parts.
    """
    idx, xb, yb = batch
    aug, g = s.cfg.aug, s.gen
    # 1. augment (uint8, batched, each image its own draw), then normalise
    xb = s.crop(xb, generator=g) if s.crop else xb
    if aug.hflip and aug.flip_mode == "alternate":
        xb = alternating_flip(xb, idx, epoch, s.first_flips)
    elif aug.hflip:
        xb = random_flip(xb, g)
    xb = s.vflip(xb, generator=g) if s.vflip else xb
    xb = autoaugment(xb, s.policy, g)
    if s.rotate or s.jitter or s.lighting:
        xb = xb.float()  # pixel units 0..255; black outside a rotated image
        xb = s.rotate(xb, generator=g) if s.rotate else xb
        xb = s.jitter(xb, generator=g) if s.jitter else xb
        xb = s.lighting(xb, eigval=s.pca[0], eigvec=s.pca[1], generator=g) if s.lighting else xb
    xb = normalize(xb, s.mean, s.std, s.cfg.train.channels_last)
    # 2. erase after normalisation, so a zero fill is the dataset mean
    xb = s.cutout(xb, generator=g) if s.cutout else xb
    xb = s.erasing(xb, value=s.erase_fill, generator=g) if s.erasing else xb
    # 3. soft targets: mix at most one way, then smooth once, on the final targets
    target = one_hot(yb, s.num_classes).to(s.loss_dtype)
    mixer = pick_mixer(
        list(s.mixers) if epoch < s.cfg.train.epochs - aug.mix_off_epochs else [],
        prob=aug.mix_prob,
        mode=aug.mix_mode,
        weights=aug.switch_prob,
        step=epoch * s.steps_per_epoch + step,
        generator=g,
    )
    if mixer is not None:
        xb, target = s.mixers[mixer](xb, target, generator=g)
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
    return loss, []


def load_teacher(
    cfg: ClassifyConfig, classes: list[str], shape: Any, mean: torch.Tensor, std: torch.Tensor
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


def infer_macs(cfg: ClassifyConfig, num_classes: int, shape: tuple[int, ...]) -> int:
    """MACs per image of the model as deployed (ACNet fused, conv+BN folded; TTA views counted)."""
    model = plain_fused(cfg, num_classes, shape[0])
    views = (2 if cfg.train.tta else 1) * (3 if cfg.train.tta_shift else 1)
    return count_macs(model, torch.zeros(1, *shape)) * views


def train_size(cfg: ClassifyConfig) -> int:
    """How many training images the recipe's data hold (after its split and limits)."""
    return len(prepare(cfg.data).train_x)


def load_data(cfg: ClassifyConfig) -> Splits:
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


def build(cfg: ClassifyConfig, d: Dist, recorded_precision: list[str] | None = None) -> engine.Task:
    """The classification task for the engine: data on the device, model and what trains it,
    the step's tricks, and evaluation."""
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
    # The teacher is a model too: built before make_training seeds the per-rank RNG streams.
    teacher = load_teacher(cfg, data.classes, shape, mean, std)
    steps_per_epoch = n_train // batch
    t = make_training(cfg, net, d, steps_per_epoch)
    s = make_step(cfg, t, data, mean, std, steps_per_epoch, precision[0])
    s.teacher, s.t_scale, s.t_shift = teacher
    return engine.Task(
        name="classify",
        training=t,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch,
        batches=shuffled_batches(data.train_x, data.train_y, cfg, d, cfg.data.workers),
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


STEP_FIELDS = {  # trick -> the Step field its built callable goes in
    "crop_flip": "crop",
    "vflip": "vflip",
    "autoaugment": "policy",
    "rotate": "rotate",
    "color_jitter": "jitter",
    "pca_lighting": "lighting",
    "cutout": "cutout",
    "random_erasing": "erasing",
}


def make_step(
    cfg: ClassifyConfig,
    t: Training,
    data: Splits,
    mean: torch.Tensor,
    std: torch.Tensor,
    steps_per_epoch: int,
    precision: str,
) -> Step:
    """What `train_step` reads: the recipe's tricks, built once for the run."""
    dev, n_train = mean.device, len(data.train_x)
    flat = config.flatten(config.to_dict(cfg))
    s = Step(
        cfg=cfg,
        model=t.model,
        gen=t.gen,
        mean=mean,
        std=std,
        num_classes=len(data.classes),
        steps_per_epoch=steps_per_epoch,
        ema=t.ema,
        autocast=autocast_for(precision, dev),
        loss_dtype=torch.promote_types(mean.dtype, torch.float32),
        # Random Erasing's "zero" fill is black, i.e. (0 - mean) / std in normalised units.
        erase_fill=-mean / std if cfg.aug.erasing_value == "zero" else cfg.aug.erasing_value,
        **catalog.built("classify", flat, STEP_FIELDS),
        mixers=catalog.built("classify", flat, {name: name for name in MIXERS}),
    )
    if cfg.aug.flip_mode == "alternate":  # which images flip in even epochs, same on every rank
        draw = torch.rand(n_train, generator=torch.Generator().manual_seed(cfg.train.seed))
        s.first_flips = (draw < 0.5).to(dev)
    if cfg.aug.pca_lighting:
        s.pca = tuple(x.to(dev) for x in pca_basis(sample_images(data.train_x, 10_000)))
    return s


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


# Train a classifier (`freebies train`): train(recipe, overrides, out, *, resume=None,
# overwrite=False, progress=None) -> (summary, run folder); see engine.train.
train = partial(engine.train, "classify", build, "default")


def headline(summary: dict[str, Any]) -> str:
    """The final figure of a run, for its last line."""
    return f"test accuracy {summary['test_acc']:.2f}%"


def run(
    cfg: ClassifyConfig,
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


def _test_data(ckpt: checkpoint.Checkpoint, spec: str | None, limit: int | None) -> Splits:
    """The checkpoint's test set (or `spec`'s), checked against what the model expects."""
    cfg = config.from_dict(ckpt.config, "classify")
    cfg.data.val_split, cfg.data.limit_train, cfg.data.limit_test = 0.0, None, limit
    if spec is not None:
        cfg.data.spec = spec
    data = prepare(cfg.data)
    classes, shape = ckpt.data["classes"], ckpt.data["shape"]
    if len(data.classes) != len(classes) or list(data.test_x.shape[1:]) != shape:
        raise UsageError(
            f"{cfg.data.spec} does not match the checkpoint: it has {len(data.classes)} classes "
            f"of {list(data.test_x.shape[1:])} images, the model expects {len(classes)} of {shape}"
        )
    return data


def evaluate_checkpoint(
    path: Path,
    spec: str | None = None,
    *,
    tta: bool = False,
    limit: int | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """`freebies eval`: test accuracy, NLL and ECE of a checkpoint (trained or fused) on the
    data it was trained on, or on `spec`'s test split."""
    ckpt = checkpoint.load(path, "classify")
    cfg = config.from_dict(ckpt.config, "classify")
    data = _test_data(ckpt, spec, limit)
    dev = pick_device(device)
    model = load_model(ckpt).to(dev)
    # A deploy checkpoint is evaluated in fp32 so its predictions match the unfused model's;
    # a trained one in the precision it trained in.
    precision = ckpt.precision[0] if ckpt.precision else cfg.train.precision
    autocast = contextlib.nullcontext() if ckpt.deploy else autocast_for(precision, dev)
    result = evaluate(
        model,
        to_device(data.test_x, dev),
        data.test_y.to(dev),
        ckpt.data["mean"].to(dev),
        ckpt.data["std"].to(dev),
        batch_size=cfg.train.eval_batch_size,
        tta=tta,
        tta_shift=cfg.train.tta_shift if tta else 0,
        autocast=autocast,
        workers=cfg.data.workers,
        progress=sys.stderr.isatty(),
    )
    return {"test_acc": result["acc"], "test_nll": result["nll"], "test_ece": result["ece"]}


def fuse_checkpoint(
    path: Path,
    output: Path,
    *,
    spec: str | None = None,
    batch: int = 256,
    device: str = "cpu",
    export: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """`freebies fuse`: fold ACNet blocks and conv+BN pairs of a trained classifier into plain
    convs, check the outputs on a test batch, write a deploy checkpoint (and an export).
    Returns the files written."""
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists; pass --overwrite or choose another -o")
    if export == "onnx":
        onnx_runner()  # the export extra is there, before anything is written
    ckpt = checkpoint.load(path, "classify")
    if ckpt.deploy:
        raise UsageError(f"{path} is already a fused deploy checkpoint")
    cfg = config.from_dict(ckpt.config, "classify")
    dev = pick_device(device)
    data = _test_data(ckpt, spec, batch)
    xb, _ = next(eval_batches(data.test_x, data.test_y, batch))
    x = normalize(xb, ckpt.data["mean"], ckpt.data["std"]).to(dev)
    model = load_model(ckpt).to(dev)
    fused, report = fuse_and_check(model, cfg, x, ckpt.num_classes)
    print(report_table(report))
    output.parent.mkdir(parents=True, exist_ok=True)
    if report["acb"] == 0:
        print("no ACNet block found (model.acnet was off); folded the conv+BN pairs only")
    deployed = checkpoint.Checkpoint(
        model={k: v.cpu() for k, v in fused.state_dict().items()},
        config=config.to_dict(cfg),
        data=ckpt.data,
        recipe=ckpt.recipe,
        task=ckpt.task,
        deploy=True,
        fuse_report=report,
    )
    checkpoint.save(deployed, output)
    written = [output]
    if export:
        written.append(output.with_suffix(EXPORTS[export]))
        diff = export_model(fused.to(torch.device("cpu")), x.cpu(), export, written[-1])
        print(f"{written[-1]}: outputs within {diff:.2g} of the model's on {len(x)} test images")
    return written
