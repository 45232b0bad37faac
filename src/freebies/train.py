"""The training loop. Each step, in order: batch -> augment -> soft targets -> model -> loss ->
optimizer step -> LR schedule step. Every trick is called explicitly here; there are no hooks.

A run folder holds config.yaml, metrics.jsonl, summary.json, last.pt and curves.png. The
checkpoint carries the RNG, optimizer, scheduler and loader position, so an interrupted run
resumes bit-identically on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from freebies import checkpoint
from freebies.config import Config, mixers, to_dict
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
from freebies.distributed import Dist, all_sum, any_rank, setup, teardown
from freebies.errors import UsageError
from freebies.evaluate import evaluate
from freebies.models.build import build_model
from freebies.optim import build_optimizer, build_scheduler, scaled_lr
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

SYNC_EVERY = 20  # steps between host syncs (progress bar, NaN check)
MIXERS = {"mixup": mixup, "cutmix": cutmix, "ricap": ricap}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> str:
    """CPU model and core count, for result files (compare figures only on the same machine)."""
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def peak_mem_mb(device: torch.device) -> float:
    """Peak CUDA allocations of this run on a GPU; on a CPU the process's peak RSS (per run
    when each run is its own process, as under `freebies ablate`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**20 if sys.platform == "darwin" else 2**10)


def infer_macs(cfg: Config, num_classes: int, shape: tuple[int, ...]) -> int:
    """MACs per image of the model as deployed (ACNet fused, conv+BN folded; TTA views counted)."""
    model = plain_fused(cfg, num_classes, shape[0])
    views = (2 if cfg.train.tta else 1) * (3 if cfg.train.tta_shift else 1)
    return count_macs(model, torch.zeros(1, *shape)) * views


def autocast_for(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    bf16 = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and device.type == "cuda"
    )
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def load_teacher(
    cfg: Config, classes: list[str], shape: Any, mean: torch.Tensor, std: torch.Tensor
) -> tuple[nn.Module | None, Any, Any]:
    """The distillation teacher (eval mode, no grad) and the affine map from the student's
    normalised inputs to the teacher's: x_teacher = x * scale + shift, per channel."""
    if cfg.distill.teacher is None:
        return None, 1.0, 0.0
    ckpt = checkpoint.load(Path(cfg.distill.teacher))
    t_classes, t_shape = ckpt["data"]["classes"], ckpt["data"]["shape"]
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
    teacher = load_model(ckpt).to(mean.device, memory_format=fmt).requires_grad_(False)
    t_mean, t_std = ckpt["data"]["mean"].to(mean.device), ckpt["data"]["std"].to(mean.device)
    scale = (std / t_std)[None, :, None, None]
    shift = ((mean - t_mean) / t_std)[None, :, None, None]
    return teacher, scale, shift


def early_stop_reason(metrics: list[dict], patience: int) -> str | None:
    """Why to stop early, or None: validation accuracy has not improved for `patience`
    evaluations. Never looks at the test set."""
    vals = [(r["epoch"], r["val_acc"]) for r in metrics if "val_acc" in r]
    if patience <= 0 or not vals:
        return None
    best = max(range(len(vals)), key=lambda i: (vals[i][1], -i))  # the first best
    if len(vals) - 1 - best < patience:
        return None
    return (
        f"early stop: val_acc has not improved for {patience} evaluations "
        f"(best {vals[best][1]:.2f}% at epoch {vals[best][0]})"
    )


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run folder unless asked to resume or overwrite it."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if resume:
        if not (out / "last.pt").is_file():
            raise UsageError(f"--resume {out}: no run there (no last.pt); check the path")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"run folder {out} already exists; pass --resume {out} to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C was honoured: a checkpoint of the run in `out` was saved first."""

    def __init__(self, out: Path) -> None:
        super().__init__(str(out))
        self.out = out


