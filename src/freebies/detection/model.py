"""Detectors trained from scratch: torchvision's FCOS on a small backbone with an FPN from
stride 8.

FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection",
https://arxiv.org/abs/1904.01355 (anchor-free: one point per location, centre-ness branch).

torchvision's backbone helpers are built for pretrained weights: frozen BatchNorm, only the last
stages trainable, strides 16 and 32 only. From scratch every layer trains, BatchNorm is the
ordinary one with momentum 0.1 (the default 0.01 lags behind weights that move fast), and the
FPN starts at stride 8, where small objects are found. Nothing here downloads weights;
`backbone_weights` loads a user's local state dict instead.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small, resnet18
from torchvision.models.detection import FCOS
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import (
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from freebies.distributed import all_sum

# backbone -> (its trunk, {layer name: FPN input name} for strides 8, 16, 32, their channels)
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "resnet18")


def _trunk(name: str) -> tuple[nn.Module, dict[str, str], list[int]]:
    """The backbone's feature trunk, its stride-8/16/32 layers and their channels."""
    bn = partial(nn.BatchNorm2d, momentum=0.1)
    if name == "mobilenet_v3_small":
        trunk = mobilenet_v3_small(weights=None, norm_layer=bn).features
        return trunk, _layers(3, 8, 12), [24, 48, 576]
    if name == "mobilenet_v3_large":
        trunk = mobilenet_v3_large(weights=None, norm_layer=bn).features
        return trunk, _layers(6, 12, 16), [40, 112, 960]
    if name == "resnet18":
        net = resnet18(weights=None, norm_layer=bn)
        del net.fc, net.avgpool
        return net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512]
    choices = ", ".join(BACKBONES)
    raise ValueError(f"build_detector: backbone must be one of {choices}, got {name!r}")


def _layers(*indices: int) -> dict[str, str]:
    return {str(i): str(k) for k, i in enumerate(indices)}


class Head(FCOSHead):
    """torchvision's FCOS head whose losses are normalised by the foreground count of the
    whole global batch (all-reduced under DDP), so 2 processes equal 1 with twice the batch.
    torchvision divides by each process's own count. Its GroupNorm keeps at least 2 channels
    per group (torchvision's fixed 32 groups fail on a narrow FPN's 1x1 top level)."""

    def __init__(
        self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int
    ) -> None:
        # FCOSHead.__init__ would build GroupNorm(32, in_channels) first, which fails on a
        # width not divisible by 32; set up what it sets, with our norm.
        nn.Module.__init__(self)
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        groups = math.gcd(in_channels, 32)
        while groups > 1 and in_channels // groups < 2:
            groups //= 2
        norm = partial(nn.GroupNorm, groups)
        self.classification_head = FCOSClassificationHead(
            in_channels, num_anchors, num_classes, num_convs, norm_layer=norm
        )
        self.regression_head = FCOSRegressionHead(
            in_channels, num_anchors, num_convs, norm_layer=norm
        )

    def compute_loss(
        self,
        targets: list[dict[str, torch.Tensor]],
        head_outputs: dict[str, torch.Tensor],
        anchors: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        local = torch.stack([(m >= 0).sum() for m in matched_idxs]).sum().double()
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        total = all_sum(local.clone())
        # torchvision divided each sum by max(1, local); divide by the global mean instead.
        scale = (local.clamp(min=1) * world / total.clamp(min=1)).float()
        return {k: v * scale for k, v in losses.items()}


def load_backbone(trunk: nn.Module, path: Path) -> None:
    """Load a local state dict into the trunk: its own keys, or a whole torchvision
    classifier's (a `features.` prefix is dropped; the classifier head is ignored)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing, truncated or foreign file: torch raises several types
        raise ValueError(f"backbone_weights: cannot read {path} ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights: {path} does not hold a state dict")
    state = {k.removeprefix("features."): v for k, v in state.items()}
    own = trunk.state_dict()
    used = {k: v for k, v in state.items() if k in own}
    wrong = [k for k, v in used.items() if v.shape != own[k].shape]
    if not used or wrong:
        raise ValueError(
            f"backbone_weights: {path} does not fit this backbone ("
            + (
                f"{len(wrong)} tensors of another shape, e.g. {wrong[0]}"
                if wrong
                else "no key matches"
            )
            + "); give the weights of the same architecture"
        )
    missing = own.keys() - used.keys()
    if missing:
        raise ValueError(
            f"backbone_weights: {path} lacks {len(missing)} of the backbone's tensors, e.g. "
            f"{sorted(missing)[0]}"
        )
    trunk.load_state_dict(used)


def build_detector(
    num_classes: int,
    *,
    image_size: int,
    backbone: str = "mobilenet_v3_small",
    fpn_width: int = 64,
    head_convs: int = 4,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    score_thresh: float = 0.05,
    detections_per_img: int = 100,
    backbone_weights: str | Path | None = None,
) -> FCOS:
    """FCOS over `backbone` (from scratch unless `backbone_weights` names a local state dict)
    with an FPN of `fpn_width` channels on strides 8, 16, 32 plus P6/P7 (strides 64, 128).

    Inputs are lists of float images (3, S, S) in [0, 1] at `image_size`: the internal
    transform keeps that size (torchvision would resize to 800 px), normalises with
    `image_mean` / `image_std` (per channel, 0–1 units) and batches. Evaluation keeps up to
    `detections_per_img` boxes above `score_thresh` (COCO evaluates at about 0.05, not FCOS's
    0.2 default).
    """
    if num_classes < 1 or image_size < 32 or fpn_width < 2:
        raise ValueError(
            "build_detector: num_classes >= 1, image_size >= 32 and fpn_width >= 2 needed, got "
            f"{num_classes}, {image_size}, {fpn_width}"
        )
    trunk, layers, channels = _trunk(backbone)
    if backbone_weights is not None:
        load_backbone(trunk, Path(backbone_weights))
    body = BackboneWithFPN(
        trunk,
        return_layers=layers,
        in_channels_list=channels,
        out_channels=fpn_width,
        extra_blocks=LastLevelP6P7(fpn_width, fpn_width),
    )
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    return FCOS(
        body,
        num_classes,
        min_size=image_size,
        max_size=image_size,
        image_mean=image_mean or [0.5, 0.5, 0.5],
        image_std=image_std or [0.25, 0.25, 0.25],
        anchor_generator=anchors,
        head=Head(fpn_width, 1, num_classes, head_convs),
        score_thresh=score_thresh,
        detections_per_img=detections_per_img,
    )
