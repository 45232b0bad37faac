"""Rotation, colour shift and PCA lighting, batched with each image's own draw.

These are the seed notes' "other" regularisers. They work on float images in pixel units
(0..255, before normalisation) of shape (N, C, H, W):

- random rotation: a per-image angle, bilinear resampling, black outside the image;
- colour jitter: per-image brightness, contrast and (for RGB) saturation factors in
  [1 - s, 1 + s], as torchvision's ColorJitter but batched;
- PCA lighting (Krizhevsky et al. 2012, "ImageNet Classification with Deep Convolutional
  Neural Networks", section 4.1): add V (alpha * lambda) to every pixel, with V, lambda the
  eigenvectors and eigenvalues of the RGB covariance of the training set (pixels in [0, 1])
  and alpha ~ N(0, alphastd) per image.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from freebies.tricks.record import Key, Trick, when


def random_rotate(
    x: torch.Tensor, degrees: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotate each image by its own angle ~ U(-degrees, degrees). x: (N, C, H, W) float."""
    if not degrees >= 0:  # also catches NaN
        raise ValueError(f"random_rotate: degrees must be >= 0, got {degrees}")
    if degrees == 0:
        return x
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    # affine_grid works in [-1, 1] coordinates on each axis; rescale so a non-square image
    # rotates rigidly instead of shearing.
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(
    x: torch.Tensor, strength: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - s, 1 + s].

    x: (N, C, H, W) float pixels in 0..255; saturation applies to 3-channel images only.
    """
    if not 0 <= strength < 1:
        raise ValueError(f"color_jitter: strength must be in [0, 1), got {strength}")
    if strength == 0:
        return x
    n, c = x.shape[:2]

    def factor() -> torch.Tensor:
        u = torch.rand(n, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
        return 1 + (2 * u - 1) * strength

    def gray(t: torch.Tensor) -> torch.Tensor:
        if c == 1:
            return t
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (t * weights[:, None, None]).sum(1, keepdim=True)

    x = x * factor()
    mean = gray(x).mean((2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    if c == 3:
        g = gray(x)
        x = (x - g) * factor() + g
    return x.clamp(0, 255)


def pca_basis(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (C,) and eigenvectors (C, C, as columns) of the pixel covariance of uint8
    images (N, C, H, W), in [0, 1] units."""
    pixels = images.double().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    c = images.shape[1]
    eigval, eigvec = torch.linalg.eigh(torch.cov(pixels).reshape(c, c))  # cov of 1 row is 0-d
    return eigval.clamp(min=0).float(), eigvec.float()


def pca_lighting(
    x: torch.Tensor,
    alphastd: float,
    eigval: torch.Tensor,
    eigvec: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """AlexNet lighting noise: each image shifted by 255 * V (alpha * lambda), alpha ~ N(0, s).

    x: (N, C, H, W) float pixels; eigval: (C,); eigvec: (C, C) from `pca_basis`.
    """
    if not alphastd >= 0:  # also catches NaN
        raise ValueError(f"pca_lighting: alphastd must be >= 0, got {alphastd}")
    if alphastd == 0:
        return x
    alpha = torch.randn(x.shape[0], x.shape[1], generator=generator, device=x.device) * alphastd
    shift = 255 * (alpha * eigval.to(x.device)) @ eigvec.to(x.device).T  # (N, C)
    return (x + shift[:, :, None, None]).clamp(0, 255)


ROTATE = Trick(
    "rotate",
    ("classify",),
    (Key("aug.rotate", float, "[0, inf)", note="degrees; 0 = off"),),
    {"aug.rotate": 10.0},
    card="random rotation in [-deg, deg], each image its own angle",
    build=lambda s: when(s["aug.rotate"], lambda: partial(random_rotate, degrees=s["aug.rotate"])),
)
COLOR_JITTER = Trick(
    "color_jitter",
    ("classify",),
    (Key("aug.color_jitter", float, "[0, 1)", note="0 = off"),),
    {"aug.color_jitter": 0.2},
    card="brightness, contrast and saturation factors in [1 - s, 1 + s] per image",
    build=lambda s: when(
        s["aug.color_jitter"], lambda: partial(color_jitter, strength=s["aug.color_jitter"])
    ),
)
PCA_LIGHTING = Trick(
    "pca_lighting",
    ("classify",),
    (Key("aug.pca_lighting", float, "[0, inf)", note="the alpha std (0.1 in the paper)"),),
    {"aug.pca_lighting": 0.1},
    "Krizhevsky et al. 2012 (AlexNet)",
    "https://dl.acm.org/doi/10.1145/3065386",
    "add the training set's RGB principal components with random weights per image",
    build=lambda s: when(
        s["aug.pca_lighting"], lambda: partial(pca_lighting, alphastd=s["aug.pca_lighting"])
    ),
)
DET_COLOR_JITTER = Trick(
    "det_color_jitter",
    ("detect",),
    (Key("det.color_jitter", bool), Key("det.jitter_strength", float, "[0, 1)")),
    {"det.color_jitter": True},
    "Zhang et al. 2019 (detection bag of freebies); Liu et al. 2016 (SSD)",
    "https://arxiv.org/abs/1902.04103",
    "per-image brightness, contrast and saturation (boxes unchanged)",
    build=lambda s: when(
        s["det.color_jitter"], lambda: partial(color_jitter, strength=s["det.jitter_strength"])
    ),
    advice="a steady gain at convergence: scenes (500 images, 40 epochs) +2.3 map [+1.8, "
    "+2.8], BCCD (20 epochs) +3.5 (+4.3 val); within noise at a short budget (scenes, "
    "500 steps) (docs/results/detection.md)",
)
