"""Optimizers and their parameter groups.

`no_bn_decay` exempts norm weights and biases from weight decay (He et al. 2019, "Bag of
Tricks", arXiv:1812.01187, section 3.1); `scaled_lr(..., rule="linear")` is the linear scaling
rule of Goyal et al. 2017 (arXiv:1706.02677), applied to the global batch across all ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from freebies.optim.adabound import AdaBound
from freebies.optim.muon import Muon

OPTIMIZERS = ("sgd", "adamw", "adabound", "amsbound", "muon")
LR_SCALING = ("none", "linear")


def scaled_lr(lr: float, global_batch: int, rule: str = "none", base_batch: int = 256) -> float:
    """The base LR after the scaling rule: `linear` gives lr * global_batch / base_batch."""
    if rule not in LR_SCALING:
        raise ValueError(f"scaled_lr: rule must be one of {', '.join(LR_SCALING)}, got {rule!r}")
    if base_batch <= 0 or global_batch <= 0:
        raise ValueError(
            f"scaled_lr: global_batch and base_batch must be > 0, got {global_batch}, {base_batch}"
        )
    return lr * global_batch / base_batch if rule == "linear" else lr


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    no_bn_decay: bool = False,
    bias_lr_scale: float = 1.0,
) -> list[dict]:
    """Weights, then norm weights and biases (their own LR and decay when asked)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_bn_decay and bias_lr_scale == 1:
        return [{"params": params}]
    # Norm weights and biases are the 0-d/1-d parameters in every model we build.
    small = {"params": [p for p in params if p.ndim <= 1], "lr": lr * bias_lr_scale}
    if no_bn_decay:
        small["weight_decay"] = 0.0
    elif bias_lr_scale != 1:  # keep lr * weight_decay, the decay per step, unchanged
        small["weight_decay"] = weight_decay / bias_lr_scale
    return [{"params": [p for p in params if p.ndim > 1]}, small]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    no_bn_decay: bool = False,
    bias_lr_scale: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    final_lr: float = 0.1,
    gamma: float = 1e-3,
    muon_lr: float = 0.24,
    muon_momentum: float = 0.6,
    muon_normalize: bool = True,
) -> torch.optim.Optimizer:
    """SGD, AdamW, AdaBound, AMSBound or Muon over `param_groups(model, ...)`.

    `final_lr` and `gamma` are AdaBound's; `momentum` and `nesterov` are SGD's (and Muon's for
    the parameters it leaves to SGD); `muon_*` are Muon's, for the conv filters.
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"build_optimizer: name must be one of {', '.join(OPTIMIZERS)}, got {name!r}"
        )
    groups = param_groups(
        model, lr, weight_decay=weight_decay, no_bn_decay=no_bn_decay, bias_lr_scale=bias_lr_scale
    )
    if name == "muon":
        filters = [p for g in groups for p in g["params"] if p.ndim == 4]
        if not filters:
            raise ValueError("muon: the model has no conv filters; use sgd or adamw")
        for g in groups:
            g["params"] = [p for p in g["params"] if p.ndim != 4]
        groups = [g for g in groups if g["params"]]
        groups.append({"params": filters, "muon": True, "lr": muon_lr, "momentum": muon_momentum})
        return Muon(
            groups,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            normalize=muon_normalize,
        )
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if name in ("adabound", "amsbound"):
        # final_lr is given at the recipe's LR scale; AdaBound rescales it with the schedule.
        return AdaBound(
            groups,
            lr=lr,
            betas=betas,
            final_lr=final_lr,
            gamma=gamma,
            weight_decay=weight_decay,
            amsbound=name == "amsbound",
        )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
