"""Evaluation: top-1 accuracy (%), NLL and expected calibration error, optional flip TTA.

ECE uses 15 equal-width confidence bins (Guo et al. 2017, "On Calibration of Modern Neural
Networks", arXiv:1706.04599). Under torchrun each rank scores a strided shard of the set and
the per-bin sums are all-reduced, so the figures equal a single-process evaluation.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from freebies.data.folder import FolderImages
from freebies.data.loader import eval_batches, normalize
from freebies.distributed import all_sum
from freebies.tricks.record import Key, Settings, Trick

ECE_BINS = 15


def calibration_sums(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """Per-bin (count, sum of confidence, number correct) as a (3, bins) float64 tensor.

    probs: (N, K) probabilities; y: (N,) labels.
    """
    conf, pred = probs.max(1)
    idx = (conf * bins).ceil().long().clamp(1, bins) - 1
    out = torch.zeros(3, bins, dtype=torch.float64, device=probs.device)
    out[0].index_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    out[1].index_add_(0, idx, conf.double())
    out[2].index_add_(0, idx, (pred == y).double())
    return out


def ece_from_sums(sums: torch.Tensor) -> float:
    """sum_b |acc_b - conf_b| * n_b / N, from `calibration_sums` output."""
    count, conf, correct = sums
    return float((correct - conf).abs().sum() / count.sum().clamp(min=1))


def shift(x: torch.Tensor, s: int) -> torch.Tensor:
    """x: (N, C, H, W) moved by s pixels down and right (s < 0: up and left), edges reflected."""
    p = abs(s)
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p - s : p - s + h, p - s : p - s + w]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor | FolderImages,
    y: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    batch_size: int = 1024,
    tta: bool = False,
    tta_shift: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
    rank: int = 0,
    world: int = 1,
    workers: int = 4,
    progress: bool = False,
) -> dict[str, float]:
    """Score uint8 images x: (N, C, H, W) with labels y: (N,) -> {acc (0-100), nll, ece};
    `progress` shows a bar with its ETA (for `freebies eval`; training evaluates quietly).

    Images are read on the device of `y` (in memory, or streamed from a folder).

    `tta` averages the softmax of the image and of its horizontal flip; `tta_shift` > 0 adds
    both shifted by (+s, +s) and (-s, -s) pixels (reflect-padded), weighted so the unshifted
    pair and the four shifted views count half each (as in airbench's TTA).
    """
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=y.device)
    sums = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=y.device)
    batches = eval_batches(x, y, batch_size, rank=rank, world=world, workers=workers)
    total = -(-len(y) // (batch_size * world))
    for xb, yb in tqdm(batches, total=total, unit="batch", disable=not progress, leave=False):
        xb = normalize(xb, mean, std, channels_last)
        views = [xb, xb.flip(3)] if tta else [xb]
        shifted = [shift(v, s) for v in views for s in (tta_shift, -tta_shift)] if tta_shift else []
        with autocast or contextlib.nullcontext():
            probs = torch.stack([model(v).float().softmax(1) for v in views]).mean(0)
            if shifted:
                shifted_probs = torch.stack([model(v).float().softmax(1) for v in shifted])
                probs = (probs + shifted_probs.mean(0)) / 2
        nll -= probs.gather(1, yb[:, None]).clamp(min=1e-12).log().double().sum()
        sums += calibration_sums(probs, yb)
    totals = all_sum(torch.cat([nll[None], sums.flatten()]))
    nll, sums = totals[0], totals[1:].view(3, ECE_BINS)
    model.train(was_training)
    n = sums[0].sum().clamp(min=1)
    return {
        "acc": float(100 * sums[2].sum() / n),
        "nll": float(nll / n),
        "ece": ece_from_sums(sums),
    }


def _tta_rules(s: Settings) -> list[tuple[bool, str]]:
    return [
        (
            s["train.tta_shift"] == 0 or s["train.tta"],
            "train.tta_shift adds shifted views to the flip TTA; set train.tta=true too",
        )
    ]


TTA = Trick(
    "tta",
    ("classify",),
    (Key("train.tta", bool), Key("train.tta_shift", int, "[0, inf)", note="pixels")),
    {"train.tta": True},
    "Krizhevsky et al. 2012; Jordan 2024 (shifted views)",
    "https://dl.acm.org/doi/10.1145/3065386",
    "average the prediction of the image and its mirror (x2 inference cost, not free)",
    check=_tta_rules,
)
