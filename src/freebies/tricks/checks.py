"""Argument checks shared by the tricks, and the device their scalar draws live on.

Each check raises `ValueError` (a bad value or shape) or `TypeError` (a bad dtype or kind)
whose message starts with the function's name and names its argument, so the tricks stand
alone in any training loop; the recipe validation and the CLI turn them into recipe wording.
"""

from __future__ import annotations

import torch


def check_images(x: torch.Tensor, fn: str) -> None:
    """`x` must be a non-empty float batch (N, C, H, W)."""
    if x.dim() != 4:
        raise ValueError(
            f"{fn}: x must be a 4-D float batch (N, C, H, W), got shape {tuple(x.shape)} "
            f"and dtype {x.dtype}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{fn}: x must be a 4-D float batch (N, C, H, W), got shape {tuple(x.shape)} "
            f"and dtype {x.dtype}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"{fn}: x must hold at least one image, got shape {tuple(x.shape)}")


def check_targets(x: torch.Tensor, y: torch.Tensor, fn: str) -> None:
    """`y` must be soft float targets (N, K) with one row per image of `x`."""
    if y.dim() != 2 or not y.is_floating_point():
        error = ValueError if y.dim() != 2 else TypeError
        raise error(
            f"{fn}: y must be soft float targets (N, K) (e.g. one_hot(labels, K)), got shape "
            f"{tuple(y.shape)} and dtype {y.dtype}"
        )
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: y has {y.shape[0]} rows but x has {x.shape[0]} images; they must match"
        )


def check_generator(x: torch.Tensor, generator: torch.Generator | None, fn: str) -> None:
    """`generator`, if given, must live on `x`'s device."""
    # torch refuses a generator on another device with an unhelpful message; say what to fix.
    if generator is None:
        return
    g, d = generator.device, x.device
    if g.type != d.type or (g.index is not None and d.index is not None and g.index != d.index):
        raise ValueError(
            f"{fn}: generator is on {g} but x is on {d}; "
            f"create it with torch.Generator(device=x.device)"
        )


def check_nonneg(name: str, value: float, fn: str) -> None:
    """Argument `name` must be >= 0 (and not NaN); 0 switches the trick off."""
    if not value >= 0:  # also catches NaN
        raise ValueError(f"{fn}: {name} must be >= 0 (0 switches it off), got {value}")


def scalar_device(generator: torch.Generator | None) -> torch.device:
    """Where to draw batch-wide scalars: the generator's device, or the CPU without one."""
    return generator.device if generator is not None else torch.device("cpu")
