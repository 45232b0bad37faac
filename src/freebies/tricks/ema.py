"""Exponential moving average of the weights, BatchNorm buffers included.

Built on `torch.optim.swa_utils.AveragedModel` (as Polyak & Juditsky 1992; used for
evaluation by, e.g., Tan & Le 2019, EfficientNet). With `use_buffers=True` the BN running
statistics are averaged too, so the EMA model can be evaluated directly without recomputing
them. The optional warm-up is TensorFlow's `ExponentialMovingAverage(num_updates=...)`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from freebies.tricks.record import Key, Trick


def _warmup_ema_fn(decay: float):
    """EMA whose decay after n averages is min(decay, (1 + n) / (10 + n))."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        # AveragedModel calls this once per (device, dtype) group.
        if not ema[0].is_floating_point():  # BN's integer batch counters: the model's own
            for e, c in zip(ema, current, strict=True):
                e.copy_(c)
            return
        # The weight stays a tensor on the device: no host sync per step.
        w = 1 - torch.clamp((1 + n) / (10 + n), max=decay).to(ema[0].dtype)
        for e, c in zip(ema, current, strict=True):
            e.lerp_(c, w)

    return update


def ema_model(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """An EMA copy of `model`; call `.update_parameters(model)` after each optimizer step.

    The average is w_ema <- decay * w_ema + (1 - decay) * w, starting from the weights at the
    first update. With `warmup`, the n-th update uses min(decay, (1 + n) / (10 + n)), so a
    short run is not dominated by its first weights (decay 0.999 without it still gives the
    starting weights 37% of the average after 1,000 steps).
    """
    if not 0 < decay < 1:
        raise ValueError(f"ema_model: decay must be in (0, 1), got {decay}")
    fn = _warmup_ema_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(model, multi_avg_fn=fn, use_buffers=True)


def ema_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged model's own state_dict from an AveragedModel's (`module.` prefix off,
    `n_averaged` left out): what evaluation and deployment load."""
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}


EMA = Trick(
    "ema",
    ("classify", "detect"),
    (Key("ema.decay", float, "[0, 1)", note="0 = off"), Key("ema.warmup", bool)),
    {"ema.decay": 0.999, "ema.warmup": True},
    "Polyak & Juditsky 1992; warm-up as TensorFlow's ExponentialMovingAverage",
    card="evaluate an exponential moving average of the weights (BN buffers included)",
)
