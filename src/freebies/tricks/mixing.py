"""Mixing tricks: each makes new training images from pairs (or quadruples) of batch images.

- mixup: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization",
  https://arxiv.org/abs/1710.09412
- CutMix: Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features", https://arxiv.org/abs/1905.04899
- RICAP: Takahashi et al. 2018, "Data Augmentation using Random Image Cropping and Patching for
  Deep CNNs", https://arxiv.org/abs/1811.09030

All three take images x: (N, C, H, W) float and soft targets y: (N, K) float and return both
mixed, with target weights equal to the share of each source image in the output, so they
compose with label smoothing (see `targets.py`).

Written by hand (house rule 5 names each such choice): torchvision's v2 ``MixUp`` / ``CutMix``
take hard integer labels and build their own one-hot rows, so they cannot follow label
smoothing or another mixing trick, and they do not take a ``torch.Generator``; no maintained
library has a batched RICAP. The formulas are short enough that owning them costs little.

Randomness: every draw uses the optional ``generator``. Per-image tensors (permutations) are
drawn on ``x.device``, so a generator must live on the same device as ``x``. Scalars that fix
the geometry of the whole batch (lambda, box positions) are drawn on the generator's device (CPU
when no generator is given) and read with ``.item()``, because slicing needs Python ints.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from freebies.tricks.checks import (
    check_generator,
    check_images,
    check_nonneg,
    check_targets,
    scalar_device,
)
from freebies.tricks.record import Key, Settings, Trick, when


def _beta(a: float, generator: torch.Generator | None) -> float:
    """One draw from Beta(a, a) as a Python float, using `generator`."""
    # torch.distributions.Beta.sample takes no generator, which would break "same seed, same
    # run". The first component of a Dirichlet(a, a) draw is Beta(a, a); the private op
    # torch._sample_dirichlet (what Beta.sample calls underneath) does accept one.
    conc = torch.tensor([a, a], dtype=torch.float64, device=scalar_device(generator))
    return torch._sample_dirichlet(conc, generator=generator)[0].item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """One integer uniform in [0, high) (high >= 1)."""
    return int(torch.randint(high, (), generator=generator, device=scalar_device(generator)))


def _perm(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(x.shape[0], generator=generator, device=x.device)


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image (and its target) with a partner from the same batch.

    Args:
        x: images (N, C, H, W), float.
        y: soft targets (N, K), float.
        alpha: lam ~ Beta(alpha, alpha), one per batch; 0 returns x and y unchanged.
        generator: optional source of randomness, on x's device.

    Returns:
        lam * x + (1 - lam) * x[perm] with perm a random permutation of the batch, and the
        same mix of y; shapes and dtypes as given.
    """
    check_images(x, "mixup")
    check_targets(x, y, "mixup")
    check_nonneg("alpha", alpha, "mixup")
    check_generator(x, generator, "mixup")
    if alpha == 0:
        return x, y
    lam = _beta(alpha, generator)
    perm = _perm(x, generator)
    # lerp(a, b, lam) = a + lam * (b - a): one fused kernel instead of three elementwise ops.
    return torch.lerp(x[perm], x, lam), torch.lerp(y[perm], y, lam)


