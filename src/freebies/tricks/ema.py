"""Exponential moving average of the weights, BatchNorm buffers included.

Built on `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn` (as Polyak &
Juditsky 1992; used for evaluation by, e.g., Tan & Le 2019, EfficientNet). With
`use_buffers=True` the BN running statistics are averaged too, so the EMA model can be
evaluated directly without recomputing them.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from freebies.errors import UsageError


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of `model`; call `.update_parameters(model)` after each optimizer step.

    The average is w_ema <- decay * w_ema + (1 - decay) * w, starting from the weights at the
    first update.
    """
    if not 0 < decay < 1:
        raise UsageError(f"ema.decay must be in (0, 1) (0 turns EMA off), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
