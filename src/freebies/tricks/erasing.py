"""Erasing tricks: blank out a rectangle of each image so the model cannot rely on one part.

- Cutout: DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural Networks with
  Cutout", https://arxiv.org/abs/1708.04552
- Random Erasing: Zhong et al. 2020, "Random Erasing Data Augmentation" (AAAI),
  https://arxiv.org/abs/1708.04896

Both work on a normalised batch x: (N, C, H, W) float and leave targets alone. Each image gets
its own rectangle, built for the whole batch at once by comparing row and column indices with
broadcasting, so there is no Python loop over images.

Written by hand (house rule 5 names each such choice): torchvision's ``RandomErasing`` draws
one rectangle per call in a Python retry loop (a whole batch gets the same box, or a loop over
images) and takes no ``torch.Generator``; no maintained library has a batched per-image Cutout.

Randomness: every draw uses the optional ``generator``, on ``x.device`` (so the generator must
live on the same device as ``x``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from freebies.errors import nearest
from freebies.tricks.checks import check_generator, check_images
from freebies.tricks.record import Key, Settings, Trick, when

# Random Erasing tries rectangle sizes until one fits; batched, every image gets this many
# attempts at once (torchvision's 10; the authors' code makes 100). With the default scale and
# ratio one attempt fails with probability about 0.05 on 28 x 28 or 32 x 32 images (0.04 on
# 224 x 224), so all ten fail about once in 10^13 images (those stay unerased).
_ATTEMPTS = 10
_FILLS = ["random", "mean"]


def cutout(
    x: torch.Tensor, length: int, holes: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero `holes` squares of side `length` in each image, each at its own random centre.

    The centre (cy, cx) is uniform over all pixels; the square covers rows
    cy - length // 2 .. cy - length // 2 + length - 1 (columns likewise) and is clipped at the
    borders, so squares near an edge erase less, as in the paper. Zero is the dataset mean once
    the images are normalised. Holes may overlap.

    Args:
        x: normalised images (N, C, H, W), float.
        length: side of each square in pixels; 0 returns x unchanged.
        holes: squares per image; 0 returns x unchanged.
        generator: optional source of randomness, on x's device.

    Returns:
        A new tensor (N, C, H, W) with the same dtype; x is not modified.
    """
    check_images(x, "cutout")
    for name, v in (("length", length), ("holes", holes)):
        wrong_type = isinstance(v, bool) or not isinstance(v, int)
        if wrong_type or v < 0:
            error = TypeError if wrong_type else ValueError
            raise error(f"cutout: {name} must be an int >= 0 (0 switches it off), got {v!r}")
    check_generator(x, generator, "cutout")
    if length == 0 or holes == 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    top = torch.randint(h, (n, holes, 1), generator=generator, device=dev) - length // 2
    left = torch.randint(w, (n, holes, 1), generator=generator, device=dev) - length // 2
    mask = _box_mask(top, left, length, length, h, w).any(dim=1)  # (N, H, W)
    return x.masked_fill(mask[:, None], 0.0)


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, height: Any, width: Any, h: int, w: int
) -> torch.Tensor:
    """Boolean (..., H, W) masks of boxes [top, top + height) x [left, left + width), built by
    comparing row and column indices with broadcasting; boxes may reach past the borders."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top) & (rows < top + height)  # (..., H)
    in_cols = (cols >= left) & (cols < left + width)  # (..., W)
    return in_rows[..., :, None] & in_cols[..., None, :]


def _check_range(name: str, rng: tuple[float, float], upper: float | None) -> tuple[float, float]:
    bound = f"0 < lo <= hi <= {upper}" if upper is not None else "0 < lo <= hi"
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise TypeError(
            f"random_erasing: {name} must be a pair (lo, hi) with {bound}, got {rng!r}"
        ) from None
    if lo > hi:
        raise ValueError(
            f"random_erasing: {name} range is inverted, got ({lo}, {hi}); "
            f"want (lo, hi) with {bound}"
        )
    if not (0 < lo and (upper is None or hi <= upper)):
        raise ValueError(f"random_erasing: {name} must satisfy {bound}, got ({lo}, {hi})")
    return lo, hi


def random_erasing(
    x: torch.Tensor,
    p: float,
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: str | float | torch.Tensor = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill one random rectangle in each image, each image erased with probability p.

    The sampling of the authors' released code (zhunzhong07/Random-Erasing) and torchvision's
    ``RandomErasing``, batched. Each attempt draws an area S_e = U(scale) * H * W and an aspect
    ratio r_e = U(ratio) (uniform, as the authors' code; torchvision samples it log-uniformly),
    giving H_e = round(sqrt(S_e * r_e)) rows and W_e = round(sqrt(S_e / r_e)) columns. The
    first of 10 attempts with 1 <= H_e < H and 1 <= W_e < W is kept: strictly smaller than the
    image on both sides, the test both references use, so a rectangle of full height or full
    width is rejected. Only then is it placed, its top-left corner uniform over the
    (H - H_e + 1) x (W - W_e + 1) positions where it fits. An image where no attempt fits stays
    unerased. The rectangle is the same in every channel.

    This is not the paper's printed Algorithm 1, which also draws the corner inside the retry
    loop and accepts only if the rectangle fits from that corner; that accepts a size with
    probability about (1 - H_e / H)(1 - W_e / W) and so favours small rectangles.

    Args:
        x: normalised images (N, C, H, W), float.
        p: probability that an image is erased, in [0, 1]; 0 returns x unchanged.
        scale: (lo, hi) share of the image area to erase, 0 < lo <= hi <= 1.
        ratio: (lo, hi) height / width of the rectangle, 0 < lo <= hi.
        value: "random" fills with N(0, 1) noise per pixel and channel (the images are
            normalised); "mean" fills with 0, the dataset mean after normalisation; a float
            fills with that value, and a (C,) tensor with one value per channel (pass the
            normalised value of black, (0 - mean) / std, for "zero").
        generator: optional source of randomness, on x's device.

    Returns:
        A new tensor (N, C, H, W) with the same dtype; x is not modified.
    """
    check_images(x, "random_erasing")
    if not 0 <= p <= 1:  # also catches NaN
        raise ValueError(f"random_erasing: p must be in [0, 1], got {p}")
    s_lo, s_hi = _check_range("scale", scale, upper=1.0)
    r_lo, r_hi = _check_range("ratio", ratio, upper=None)
    if isinstance(value, str):
        if value not in _FILLS:
            raise ValueError(
                f"random_erasing: value must be 'random', 'mean' or a number, got {value!r}"
                + nearest(value, _FILLS)
            )
    elif isinstance(value, torch.Tensor):
        if value.shape != (x.shape[1],):
            raise ValueError(
                f"random_erasing: a tensor value needs one entry per channel, shape "
                f"({x.shape[1]},), got {tuple(value.shape)}"
            )
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"random_erasing: value must be 'random', 'mean' or a number, got {value!r}"
        )
    check_generator(x, generator, "random_erasing")
    if p == 0:
        return x

    n, _, h, w = x.shape
    dev = x.device
    erase = torch.rand(n, generator=generator, device=dev) < p
    shape = (n, _ATTEMPTS)
    area = torch.empty(shape, device=dev).uniform_(s_lo, s_hi, generator=generator) * (h * w)
    aspect = torch.empty(shape, device=dev).uniform_(r_lo, r_hi, generator=generator)
    eh = (area * aspect).sqrt().round().long()
    ew = (area / aspect).sqrt().round().long()
    fits = (eh >= 1) & (eh < h) & (ew >= 1) & (ew < w)
    erase &= fits.any(dim=1)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    eh = eh.gather(1, first).squeeze(1)
    ew = ew.gather(1, first).squeeze(1)
    # Uniform over the h - eh + 1 fitting rows; the minimum guards u * k rounding up to k.
    top = torch.rand(n, generator=generator, device=dev) * (h - eh + 1)
    left = torch.rand(n, generator=generator, device=dev) * (w - ew + 1)
    top = torch.minimum(top.long(), h - eh)[:, None]
    left = torch.minimum(left.long(), w - ew)[:, None]

    # An image that is not erased gets a box of height 0, so `erase` costs no (N, H, W) pass.
    mask = _box_mask(top, left, (eh * erase)[:, None], ew[:, None], h, w)[:, None]
    if value == "random":
        # Noise only for the erased pixels (a fraction of the batch), in row-major order.
        mask = mask.expand_as(x)
        noise = torch.randn(int(mask.sum()), generator=generator, device=dev, dtype=x.dtype)
        return x.masked_scatter(mask, noise)
    if isinstance(value, torch.Tensor):
        return torch.where(mask, value.to(x)[None, :, None, None], x)
    return x.masked_fill(mask, 0.0 if value == "mean" else float(value))


