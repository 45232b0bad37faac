"""Residual networks for small images (CIFAR-sized, but any input of at least 8x8 works).

- CIFAR ResNet-20/32/44/56/110: He et al. 2016, "Deep Residual Learning for Image Recognition",
  section 4.2, https://arxiv.org/abs/1512.03385
- PreAct-ResNet-18: He et al. 2016, "Identity Mappings in Deep Residual Networks",
  https://arxiv.org/abs/1603.05027
- Wide ResNet WRN-d-k: Zagoruyko & Komodakis 2016, "Wide Residual Networks",
  https://arxiv.org/abs/1605.07146

Every model ends in adaptive average pooling, so non-square inputs and 1-channel images work,
and takes `norm="bn"` (BatchNorm) or `norm="gn"` (GroupNorm, independent of batch splitting).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from freebies.errors import nearest
from freebies.models import register

NORMS = ("bn", "gn")

NormFactory = Callable[[int], nn.Module]


def norm_factory(norm: str) -> NormFactory:
    """A function mapping a channel count to a fresh normalization layer of kind `norm`."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        # 8 groups is the usual choice for narrow nets; fall back to LayerNorm-like 1 group.
        return lambda channels: nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    raise ValueError(
        f"unknown norm {norm!r}{nearest(str(norm), list(NORMS))}; norm must be one of: bn, gn"
    )


def init_weights(model: nn.Module) -> None:
    """He init for convs, identity affine for norms; linear layers keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def check_sizes(num_classes: int, in_channels: int) -> None:
    """Reject class and channel counts that cannot build a model."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias (a norm layer always follows or precedes it)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def cifar_resnet(depth: int, num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """CIFAR ResNet of depth 6n+2 with parameter-free (option A) shortcuts."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"cifar_resnet: depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, norm)


@register("resnet20")
def resnet20(num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """ResNet-20 (0.27M parameters)."""
    return cifar_resnet(20, num_classes, in_channels, norm)


@register("resnet32")
def resnet32(num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """ResNet-32 (0.46M parameters)."""
    return cifar_resnet(32, num_classes, in_channels, norm)


@register("resnet44")
def resnet44(num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """ResNet-44 (0.66M parameters)."""
    return cifar_resnet(44, num_classes, in_channels, norm)


@register("resnet56")
def resnet56(num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """ResNet-56 (0.85M parameters)."""
    return cifar_resnet(56, num_classes, in_channels, norm)


@register("resnet110")
def resnet110(num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """ResNet-110 (1.7M parameters)."""
    return cifar_resnet(110, num_classes, in_channels, norm)


@register("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """PreAct-ResNet-18, CIFAR variant (11.17M parameters for 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, norm)


def wide_resnet(
    depth: int,
    width: int,
    num_classes: int,
    in_channels: int = 3,
    dropout: float = 0.0,
    norm: str = "bn",
) -> nn.Module:
    """WRN-depth-width; `dropout` is applied between the two convs of each block."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"wide_resnet: depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28, 40), got {depth}"
        )
    if width < 1:
        raise ValueError(f"wide_resnet: width must be at least 1, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"wide_resnet: dropout must be in [0, 1), got {dropout}")
    return WideResNet((depth - 4) // 6, width, num_classes, in_channels, dropout, norm)


class ShortcutA(nn.Module):
    """Option A shortcut: subsample spatially, zero-pad the new channels; no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            # Same output size as a padded 3x3 stride-s conv, ceil(H/s), also for odd sizes.
            # The copy gives the view dense strides in the input's layout: odd strides would
            # pass through the residual sum to every later conv and BN, which then take slow
            # kernels (measured: 100x slower on 12x10 inputs).
            x = x[:, :, :: self.stride, :: self.stride].clone(memory_format=torch.preserve_format)
        if self.extra > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class BasicBlock(nn.Module):
    """Post-activation basic block of the original ResNet: conv-norm-relu-conv-norm, add, relu."""

    def __init__(self, in_planes: int, planes: int, stride: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = make_norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(planes)
        self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): 3x3 stem, three stages of n blocks at 16/32/64 channels, pool, linear."""

    def __init__(self, n: int, num_classes: int, in_channels: int = 3, norm: str = "bn") -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        make_norm = norm_factory(norm)
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = make_norm(16)
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, make_norm))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


class PreActBlock(nn.Module):
    """Pre-activation basic block: norm-relu-conv-norm-relu-conv, optional dropout between.

    Used by PreAct-ResNet and Wide ResNet; the projection shortcut reads the pre-activated input,
    as in the paper's code, so the raw residual stream is only ever added to.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        make_norm: NormFactory,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.bn1 = make_norm(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = make_norm(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class PreActResNet(nn.Module):
    """PreAct-ResNet for small images: 3x3 stride-1 stem, four stages at 64-512 channels."""

    def __init__(
        self,
        num_blocks: tuple[int, ...],
        num_classes: int,
        in_channels: int = 3,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        make_norm = norm_factory(norm)
        self.conv1 = conv3x3(in_channels, 64)
        layers = []
        in_planes = 64
        for stage, n in enumerate(num_blocks):
            planes = 64 * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(PreActBlock(in_planes, planes, stride, make_norm))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        # Pre-activation blocks end in a bare addition, so normalize once more before pooling.
        self.bn = make_norm(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


class WideResNet(nn.Module):
    """WRN: 3x3 stem to 16 channels, three stages of n pre-activation blocks at 16k/32k/64k."""

    def __init__(
        self,
        n: int,
        width: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        make_norm = norm_factory(norm)
        self.conv1 = conv3x3(in_channels, 16)
        layers = []
        in_planes = 16
        for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for i in range(n):
                s = stride if i == 0 else 1
                layers.append(PreActBlock(in_planes, planes, s, make_norm, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = make_norm(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))
