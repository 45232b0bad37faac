"""A model from a recipe: the registry's architecture plus the recipe's model options."""

from __future__ import annotations

from torch import nn

from freebies.config import Config
from freebies.models import acnet, create_model, options


def build_model(cfg: Config, num_classes: int, in_channels: int) -> nn.Module:
    model = create_model(cfg.model.name, num_classes, in_channels, norm=cfg.model.norm)
    if cfg.model.acnet:  # first, so the init options below also reach the new branches
        acnet.convert(model, side_gamma=cfg.model.acnet_side_gamma)
    if cfg.model.init == "xavier":
        options.xavier_init(model)
    if cfg.model.zero_init_residual:
        options.zero_init_residual(model)
    options.add_dropout(model, cfg.model.dropout)
    if cfg.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
