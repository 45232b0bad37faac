"""Muon: momentum whose update for each conv filter bank is orthogonalised by a few
Newton-Schulz iterations (Keller Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/;
airbench94_muon, https://github.com/KellerJordan/cifar10-airbench).

Groups marked `muon=True` hold the conv weights: each one's Nesterov momentum, flattened to
(out, in * k * k), is replaced by the nearest semi-orthogonal matrix (about U V^T of its SVD),
scaled by sqrt(max(1, out / fan_in)). With `normalize=True` each weight is first rescaled to
Frobenius norm sqrt(out), as airbench does: the convs feed BatchNorm, so only their direction
matters and the step size stays fixed. Every other group is plain SGD with the same formula as
`torch.optim.SGD` (momentum, dampening 0, optional Nesterov, coupled weight decay).
"""

from __future__ import annotations

import torch

from freebies.tricks.record import Key, Trick

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic iteration, from the Muon post


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """About U V^T for g = U S V^T (2-D), by `steps` quintic Newton-Schulz iterations in fp32.
    The singular values come out in roughly [0.7, 1.2], not exactly 1: enough for an update."""
    a, b, c = NS_COEFFS
    x = g.float() / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon on groups with `muon=True`, SGD on the rest (see the module docstring)."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        normalize: bool = False,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(
                "Muon: need lr > 0, 0 <= momentum < 1, weight_decay >= 0 and ns_steps >= 1, got "
                f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, ns_steps={ns_steps}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            ns_steps=ns_steps,
            normalize=normalize,
            muon=False,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon: groups with muon=True must hold matrices or conv filters")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            m, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and not group["muon"]:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()  # as SGD: the first buffer is g
                else:
                    state["momentum_buffer"].mul_(m).add_(g)
                buf = state["momentum_buffer"]
                g = g.add(buf, alpha=m) if group["nesterov"] else buf
                if not group["muon"]:
                    p.add_(g, alpha=-lr)
                    continue
                if group["normalize"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp(min=1e-12))
                elif wd:
                    p.mul_(1 - lr * wd)  # decoupled, as in the Muon post
                flat = g.reshape(len(g), -1)
                update = orthogonalize(flat, group["ns_steps"])
                update *= max(1.0, flat.shape[0] / flat.shape[1]) ** 0.5
                p.add_(update.view_as(p), alpha=-lr)
        return loss


MUON = Trick(
    "muon",
    ("classify", "detect"),
    (
        Key("optim.name", str),  # its choices: the adabound record
        Key("optim.muon_lr", float, "(0, inf)", note="the conv filters' LR"),
        Key("optim.muon_momentum", float, "[0, 1)"),
        Key("optim.muon_normalize", bool),
    ),
    {"optim.name": "muon"},
    "Jordan et al. 2024 (Muon; airbench94_muon)",
    "https://kellerjordan.github.io/posts/muon/",
    "conv filters step along their orthogonalised momentum (Newton-Schulz); the rest SGD",
)