class _StopFlag:
    """Ctrl-C sets a flag; the loop checks it between steps so it never stops mid-update."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        self.set = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C stops at once

    def __exit__(self, *_: Any) -> None:
        if _in_main_thread() and self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _gather_states(gen: torch.Generator, d: Dist) -> list[torch.Tensor]:
    """Every rank's augmentation RNG state, so each resumes its own stream."""
    state = gen.get_state()
    if d.world == 1:
        return [state]
    states: list[Any] = [None] * d.world
    dist.all_gather_object(states, state)
    return states


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
    t_start = time.perf_counter()
    out = Path(out)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    d = setup(cfg.train.device)
    try:
        return _run(cfg, out, d, recipe, resume, overwrite, progress, t_start)
    finally:
        teardown()


def _run(
    cfg: Config,
    out: Path,
    d: Dist,
    recipe: str,
    resume: bool,
    overwrite: bool,
    progress: bool | None,
    t_start: float,
) -> dict[str, Any]:
    if cfg.train.sync_bn and d.device.type != "cuda":
        raise UsageError(
            "train.sync_bn needs CUDA (nn.SyncBatchNorm refuses CPU tensors); "
            "turn it off for CPU runs"
        )
    if cfg.train.batch_size % d.world:
        raise UsageError(
            f"train.batch_size={cfg.train.batch_size} must divide evenly over {d.world} processes"
        )
    if cfg.train.threads > 0 and d.device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)

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
    fingerprint = data.fingerprint
    ckpt = checkpoint.load(out / "last.pt") if resume else None
    if ckpt is not None and ckpt["data"]["fingerprint"] != fingerprint:
        raise UsageError(
            f"--resume {out}: the data differ from the data this run was trained "
            "on; point --data at the same files or start a new run"
        )

    if d.main:
        if overwrite and out.exists() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if d.world > 1:
        dist.barrier()

    # Data lives on the device as uint8; mean/std come from the training images.
    dev = d.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    mean, std = channel_stats(data.train_x)
    mean, std = mean.to(dev), std.to(dev)
    data = data.to(dev)  # once: in-memory images and all labels live on the device
    train_x, train_y = data.train_x, data.train_y
    num_classes, in_channels = len(data.classes), data.train_x.shape[1]

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    net = build_model(cfg, num_classes, in_channels).to(dev)
    if hasattr(net, "init_from_data"):  # e.g. AirNet's frozen patch whitening
        net.init_from_data(normalize(sample_images(data.train_x, 10_000).to(dev), mean, std))
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    steps_per_epoch = n_train // batch
    lr = scaled_lr(cfg.optim, batch)
    opt = build_optimizer(net, cfg.optim, lr)
    sched = build_scheduler(
        opt, cfg.sched, base_lr=lr, steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs
    )
    aug_gen = torch.Generator(dev).manual_seed(cfg.train.seed + 1_000_003 * d.rank)
    # Alternating flip: which images flip in even epochs, the same on every rank.
    first_flips = None
    if cfg.aug.flip_mode == "alternate":
        first_flips = torch.rand(n_train, generator=torch.Generator().manual_seed(cfg.train.seed))
        first_flips = (first_flips < 0.5).to(dev)
    policy = make_policy(cfg.aug.autoaugment)
    pca = pca_basis(sample_images(data.train_x, 10_000)) if cfg.aug.pca_lighting else (None, None)
    if pca[0] is not None:
        pca = (pca[0].to(dev), pca[1].to(dev))
    teacher, t_scale, t_shift = load_teacher(cfg, data.classes, data.train_x.shape[1:], mean, std)
    # The global RNG (dropout) gets its own stream per rank, after everything that builds models.
    torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank + 1)

    ema = ema_model(net, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.decay else None
    start_epoch, start_step, metrics = 0, 0, []
    partial = {"loss_sum": 0.0, "steps": 0, "train_s": 0.0}
    times = {"train_s": 0.0, "wall_s": 0.0}
    if ckpt is not None:
        missing = [k for k in ("optimizer", "scheduler", "rng") if k not in ckpt]
        if missing:
            raise UsageError(
                f"--resume {out}: the checkpoint lacks {', '.join(missing)} state, "
                "so the run cannot continue exactly; start a new run"
            )
        net.load_state_dict(ckpt["model"])
        if ema is not None:
            if "ema" not in ckpt:
                raise UsageError(
                    f"--resume {out}: ema.decay is on but the checkpoint holds no "
                    "EMA weights; resume without EMA or start a new run"
                )
            ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if len(ckpt["rng"]["aug"]) != d.world:
            raise UsageError(
                f"--resume {out}: the run used {len(ckpt['rng']['aug'])} "
                f"processes; resume it with the same number, not {d.world}"
            )
        if ckpt.get("device_type", "cpu") != dev.type:
            raise UsageError(
                f"--resume {out}: the run trained on {ckpt.get('device_type', 'cpu')}; resume it "
                f"there (--device {ckpt.get('device_type', 'cpu')}), its RNG state cannot move "
                f"to {dev.type}"
            )
        aug_gen.set_state(ckpt["rng"]["aug"][d.rank])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, start_step = ckpt["epoch"], ckpt["step"]
        metrics, partial, times = ckpt["metrics"], ckpt["partial"], ckpt["times"]
        recipe = ckpt["recipe"]

    model: nn.Module = net
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if cfg.train.compile:
        model = torch.compile(model)
    autocast = autocast_for(cfg, dev)
    mix_names, mix_until = mixers(cfg.aug), cfg.train.epochs - cfg.aug.mix_off_epochs
    # Random Erasing's "zero" fill is black, i.e. (0 - mean) / std in normalised units.
    erase_fill = -mean / std if cfg.aug.erasing_value == "zero" else cfg.aug.erasing_value
    t_resumed = t_start - times["wall_s"]  # wall clock continues across resumes

    def save(epoch: int, step: int) -> None:
        aug_states = _gather_states(aug_gen, d)
        if not d.main:
            return
        checkpoint.save(
            {
                "model": net.state_dict(),
                **({"ema": ema.state_dict()} if ema is not None else {}),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "step": step,
                "rng": {"aug": aug_states, "torch": torch.get_rng_state()},
                "device_type": dev.type,
                "metrics": metrics,
                "partial": partial,
                "times": {"train_s": times["train_s"], "wall_s": time.perf_counter() - t_resumed},
                "config": to_dict(cfg),
                "recipe": recipe,
                "data": {
                    "fingerprint": fingerprint,
                    "classes": data.classes,
                    "mean": mean.cpu(),
                    "std": std.cpu(),
                    "shape": list(data.train_x.shape[1:]),
                },
            },
            out / "last.pt",
        )

    total_steps = cfg.train.epochs * steps_per_epoch
    show = (sys.stdout.isatty() if progress is None else progress) and d.main
    bar = tqdm(
        total=total_steps,
        initial=start_epoch * steps_per_epoch + start_step,
        disable=not show,
        unit="step",
        dynamic_ncols=True,
    )

    stop_reason = early_stop_reason(metrics, cfg.train.early_stop_patience)
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.train.epochs if not stop_reason else start_epoch):
            model.train()
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                partial = {"loss_sum": 0.0, "steps": 0, "train_s": 0.0}
            losses = torch.zeros(steps_per_epoch, device=dev)
            t_seg, step = time.perf_counter(), first
            for step, (idx, xb, yb) in enumerate(
                train_batches(
                    train_x,
                    train_y,
                    batch,
                    seed=cfg.train.seed,
                    epoch=epoch,
                    rank=d.rank,
                    world=d.world,
                    start_step=first,
                    workers=cfg.data.workers,
                ),
                start=first,
            ):
                # 1. augment (uint8, batched, each image its own draw), then normalise
                xb = random_crop(xb, cfg.aug.crop_padding, aug_gen)
                if cfg.aug.hflip and cfg.aug.flip_mode == "alternate":
                    xb = alternating_flip(xb, idx, epoch, first_flips)
                elif cfg.aug.hflip:
                    xb = random_flip(xb, aug_gen)
                if cfg.aug.vflip:
                    xb = random_flip(xb, aug_gen, dim=2)
                xb = autoaugment(xb, policy, aug_gen)
                if cfg.aug.rotate or cfg.aug.color_jitter or cfg.aug.pca_lighting:
                    xb = xb.float()  # pixel units 0..255; black outside a rotated image
                    xb = random_rotate(xb, cfg.aug.rotate, aug_gen)
                    xb = color_jitter(xb, cfg.aug.color_jitter, aug_gen)
                    xb = pca_lighting(xb, cfg.aug.pca_lighting, *pca, aug_gen)
                xb = normalize(xb, mean, std, cfg.train.channels_last)
                # 2. erase: after normalisation, so a zero fill is the dataset mean
                if cfg.aug.cutout:
                    xb = cutout(xb, cfg.aug.cutout, cfg.aug.cutout_holes, aug_gen)
                if cfg.aug.random_erasing:
                    xb = random_erasing(
                        xb,
                        cfg.aug.random_erasing,
                        cfg.aug.erasing_scale,
                        cfg.aug.erasing_ratio,
                        erase_fill,
                        aug_gen,
                    )
                # 3. soft targets; mix at most one way; smooth once, on the final targets
                target = one_hot(yb, num_classes)
                mixer = pick_mixer(
                    mix_names if epoch < mix_until else [],
                    prob=cfg.aug.mix_prob,
                    mode=cfg.aug.mix_mode,
                    weights=cfg.aug.switch_prob,
                    step=epoch * steps_per_epoch + step,
                    generator=aug_gen,
                )
                if mixer is not None:
                    xb, target = MIXERS[mixer](xb, target, getattr(cfg.aug, mixer), aug_gen)
                target = smooth_targets(target, cfg.loss.label_smoothing)
                # 4. forward, loss, backward, optimizer step, LR schedule step
                with autocast:
                    logits = model(xb)
                if teacher is None:
                    loss = F.cross_entropy(logits.float(), target)
                else:  # the teacher sees the same (mixed, erased) batch, in its own units
                    with torch.no_grad(), autocast:
                        t_logits = teacher(xb * t_scale + t_shift)
                    loss = kd_loss(
                        logits.float(),
                        t_logits.float(),
                        target,
                        cfg.distill.alpha,
                        cfg.distill.temperature,
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(net)
                losses[step] = loss.detach()

                done = step + 1
                if done % SYNC_EVERY == 0 or done == steps_per_epoch:
                    lo = max(first, (done - 1) // SYNC_EVERY * SYNC_EVERY)
                    window = _check_finite(losses, lo, done, epoch, steps_per_epoch, out, d.world)
                    bar.set_postfix(
                        epoch=epoch + 1,
                        loss=f"{window.mean().item():.3f}",
                        lr=f"{sched.get_last_lr()[0]:.3g}",
                        img_s=f"{(done - first) * batch / (time.perf_counter() - t_seg):.0f}",
                        refresh=False,
                    )
                bar.update(1)
                # Under DDP every rank checks at the same steps, so they stop together.
                check = d.world == 1 or done % SYNC_EVERY == 0
                if check and done < steps_per_epoch and any_rank(stop.set, dev):
                    window = _check_finite(
                        losses, first, done, epoch, steps_per_epoch, out, d.world
                    )
                    partial = _add(partial, window, time.perf_counter() - t_seg)
                    save(epoch, done)
                    raise Interrupted(out)

            window = _check_finite(losses, first, step + 1, epoch, steps_per_epoch, out, d.world)
            partial = _add(partial, window, time.perf_counter() - t_seg)
            times["train_s"] += partial["train_s"]
            last = epoch + 1 == cfg.train.epochs
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": sched.get_last_lr()[0],
                "train_loss": partial["loss_sum"] / max(partial["steps"], 1),
                "img_per_s": steps_per_epoch * batch / max(partial["train_s"], 1e-9),
            }
            if last or (epoch + 1) % cfg.train.eval_every == 0:
                tta = last and cfg.train.tta
                scored = ema.module if ema is not None else model  # EMA weights when on
                row.update(_eval_row(scored, data, mean, std, cfg, autocast, d, tta))
            row["wall_s"] = time.perf_counter() - t_resumed
            metrics.append(row)
            partial = {"loss_sum": 0.0, "steps": 0, "train_s": 0.0}
            save(epoch + 1, 0)
            if d.main:
                checkpoint.write_text(
                    out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metrics)
                )
                line = _epoch_line(row, cfg.train.epochs)
                bar.write(line) if show else print(line, flush=True)
            stop_reason = early_stop_reason(metrics, cfg.train.early_stop_patience)
            if stop_reason:
                break
            if any_rank(stop.set, dev) and not last:
                raise Interrupted(out)
    bar.close()

    final = metrics[-1]
    summary = {
        "test_acc": final["test_acc"],
        "test_nll": final["test_loss"],
        "test_ece": final["test_ece"],
        **({"val_acc": final["val_acc"]} if "val_acc" in final else {}),
        "epochs": cfg.train.epochs,
        "epochs_run": final["epoch"],
        **({"stop_reason": stop_reason} if stop_reason else {}),
        "wall_s": time.perf_counter() - t_resumed,
        "train_s": times["train_s"],
        "train_img_per_s": final["epoch"] * steps_per_epoch * batch / max(times["train_s"], 1e-9),
        "params": sum(p.numel() for p in net.parameters()),
        "infer_macs": infer_macs(cfg, num_classes, tuple(data.train_x.shape[1:])),
        "peak_mem_mb": peak_mem_mb(dev),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "machine": machine(),
        "world_size": d.world,
        "torch": torch.__version__,
        "seed": cfg.train.seed,
        "recipe": recipe,
        "git_commit": git_commit(),
    }
    if d.main:
        checkpoint.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        from freebies.report.plots import plot_curves

        plot_curves(metrics, out / "curves.png", title=f"{recipe}: {cfg.model.name}")
    return summary