def _erasing_rules(s: Settings) -> list[tuple[bool, str]]:
    scale, ratio = s["aug.erasing_scale"], s["aug.erasing_ratio"]
    return [
        (
            0 < scale[0] <= scale[1] <= 1,
            f"aug.erasing_scale={list(scale)} must be (lo, hi) with 0 < lo <= hi <= 1 (an "
            "inverted range swaps lo and hi)",
        ),
        (
            0 < ratio[0] <= ratio[1],
            f"aug.erasing_ratio={list(ratio)} must be (lo, hi) with 0 < lo <= hi (an inverted "
            "range swaps lo and hi)",
        ),
    ]


CUTOUT = Trick(
    "cutout",
    ("classify",),
    (
        Key("aug.cutout", int, "[0, inf)", note="the square's side in pixels; 0 = off"),
        Key("aug.cutout_holes", int, "[0, inf)"),
    ),
    {"aug.cutout": 8},
    "DeVries & Taylor 2017",
    "https://arxiv.org/abs/1708.04552",
    "zero a square (side in pixels) at a random centre, clipped at the borders",
    build=lambda s: when(
        s["aug.cutout"],
        lambda: partial(cutout, length=s["aug.cutout"], holes=s["aug.cutout_holes"]),
    ),
)
RANDOM_ERASING = Trick(
    "random_erasing",
    ("classify",),
    (
        Key("aug.random_erasing", float, "[0, 1]", note="the probability per image; 0 = off"),
        Key("aug.erasing_scale", tuple, "(0, 1]", note="the erased share of the area"),
        Key("aug.erasing_ratio", tuple, "(0, inf)", note="height / width"),
        Key("aug.erasing_value", str, choices=("random", "mean", "zero")),
    ),
    {"aug.random_erasing": 0.5},
    "Zhong et al. 2020",
    "https://arxiv.org/abs/1708.04896",
    "with probability p, fill a random rectangle (area and aspect ranges) with noise",
    check=_erasing_rules,
    build=lambda s: when(
        s["aug.random_erasing"],
        lambda: partial(
            random_erasing,
            p=s["aug.random_erasing"],
            scale=tuple(s["aug.erasing_scale"]),
            ratio=tuple(s["aug.erasing_ratio"]),
        ),
    ),
)
