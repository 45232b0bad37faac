"""From a recipe to objects: the model, and around any task's network what trains it
(`make_training`: optimizer, LR schedule, lookahead, augmentation stream, EMA, DDP wrap).

The library layers (`freebies.models`, `freebies.optim`) take plain arguments and raise
ValueError / TypeError; here, where the recipe is known, those become one-line UsageErrors that
name the recipe section to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from freebies.config import ClassifyConfig, Config
from freebies.data.loader import train_batches
from freebies.distributed import Dist
from freebies.errors import UsageError
from freebies.models import acnet, create_model, options
from freebies.optim import build_optimizer, build_scheduler, lookahead_step, scaled_lr
from freebies.tricks import ema_model


@contextlib.contextmanager
def recipe_errors(section: str) -> Iterator[None]:
    """Turn a library's ValueError / TypeError into a UsageError naming the recipe section."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise UsageError(f"recipe section {section}: {e}") from None


def build_model(cfg: ClassifyConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The registry's architecture plus the recipe's model options (ACNet, init, dropout)."""
    with recipe_errors("model"):
        model = create_model(cfg.model.name, num_classes, in_channels, norm=cfg.model.norm)
        if cfg.model.acnet:  # first, so the init options below also reach the new branches
            acnet.convert(
                model,
                side_gamma=cfg.model.acnet_side_gamma,
                square_gamma=cfg.model.acnet_square_gamma,
            )
        if cfg.model.init == "xavier":
            options.xavier_init(model)
        if cfg.model.zero_init_residual:
            options.zero_init_residual(model)
        options.add_dropout(model, cfg.model.dropout)
    return model


def base_lr(cfg: Config) -> float:
    """The recipe's LR after its scaling rule, at its global batch."""
    o = cfg.optim
    with recipe_errors("optim"):
        return scaled_lr(o.lr, cfg.train.batch_size, o.lr_scaling, o.lr_base_batch)


def make_optimizer(net: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer over `net` at base LR `lr`."""
    kw = dataclasses.asdict(cfg.optim)
    for key in ("lr", "lr_scaling", "lr_base_batch", "lookahead_every", "lookahead_decay"):
        del kw[key]
    with recipe_errors("optim"):
        return build_optimizer(net, lr=lr, **kw)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: Config, lr: float, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's per-iteration schedule (warmup, then decay) over `train.epochs`."""
    with recipe_errors("sched"):
        return build_scheduler(
            opt,
            base_lr=lr,
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.train.epochs,
            **dataclasses.asdict(cfg.sched),
        )


def make_lookahead(cfg: Config, steps_per_epoch: int) -> Callable | None:
    """The recipe's lookahead, `(optimizer, step) -> None`, or None when it is off."""
    o = cfg.optim
    if not o.lookahead_every:
        return None
    total = cfg.train.epochs * steps_per_epoch
    return partial(
        lookahead_step, total_steps=total, every=o.lookahead_every, decay=o.lookahead_decay
    )


@dataclass
class Training:
    """What trains a task's network; the engine steps it after each forward pass."""

    net: nn.Module  # the unwrapped network: saved, restored, averaged by the EMA
    model: nn.Module  # what runs forward: `net`, or its DDP / compiled wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # this rank's augmentation stream, saved per rank
    lookahead: Callable[[torch.optim.Optimizer, int], None] | None = None
    ema: Any = None  # AveragedModel, when ema.decay > 0


def make_training(cfg: Config, net: nn.Module, d: Dist, steps_per_epoch: int) -> Training:
    """The recipe's optimizer, schedule and lookahead over `net`, this rank's augmentation
    generator, then (after everything that builds models) this rank's global RNG stream
    (dropout), the EMA and the DDP / compiled wrapper; SyncBatchNorm first when asked."""
    if cfg.train.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    lr = base_lr(cfg)
    opt = make_optimizer(net, cfg, lr)
    t = Training(
        net=net,
        model=net,
        opt=opt,
        sched=make_scheduler(opt, cfg, lr, steps_per_epoch),
        lookahead=make_lookahead(cfg, steps_per_epoch),
        gen=torch.Generator(d.device).manual_seed(cfg.train.seed + 1_000_003 * d.rank),
    )
    torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank + 1)
    t.ema = ema_model(net, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.decay else None
    t.model = wrap(net, d, cfg.train.compile)
    return t


def wrap(net: nn.Module, d: Dist, compile: bool) -> nn.Module:
    """What trains: `net`, under DDP when there are several processes, compiled if asked."""
    model = net
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    return torch.compile(model) if compile else model


def shuffled_batches(
    x: Any,
    y: torch.Tensor,
    cfg: Config,
    d: Dist,
    workers: int = 0,
    groups: torch.Tensor | None = None,
    take: Callable[[torch.Tensor], Any] | None = None,
) -> Callable[[int, int], Iterator[tuple[torch.Tensor, ...]]]:
    """A task's `batches`: (epoch, first step) -> this rank's (indices, images, labels) batches
    of the training set (x, y), in the global order seeded by the run seed and the epoch;
    with `groups`, each batch from one group (`freebies.data.loader.grouped_batches`); `take`
    reads a batch of in-memory images (default `x[idx]`)."""
    return lambda epoch, first: train_batches(
        x,
        y,
        cfg.train.batch_size,
        seed=cfg.train.seed,
        epoch=epoch,
        rank=d.rank,
        world=d.world,
        start_step=first,
        workers=workers,
        groups=groups,
        take=take,
    )
