"""Model-level options from the seed notes' "other" list: initialisation, zero-init of the
last norm in each residual branch, and dropout before the classifier.

- Xavier/Glorot init: Glorot & Bengio 2010, https://proceedings.mlr.press/v9/glorot10a.html
- Kaiming/He init (our models' default): He et al. 2015, https://arxiv.org/abs/1502.01852
- Zero-init residual: Goyal et al. 2017, https://arxiv.org/abs/1706.02677 (section 5.1); each
  residual block starts as the identity.
- Dropout: Srivastava et al. 2014, https://jmlr.org/papers/v15/srivastava14a.html
"""

from __future__ import annotations

from torch import nn

from freebies.models.acnet import ACBlock
from freebies.models.resnet import BasicBlock, PreActBlock
from freebies.tricks.record import Key, Trick


def xavier_init(model: nn.Module) -> nn.Module:
    """Re-initialise every conv and linear weight with Xavier-uniform, biases with zeros."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def zero_init_residual(model: nn.Module) -> nn.Module:
    """Zero the last layer of each residual branch: BN weight (post-activation blocks) or the
    last conv (pre-activation blocks, which end in a conv)."""
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, PreActBlock) and isinstance(m.conv2, ACBlock):
            for bn in (m.conv2.square_bn, m.conv2.hor_bn, m.conv2.ver_bn):
                nn.init.zeros_(bn.weight)  # the block sums three BN outputs: zero all of them
        elif isinstance(m, PreActBlock):
            nn.init.zeros_(m.conv2.weight)
    return model


def add_dropout(model: nn.Module, p: float) -> nn.Module:
    """Dropout with probability p on the features entering the classifier `model.fc`."""
    if not 0 <= p < 1:
        raise ValueError(f"add_dropout: p must be in [0, 1), got {p}")
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        raise TypeError(
            f"add_dropout: model must have a linear head `fc`; {type(model).__name__} has none"
        )
    if p > 0:
        model.fc = nn.Sequential(nn.Dropout(p), model.fc)
    return model


XAVIER_INIT = Trick(
    "xavier_init",
    ("classify",),
    (Key("model.init", str, choices=("kaiming", "xavier")),),
    {"model.init": "xavier"},
    "Glorot & Bengio 2010",
    "https://proceedings.mlr.press/v9/glorot10a.html",
    "Xavier-uniform initialisation instead of Kaiming",
)
ZERO_INIT_RESIDUAL = Trick(
    "zero_init_residual",
    ("classify",),
    (Key("model.zero_init_residual", bool),),
    {"model.zero_init_residual": True},
    "Goyal et al. 2017",
    "https://arxiv.org/abs/1706.02677",
    "zero the last BN of each residual branch: every block starts as the identity",
)
DROPOUT = Trick(
    "dropout",
    ("classify",),
    (Key("model.dropout", float, "[0, 1)", note="0 = off"),),
    {"model.dropout": 0.2},
    "Srivastava et al. 2014",
    "https://jmlr.org/papers/v15/srivastava14a.html",
    "dropout before the classifier",
)
