"""AdaBound and AMSBound: Adam whose per-element step is clipped into bounds that close in on SGD.

Luo, Xiong, Liu & Sun, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate",
ICLR 2019, https://arxiv.org/abs/1902.09843. The update follows the authors' reference
implementation (https://github.com/Luolc/AdaBound):

    m_t = beta1 m + (1 - beta1) g            v_t = beta2 v + (1 - beta2) g^2  (AMSBound: max)
    step_size = lr sqrt(1 - beta2^t) / (1 - beta1^t)
    final_lr  = final_lr_0 * lr / base_lr    (so LR schedules and warmup move the bounds too)
    lower     = final_lr (1 - 1 / (gamma t + 1))     upper = final_lr (1 + 1 / (gamma t))
    p        -= clamp(step_size / (sqrt(v_t) + eps), lower, upper) * m_t

Written here rather than taken from PyPI because the `adabound` package is unmaintained and uses
deprecated tensor-method overloads (`add_(scalar, tensor)`, `addcmul_(scalar, t1, t2)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import ParamsT


def _check_group(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first impossible hyperparameter of a param group."""
    lr, final_lr, gamma = group["lr"], group["final_lr"], group["gamma"]
    eps, wd, betas = group["eps"], group["weight_decay"], group["betas"]
    # `not (x > 0)` rather than `x <= 0` so NaN is rejected too.
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"AdaBound lr must be a number > 0, got {lr!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"AdaBound betas must be two numbers in [0, 1), got {betas!r}")
    if not final_lr > 0:
        raise ValueError(f"AdaBound final_lr must be > 0, got {final_lr!r}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"AdaBound gamma must be in (0, 1), got {gamma!r}")
    if not eps >= 0:
        raise ValueError(f"AdaBound eps must be >= 0, got {eps!r}")
    if not wd >= 0:
        raise ValueError(f"AdaBound weight_decay must be >= 0, got {wd!r}")


class AdaBound(torch.optim.Optimizer):
    """AdaBound (or AMSBound with `amsbound=True`); see the module docstring for the update.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        lr: Adam learning rate (the initial step size).
        betas: decay rates of the first and second moment averages.
        final_lr: the SGD learning rate both bounds converge to (at the group's initial lr).
        gamma: convergence speed of the bounds; larger clips sooner.
        eps: added to sqrt(v_t) in the denominator.
        weight_decay: L2 penalty added to the gradient (not decoupled), as in the reference.
        amsbound: keep the running max of the second moment (AMSBound).

    Each param group records its lr at construction as `base_lr`; it travels in the
    state_dict, so a resumed run scales `final_lr` exactly as the uninterrupted one did.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            final_lr=final_lr,
            gamma=gamma,
            eps=eps,
            weight_decay=weight_decay,
            amsbound=amsbound,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, check its hyperparameters and remember its initial lr as `base_lr`."""
        # Check the group as it will be (defaults filled in) before adding it, so a rejected
        # group never lands in the optimizer.
        _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # Set once here, never at step time: a warmup scheduler may already have lowered lr
        # by the first step, and the bounds must scale against the lr the recipe asked for.
        group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient; return the closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            # The schedule's current lr relative to the initial one also scales the SGD target.
            final_lr = group["final_lr"] * group["lr"] / group["base_lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError(
                        "AdaBound does not support sparse gradients; use dense gradients "
                        "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
                    )
                state = self.state[p]
                if not state:
                    # A plain int step keeps the bounds in exact Python float math and
                    # round-trips through state_dict unchanged.
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsbound"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format
                        )
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsbound"]:
                    max_sq = state["max_exp_avg_sq"]
                    torch.maximum(max_sq, exp_avg_sq, out=max_sq)
                    denom = max_sq.sqrt().add_(group["eps"])
                else:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])

                # Bias correction is folded into the scalar step size, as in the reference, so
                # eps sits next to the uncorrected sqrt(v_t).
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                lower = final_lr * (1 - 1 / (group["gamma"] * t + 1))
                upper = final_lr * (1 + 1 / (group["gamma"] * t))
                update = torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper)
                p.sub_(update.mul_(exp_avg))
        return loss
