"""A shallow, wide net without residuals for small images, after airbench (Keller Jordan,
"94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024, https://arxiv.org/abs/2404.00498),
itself after David Page's ResNet-9 ("How to train your ResNet", 2018).

- a frozen patch-whitening first conv: the eigenbasis of the training images' k x k patches,
  scaled to unit variance, as +/- pairs; `init_from_data` sets it (only its bias trains); it
  runs in fp32 even under bf16 autocast;
- three blocks conv -> max-pool -> norm -> GELU -> conv -> norm -> GELU of widths (w1, w2, w3),
  each conv dirac-initialised on its first input channels (it starts by passing them through);
- BatchNorm with a fixed scale of 1 (bias only) and fast running statistics (momentum 0.4);
- global max pooling and a bias-free linear head whose logits are divided by 9.

For 28 x 28 inputs the 2 x 2 whitening gives 27 x 27, and the pools 13, 6, 3 (3 x 3: 26, then
the same). One channel has only k * k patch dimensions to whiten: 4 at 2 x 2, 9 at 3 x 3.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from freebies.models.resnet import check_sizes, norm_factory

LOGIT_SCALE = 1 / 9


def _norm(norm: str, channels: int) -> nn.Module:
    layer = norm_factory(norm)(channels)
    if isinstance(layer, nn.BatchNorm2d):
        layer.momentum = 0.4  # a short run needs running statistics that keep up
    layer.weight.requires_grad_(False)  # scale fixed at 1: the next conv can rescale
    return layer


class AirNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (64, 256, 256),
        norm: str = "bn",
        whiten_kernel: int = 2,
    ) -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        k = whiten_kernel
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * k * k, k, bias=True)
        self.whiten.weight.requires_grad_(False)
        blocks, c_in = [], self.whiten.out_channels
        for width in widths:
            blocks += [
                nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                _norm(norm, width),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                _norm(norm, width),
                nn.GELU(),
            ]
            c_in = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes, bias=False)
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight[: m.in_channels])
        nn.init.zeros_(self.whiten.bias)
        self.whiten_fp32 = True  # autocast off for the whitening layer

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalised training images x: (N, C, H, W)."""
        k = self.whiten.kernel_size[0]
        patches = F.unfold(x.float(), k).transpose(1, 2).reshape(-1, x.shape[1] * k * k)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov.double())
        filters = (eigvec.T / (eigval.clamp(min=0) + eps).sqrt()[:, None]).float()
        filters = filters.view(-1, x.shape[1], k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under bf16 autocast the whitening still runs in fp32: in bf16 it raised the error of
        # every later activation 1.7-1.9x (docs/results/bf16_diagnosis.json); it is a tiny conv.
        # The device from parameters(), which torch.fx does not proxy: fusion traces this net.
        dev = next(self.whiten.parameters()).device.type
        with torch.autocast(dev, enabled=False) if self.whiten_fp32 else nullcontext():
            x = F.gelu(self.whiten(x.to(self.whiten.weight.dtype)))
        x = self.layers(x)
        return self.fc(torch.amax(x, dim=(2, 3))) * LOGIT_SCALE


def airnet(
    widths: tuple[int, int, int],
    num_classes: int,
    in_channels: int = 3,
    norm: str = "bn",
    whiten_kernel: int = 2,
) -> AirNet:
    return AirNet(num_classes, in_channels, widths, norm, whiten_kernel)