def cutmix(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a box cut from a partner image into each image; targets weighted by area.

    One box for the whole batch, as in the paper: lam ~ Beta(alpha, alpha), box sides
    round(H * sqrt(1 - lam)) x round(W * sqrt(1 - lam)) (same aspect as the image), centre
    uniform over the pixels, clipped at the borders. Because clipping shrinks the box, the
    target weight uses the area actually pasted: lam = 1 - box_area / (H * W).

    Args:
        x: images (N, C, H, W), float.
        y: soft targets (N, K), float.
        alpha: Beta(alpha, alpha) parameter; 0 returns x and y unchanged.
        generator: optional source of randomness, on x's device.

    Returns:
        (x_mixed (N, C, H, W), y_mixed (N, K)).
    """
    check_images(x, "cutmix")
    check_targets(x, y, "cutmix")
    check_nonneg("alpha", alpha, "cutmix")
    check_generator(x, generator, "cutmix")
    if alpha == 0:
        return x, y
    h, w = x.shape[-2:]
    lam = _beta(alpha, generator)
    perm = _perm(x, generator)
    cy, cx = _randint(h, generator), _randint(w, generator)
    side = (1 - lam) ** 0.5
    cut_h, cut_w = round(h * side), round(w * side)
    y1, x1 = cy - cut_h // 2, cx - cut_w // 2
    y2, x2 = min(y1 + cut_h, h), min(x1 + cut_w, w)
    y1, x1 = max(y1, 0), max(x1, 0)

    out = x.clone()
    # Slice before indexing so only the box, not the whole batch, is gathered.
    out[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2][perm]
    lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)
    return out, lam * y + (1 - lam) * y[perm]


def ricap(
    x: torch.Tensor, y: torch.Tensor, beta: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch four crops from four shuffled copies of the batch into each image.

    The boundary point (w, h) = (round(W * Beta(beta, beta)), round(H * Beta(beta, beta)))
    splits the output into top-left (h, w), top-right (h, W - w), bottom-left (H - h, w) and
    bottom-right (H - h, W - w) regions. Region k comes from x[perm_k], cropped at a random
    position (one per region for the whole batch, as in the paper's code). The target is
    sum_k area_k / (H * W) * y[perm_k].

    Args:
        x: images (N, C, H, W), float.
        y: soft targets (N, K), float.
        beta: Beta(beta, beta) parameter; 0 returns x and y unchanged.
        generator: optional source of randomness, on x's device.

    Returns:
        (x_patched (N, C, H, W), y_mixed (N, K)).
    """
    check_images(x, "ricap")
    check_targets(x, y, "ricap")
    check_nonneg("beta", beta, "ricap")
    check_generator(x, generator, "ricap")
    if beta == 0:
        return x, y
    big_h, big_w = x.shape[-2:]
    w = round(big_w * _beta(beta, generator))
    h = round(big_h * _beta(beta, generator))
    # (top, left, height, width) of each region in the output.
    regions = [
        (0, 0, h, w),
        (0, w, h, big_w - w),
        (h, 0, big_h - h, w),
        (h, w, big_h - h, big_w - w),
    ]
    out = torch.empty_like(x)
    y_out = torch.zeros_like(y)
    for top, left, rh, rw in regions:
        # Draw even for an empty region, so the number of draws (and the run) stays the same.
        perm = _perm(x, generator)
        cx, cy = _randint(big_w - rw + 1, generator), _randint(big_h - rh + 1, generator)
        out[:, :, top : top + rh, left : left + rw] = x[:, :, cy : cy + rh, cx : cx + rw][perm]
        y_out += (rh * rw / (big_h * big_w)) * y[perm]
    return out, y_out


def pick_mixer(
    names: list[str],
    *,
    prob: float = 1.0,
    mode: str = "switch",
    weights: list[float] | None = None,
    step: int = 0,
    generator: torch.Generator | None = None,
) -> str | None:
    """Which of the mixing tricks `names` this batch uses, or None for an unmixed batch.

    A batch is mixed with probability `prob`. With several tricks on, each batch uses exactly
    one: drawn with `weights` (equal when empty) in "switch" mode, or in turn by `step` in
    "alternate" mode.
    """
    if not 0 <= prob <= 1:  # also catches NaN
        raise ValueError(f"pick_mixer: prob must be in [0, 1], got {prob}")
    if mode not in ("switch", "alternate"):
        raise ValueError(f"pick_mixer: mode must be 'switch' or 'alternate', got {mode!r}")
    if not names or prob == 0:
        return None
    if weights and len(weights) != len(names):
        raise ValueError(
            f"pick_mixer: weights needs one entry per name ({len(names)}), got {len(weights)}"
        )
    dev = scalar_device(generator)
    if prob < 1 and torch.rand((), generator=generator, device=dev).item() >= prob:
        return None
    if len(names) == 1:
        return names[0]
    if mode == "alternate":
        return names[step % len(names)]
    w = torch.tensor(weights or [1.0] * len(names), dtype=torch.float, device=dev)
    return names[int(torch.multinomial(w, 1, generator=generator).item())]


MIXERS = ("mixup", "cutmix", "ricap")


def mixers_on(s: Settings) -> list[str]:
    """The batch-mixing tricks the recipe `s` switches on, in a fixed order."""
    return [name for name in MIXERS if s[f"aug.{name}"] > 0]


def _mixing_rules(s: Settings) -> list[tuple[bool, str]]:
    on, weights, off = mixers_on(s), s["aug.switch_prob"], s["aug.mix_off_epochs"]
    return [
        (
            off == 0 or off < s["train.epochs"],
            f"aug.mix_off_epochs={off} must be shorter than the run (train.epochs="
            f"{s['train.epochs']})",
        ),
        (
            not weights or (len(weights) == len(on) and sum(weights) > 0),
            f"aug.switch_prob needs one non-negative weight per mixer that is on "
            f"({', '.join(on) or 'none'}), got {weights}",
        ),
    ]


MIX_KEYS = (
    Key("aug.mix_prob", float, "[0, 1]", note="the probability that a batch is mixed"),
    Key("aug.mix_off_epochs", int, "[0, inf)", note="no mixing in the last N epochs"),
    Key("aug.mix_mode", str, choices=("switch", "alternate")),
    Key("aug.switch_prob", list, "[0, inf)", note="one weight per mixer that is on"),
)


def _mixer(fn: Callable, param: str, on: float, paper: str, link: str, card: str) -> Trick:
    """The record of one mixing trick `fn`: its strength key `aug.<name>` (the Beta `param`),
    the keys and rules every mixer shares, and a builder binding the strength."""
    key = f"aug.{fn.__name__}"
    return Trick(
        fn.__name__,
        ("classify",),
        (Key(key, float, "[0, inf)", note=f"the Beta {param}; 0 = off"), *MIX_KEYS),
        {key: on},
        paper,
        link,
        card,
        check=_mixing_rules,
        build=lambda s: when(s[key], lambda: partial(fn, **{param: s[key]})),
    )


MIXUP = _mixer(
    mixup,
    "alpha",
    0.2,
    "Zhang et al. 2018",
    "https://arxiv.org/abs/1710.09412",
    "blend pairs of images and their targets with lambda ~ Beta(alpha, alpha)",
)
CUTMIX = _mixer(
    cutmix,
    "alpha",
    1.0,
    "Yun et al. 2019",
    "https://arxiv.org/abs/1905.04899",
    "paste a box from a partner image; targets weighted by the true pasted area",
)
RICAP = _mixer(
    ricap,
    "beta",
    0.3,
    "Takahashi et al. 2018",
    "https://arxiv.org/abs/1811.09030",
    "patch crops of four images together; targets weighted by patch areas",
)
