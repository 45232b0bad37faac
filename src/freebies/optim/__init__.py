"""Optimizers, parameter groups and LR schedules."""

from freebies.optim.lookahead import lookahead_step
from freebies.optim.optimizers import build_optimizer, scaled_lr
from freebies.optim.schedules import build_scheduler, lr_factor

__all__ = ["build_optimizer", "build_scheduler", "lookahead_step", "lr_factor", "scaled_lr"]
