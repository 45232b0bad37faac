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
from freebies.tricks.record import Key, Settings, Trick

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


def _nesterov_rules(s: Settings) -> list[tuple[bool, str]]:
    return [
        (
            not s["optim.nesterov"] or s["optim.momentum"] > 0,
            "optim.nesterov needs optim.momentum > 0",
        )
    ]


LINEAR_SCALING = Trick(
    "linear_scaling",
    ("classify", "detect"),
    (
        Key("optim.lr_scaling", str, choices=LR_SCALING),
        Key("optim.lr_base_batch", int, "(0, inf)", note="the batch optim.lr is set for"),
    ),
    {"optim.lr_scaling": "linear"},
    "Goyal et al. 2017",
    "https://arxiv.org/abs/1706.02677",
    "LR = base LR x global batch / optim.lr_base_batch (256)",
)
ADABOUND = Trick(
    "adabound",
    ("classify", "detect"),
    (
        Key("optim.name", str, choices=OPTIMIZERS),
        Key("optim.final_lr", float, "(0, inf)", note="the SGD LR the bounds converge to"),
        Key("optim.gamma", float, "(0, inf)", note="the bounds' convergence speed"),
    ),
    {"optim.name": "adabound", "optim.lr": 0.001},
    "Luo et al. 2019",
    "https://arxiv.org/abs/1902.09843",
    "Adam whose per-weight step is clipped to bounds that converge to SGD's LR",
)
NO_BN_DECAY = Trick(
    "no_bn_decay",
    ("classify", "detect"),
    (Key("optim.no_bn_decay", bool),),
    {"optim.no_bn_decay": True},
    "He et al. 2019 (Bag of Tricks)",
    "https://arxiv.org/abs/1812.01187",
    "no weight decay on norm weights and biases",
)
BIAS_LR = Trick(
    "bias_lr",
    ("classify", "detect"),
    (Key("optim.bias_lr_scale", float, "(0, inf)", note="airbench: 64"),),
    {"optim.bias_lr_scale": 64.0},
    "Jordan 2024 (airbench)",
    "https://arxiv.org/abs/2404.00498",
    "norm weights and biases train at a multiple of the LR (decay per step unchanged)",
)
NESTEROV = Trick(
    "nesterov",
    ("classify", "detect"),
    (Key("optim.nesterov", bool), Key("optim.momentum", float, "[0, inf)")),
    {"optim.nesterov": True},
    "Sutskever et al. 2013",
    "https://proceedings.mlr.press/v28/sutskever13.html",
    "Nesterov momentum for SGD",
    check=_nesterov_rules,
)
WEIGHT_DECAY = Trick(
    "weight_decay",
    ("classify", "detect"),
    (Key("optim.weight_decay", float, "[0, inf)"),),
    {"optim.weight_decay": 5e-4},
    card="L2 regularisation through the optimizer (on in the baseline)",
)
