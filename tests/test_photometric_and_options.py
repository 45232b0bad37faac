"""Rotation, colour jitter, PCA lighting, vertical flip and the model options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freebies.models import create_model
from freebies.models.options import add_dropout, xavier_init, zero_init_residual
from freebies.tricks import color_jitter, pca_basis, pca_lighting, random_rotate
from freebies.tricks.geometric import random_flip


def test_rotation_neutral_centre_fixed_mass_kept_and_per_image():
    x = torch.zeros(6, 1, 21, 31)
    x[:, :, 8:13, 13:18] = 200.0  # a centred square blob on a non-square image
    assert random_rotate(x, 0.0) is x
    out = random_rotate(x, 45.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.all(out[:, 0, 10, 15] > 150)  # the centre is a fixed point
    mass = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert torch.all((mass - 1).abs() < 0.08)  # rigid: no shear on a non-square image
    assert not torch.equal(out[0], out[1])  # identical inputs, each its own angle
    with pytest.raises(ValueError, match=r"random_rotate: degrees must be >= 0, got -5.0"):
        random_rotate(x, -5.0)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_the_written_out_formula(channels):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, channels, 6, 7, generator=g) * 255
    out = color_jitter(x, 0.4, torch.Generator().manual_seed(9))
    r = torch.Generator().manual_seed(9)
    b, c = (1 + (2 * torch.rand(5, 1, 1, 1, generator=r) - 1) * 0.4 for _ in range(2))
    w = torch.tensor([0.299, 0.587, 0.114])[:, None, None]

    def gray(t):
        return t if channels == 1 else (t * w).sum(1, keepdim=True)

    ref = x * b
    m = gray(ref).mean((2, 3), keepdim=True)
    ref = (ref - m) * c + m
    if channels == 3:
        s = 1 + (2 * torch.rand(5, 1, 1, 1, generator=r) - 1) * 0.4
        ref = (ref - gray(ref)) * s + gray(ref)
    torch.testing.assert_close(out, ref.clamp(0, 255))
    assert color_jitter(x, 0.0) is x
    with pytest.raises(ValueError, match=r"color_jitter: strength must be in \[0, 1\)"):
        color_jitter(x, 1.5)


def test_pca_basis_and_lighting_formula():
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(50, 3, 4, 4, generator=g) * 255).to(torch.uint8)
    eigval, eigvec = pca_basis(imgs)
    pixels = imgs.double().div(255).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(
        (eigvec.double() * eigval.double()) @ eigvec.double().T,
        torch.cov(pixels),
        atol=1e-6,
        rtol=1e-4,
    )
    x = torch.full((4, 3, 5, 5), 100.0)
    out = pca_lighting(x, 0.1, eigval, eigvec, torch.Generator().manual_seed(1))
    alpha = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    shift = 255 * (alpha * eigval) @ eigvec.T
    torch.testing.assert_close(out, x + shift[:, :, None, None])
    assert pca_lighting(x, 0.0, eigval, eigvec) is x
    with pytest.raises(ValueError, match=r"pca_lighting: alphastd must be >= 0, got -0.1"):
        pca_lighting(x, -0.1, eigval, eigvec)
    gray = (torch.rand(20, 1, 4, 4, generator=g) * 255).to(torch.uint8)
    val1, vec1 = pca_basis(gray)  # grayscale: the variance itself, as a 1 x 1 basis
    assert vec1.shape == (1, 1)
    torch.testing.assert_close(val1.double(), gray.double().div(255).var().reshape(1))


def test_vertical_flip():
    x = torch.arange(2 * 1 * 3 * 2).view(2, 1, 3, 2)
    g = torch.Generator().manual_seed(0)
    out = random_flip(x.repeat(50, 1, 1, 1), g, dim=2)
    flipped = (out == x.repeat(50, 1, 1, 1).flip(2)).flatten(1).all(1)
    same = (out == x.repeat(50, 1, 1, 1)).flatten(1).all(1)
    assert (flipped | same).all() and 0.3 < flipped.float().mean() < 0.7


def test_model_options():
    torch.manual_seed(0)
    model = zero_init_residual(create_model("resnet20", 10, 1))
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in model.layers)
    pre = zero_init_residual(create_model("preact_resnet18", 10, 3))
    assert any(m.conv2.weight.abs().sum() == 0 for m in pre.modules() if hasattr(m, "conv2"))
    plain = create_model("resnet20", 10, 1)
    std_before = plain.fc.weight.std().item()
    xavier_init(plain)
    fan_in, fan_out = 64, 10
    expected = (2 / (fan_in + fan_out)) ** 0.5
    assert plain.fc.weight.std().item() == pytest.approx(expected, rel=0.25)
    assert plain.fc.weight.std().item() != std_before
    dropped = add_dropout(create_model("resnet20", 10, 1), 0.3)
    assert isinstance(dropped.fc, nn.Sequential) and isinstance(dropped.fc[0], nn.Dropout)
    with pytest.raises(ValueError, match=r"add_dropout: p must be in \[0, 1\)"):
        add_dropout(create_model("resnet20", 10, 1), 1.0)