def _add(partial: dict, window: torch.Tensor, seconds: float) -> dict:
    """Fold a span of per-step (global mean) losses and its seconds into the epoch's sums."""
    return {
        "loss_sum": partial["loss_sum"] + float(window.double().sum()),
        "steps": partial["steps"] + len(window),
        "train_s": partial["train_s"] + seconds,
    }


def _check_finite(
    losses: torch.Tensor, lo: int, hi: int, epoch: int, steps: int, out: Path, world: int
) -> torch.Tensor:
    """The global mean losses of steps [lo, hi); stop with the step named if any is NaN/inf."""
    window = all_sum(losses[lo:hi].clone()) / world
    bad = (~torch.isfinite(window)).nonzero()
    if len(bad):
        i = lo + int(bad[0]) + 1
        raise UsageError(
            f"loss became {window[bad[0]].item()} at step {epoch * steps + i} "
            f"(epoch {epoch + 1}, batch {i}); stopped, the last good checkpoint is kept in "
            f"{out / 'last.pt'}; lower optim.lr or check the data"
        )
    return window


def _eval_row(
    model: nn.Module,
    data: Splits,
    mean: torch.Tensor,
    std: torch.Tensor,
    cfg: Config,
    autocast: Any,
    d: Dist,
    tta: bool,
) -> dict[str, float]:
    kw = dict(
        batch_size=cfg.train.eval_batch_size,
        tta=tta,
        tta_shift=cfg.train.tta_shift if tta else 0,
        autocast=autocast,
        channels_last=cfg.train.channels_last,
        rank=d.rank,
        world=d.world,
        workers=cfg.data.workers,
    )
    row = {}
    if data.val_x is not None:
        val = evaluate(model, data.val_x, data.val_y, mean, std, **kw)
        row.update(val_loss=val["nll"], val_acc=val["acc"])
    test = evaluate(model, data.test_x, data.test_y, mean, std, **kw)
    row.update(test_loss=test["nll"], test_acc=test["acc"], test_ece=test["ece"])
    return row


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}"]
    if "test_acc" in row:
        parts.append(f"test_acc {row['test_acc']:.2f}%")
    if "val_acc" in row:
        parts.append(f"val_acc {row['val_acc']:.2f}%")
    parts += [f"lr {row['lr']:.4g}", f"{row['img_per_s']:.0f} img/s", f"{row['wall_s']:.0f}s"]
    return "  ".join(parts)
