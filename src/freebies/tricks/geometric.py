"""Crop and flips as batched tensor ops, each image its own random draw from the rank's
generator (airbench, Keller Jordan, arXiv:2404.00498), instead of per-sample PIL transforms;
the CIFAR crop-and-flip of He et al. 2016 (arXiv:1512.03385)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from freebies.tricks.record import Key, Trick, when


def random_crop(
    x: torch.Tensor, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by `pad` and crop back to (H, W) at a random offset per image.

    x: (N, C, H, W), any dtype. Returns (N, C, H, W). pad=0 is the identity.
    """
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing moves the channel axis last: (N, H, W, C) -> back to (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, dim: int = 3
) -> torch.Tensor:
    """Flip each image with probability 1/2, horizontally (dim=3) or vertically (dim=2).

    x: (N, C, H, W).
    """
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(dim), x)


def alternating_flip(
    x: torch.Tensor, idx: torch.Tensor, epoch: int, first: torch.Tensor
) -> torch.Tensor:
    """Alternating flip (Jordan 2024, arXiv:2404.00498, section 3.6): image i is flipped in
    epoch e iff first[i] XOR (e odd), so epoch 0 flips a random half and every later epoch
    flips exactly the images the one before did not.

    x: (N, C, H, W); idx: (N,) dataset indices; first: (dataset size,) bool, drawn once per run.
    """
    flip = first[idx] ^ bool(epoch % 2)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


CROP_FLIP = Trick(
    "crop_flip",
    ("classify",),
    (
        Key("aug.crop_padding", int, "[0, inf)", note="pixels; 0 = off"),
        Key("aug.hflip", bool),
    ),
    {"aug.crop_padding": 4, "aug.hflip": True},
    "He et al. 2016 (CIFAR augmentation)",
    "https://arxiv.org/abs/1512.03385",
    "random crop after zero-padding, and horizontal mirroring (on in the baseline)",
    build=lambda s: when(
        s["aug.crop_padding"], lambda: partial(random_crop, pad=s["aug.crop_padding"])
    ),
)
ALTERNATING_FLIP = Trick(
    "alternating_flip",
    ("classify",),
    (Key("aug.flip_mode", str, choices=("random", "alternate")), Key("aug.hflip", bool)),
    {"aug.flip_mode": "alternate"},
    "Jordan 2024 (airbench)",
    "https://arxiv.org/abs/2404.00498",
    "each image flips every other epoch, a random half in the first",
)
VFLIP = Trick(
    "vflip",
    ("classify",),
    (Key("aug.vflip", bool),),
    {"aug.vflip": True},
    card="random vertical flip",
    build=lambda s: when(s["aug.vflip"], lambda: partial(random_flip, dim=2)),
)
