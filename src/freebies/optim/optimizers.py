"""Optimizers and their parameter groups.

`no_bn_decay` exempts norm weights and biases from weight decay (He et al. 2019, "Bag of
Tricks", arXiv:1812.01187, section 3.1); `lr_scaling=linear` is the linear scaling rule of
Goyal et al. 2017 (arXiv:1706.02677), applied to the global batch across all ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from freebies.config import OptimCfg
from freebies.optim.adabound import AdaBound


def scaled_lr(cfg: OptimCfg, global_batch: int) -> float:
    """The base LR after the linear scaling rule, if it is on."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / cfg.lr_base_batch
    return cfg.lr


def param_groups(model: nn.Module, no_bn_decay: bool) -> list[dict]:
    if not no_bn_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # Norm weights and biases are the 0-d/1-d parameters in every model we build.
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimCfg, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.no_bn_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name in ("adabound", "amsbound"):
        # final_lr is given at the recipe's LR scale; AdaBound rescales it with the schedule.
        return AdaBound(
            groups,
            lr=lr,
            betas=cfg.betas,
            final_lr=cfg.final_lr,
            gamma=cfg.gamma,
            weight_decay=cfg.weight_decay,
            amsbound=cfg.name == "amsbound",
        )
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
