"""Soft targets: one-hot rows and label smoothing.

Label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture",
arXiv:1512.00567): q = (1 - eps) * onehot + eps / K. Targets stay soft (N, K) float rows from
here on, so mixing tricks compose with smoothing and nothing is smoothed twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from freebies.tricks.record import Key, Trick


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels (N,) int64 -> (N, K) float32 one-hot rows."""
    return F.one_hot(y, num_classes).float()


def smooth_targets(q: torch.Tensor, eps: float) -> torch.Tensor:
    """Mix soft targets q: (N, K) with the uniform distribution: (1 - eps) q + eps / K."""
    if not 0 <= eps < 1:
        raise ValueError(f"smooth_targets: eps must be in [0, 1), got {eps}")
    if eps == 0:
        return q
    return q * (1 - eps) + eps / q.shape[1]


LABEL_SMOOTHING = Trick(
    "label_smoothing",
    ("classify",),
    (Key("loss.label_smoothing", float, "[0, 1)", note="eps; 0 = off"),),
    {"loss.label_smoothing": 0.1},
    "Szegedy et al. 2016",
    "https://arxiv.org/abs/1512.00567",
    "targets (1 - eps) onehot + eps / K; applied once, after mixing",
)
