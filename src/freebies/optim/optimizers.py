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


def param_groups(model: nn.Module, cfg: OptimCfg, lr: float) -> list[dict]:
    """Weights, then norm weights and biases (their own LR and decay when asked)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.no_bn_decay and cfg.bias_lr_scale == 1:
        return [{"params": params}]
    # Norm weights and biases are the 0-d/1-d parameters in every model we build.
    small = {"params": [p for p in params if p.ndim <= 1], "lr": lr * cfg.bias_lr_scale}
    if cfg.no_bn_decay:
        small["weight_decay"] = 0.0
    elif cfg.bias_lr_scale != 1:  # keep lr * weight_decay, the decay per step, unchanged
        small["weight_decay"] = cfg.weight_decay / cfg.bias_lr_scale
    return [{"params": [p for p in params if p.ndim > 1]}, small]


def build_optimizer(model: nn.Module, cfg: OptimCfg, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, lr)
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
