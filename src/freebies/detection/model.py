"""Detectors trained from scratch: torchvision's FCOS on a small backbone with an FPN from
stride 8.

FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection",
https://arxiv.org/abs/1904.01355 (anchor-free: one point per location, centre-ness branch).

torchvision's backbone helpers are built for pretrained weights: frozen BatchNorm, only the last
stages trainable, strides 16 and 32 only. From scratch every layer trains, BatchNorm is the
ordinary one with momentum 0.1 (the default 0.01 lags behind weights that move fast) and each
backbone's own eps (MobileNetV3: 1e-3; ResNet: 1e-5), and the
FPN starts at stride 8, where small objects are found. Nothing here downloads weights;
`backbone_weights` loads a user's local state dict instead.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
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
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from freebies.distributed import all_sum
from freebies.tricks.record import Key, Trick

# backbone -> (its trunk, {layer name: FPN input name} for strides 8, 16, 32, their channels)
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "resnet18")


def _trunk(name: str) -> tuple[nn.Module, dict[str, str], list[int]]:
    """The backbone's feature trunk, its stride-8/16/32 layers and their channels."""
    bn = partial(nn.BatchNorm2d, momentum=0.1)
    mobile_bn = partial(bn, eps=1e-3)  # MobileNetV3's own eps (torchvision, the paper's TF code)
    if name == "mobilenet_v3_small":
        trunk = mobilenet_v3_small(weights=None, norm_layer=mobile_bn).features
        return trunk, _layers(3, 8, 12), [24, 48, 576]
    if name == "mobilenet_v3_large":
        trunk = mobilenet_v3_large(weights=None, norm_layer=mobile_bn).features
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
    """torchvision's FCOS head with three changes to its loss (Tian et al. 2019; Zhang et al.
    2019, arXiv:1902.04103, for the last two):

    * the losses are normalised by the foreground of the whole global batch (all-reduced under
      DDP), so 2 processes equal 1 with twice the batch; torchvision divides by each
      process's own count;
    * per-box weights (`targets[i]["weights"]`, from detection mixup): every foreground location
      matched to a box has its classification, box and centre-ness losses multiplied by the
      box's weight, and the normaliser is the sum of the foreground weights;
    * `label_smoothing` = eps smooths the foreground locations' class targets: the true class
      1 - eps, every other class eps / (K - 1) (the paper's eq. 4 rule, applied per sigmoid);
      background locations stay at 0.

    With no weights and eps = 0 it computes exactly torchvision's loss. Its GroupNorm keeps at
    least 2 channels per group (torchvision's fixed 32 groups fail on a narrow FPN).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int,
        label_smoothing: float = 0.0,
    ) -> None:
        # FCOSHead.__init__ would build GroupNorm(32, in_channels) first, which fails on a
        # width not divisible by 32; set up what it sets, with our norm.
        nn.Module.__init__(self)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"Head: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        self.label_smoothing = label_smoothing
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
        cls_logits = head_outputs["cls_logits"]  # (N, HWA, K)
        classes, boxes, weights = _matched(targets, matched_idxs)  # (N, HWA), (.., 4), (N, HWA)
        fg = classes >= 0
        w = weights[fg]
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # the global mean of the per-rank normalisers: DDP's gradient averaging then gives the
        # gradient of (global loss sum) / (global foreground weight)
        norm = (all_sum(w.sum().double()).clamp(min=1) / world).float()

        k = cls_logits.shape[-1]
        target = torch.zeros_like(cls_logits)
        if self.label_smoothing and k > 1:
            target[fg] = self.label_smoothing / (k - 1)
        target[fg, classes[fg]] = 1.0 - self.label_smoothing
        cls = sigmoid_focal_loss(cls_logits, target, reduction="none") * weights[..., None]

        stacked = torch.stack(anchors)
        pred_boxes = self.box_coder.decode(head_outputs["bbox_regression"], stacked)
        giou = generalized_box_iou_loss(pred_boxes[fg], boxes[fg], reduction="none")
        encoded = self.box_coder.encode(stacked, boxes)
        lr, tb = encoded[..., [0, 2]], encoded[..., [1, 3]]
        centre = torch.sqrt(
            (lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0])
        )
        ctr = F.binary_cross_entropy_with_logits(
            head_outputs["bbox_ctrness"].squeeze(2)[fg], centre[fg], reduction="none"
        )
        return {
            "classification": cls.sum() / norm,
            "bbox_regression": (giou * w).sum() / norm,
            "bbox_ctrness": (ctr * w).sum() / norm,
        }


def _matched(
    targets: list[dict[str, torch.Tensor]], matched_idxs: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per location: the matched box's class (-1 = background), box and weight (1 without
    weights; 1 for background)."""
    classes, boxes, weights = [], [], []
    for t, m in zip(targets, matched_idxs, strict=True):
        i = m.clip(min=0)
        if len(t["labels"]) == 0:
            c, b = t["labels"].new_zeros(len(m)), t["boxes"].new_zeros(len(m), 4)
            w = t["boxes"].new_ones(len(m))
        else:
            c, b = t["labels"][i], t["boxes"][i]
            w = t["weights"][i] if "weights" in t else t["boxes"].new_ones(len(m))
        c = c.masked_fill(m < 0, -1)
        classes.append(c)
        boxes.append(b)
        weights.append(w.masked_fill(m < 0, 1.0))
    return torch.stack(classes), torch.stack(boxes), torch.stack(weights)


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
    label_smoothing: float = 0.0,
) -> FCOS:
    """FCOS over `backbone` (from scratch unless `backbone_weights` names a local state dict)
    with an FPN of `fpn_width` channels on strides 8, 16, 32 plus P6/P7 (strides 64, 128).

    Inputs are lists of float images (3, S, S) in [0, 1] at `image_size`: the internal
    transform keeps that size (torchvision would resize to 800 px), normalises with
    `image_mean` / `image_std` (per channel, 0–1 units) and batches. Evaluation keeps up to
    `detections_per_img` boxes above `score_thresh` (COCO evaluates at about 0.05, not FCOS's
    0.2 default). `label_smoothing` smooths the head's foreground class targets (see Head).
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
        head=Head(fpn_width, 1, num_classes, head_convs, label_smoothing),
        score_thresh=score_thresh,
        detections_per_img=detections_per_img,
    )


DET_LABEL_SMOOTHING = Trick(
    "det_label_smoothing",
    ("detect",),
    (Key("det.label_smoothing", float, "[0, 1)", note="eps; 0 = off"),),
    {"det.label_smoothing": 0.1},
    "Zhang et al. 2019 (detection bag of freebies)",
    "https://arxiv.org/abs/1902.04103",
    "smooth the classification head's foreground targets: true class 1 - eps, others "
    "eps / (K - 1); background stays 0",
    advice="no measurable gain with the sigmoid focal loss, at any budget: at convergence "
    "scenes +0.3 map [-0.2, +0.9] (+0.8 val), BCCD -0.1 (+0.9 val); GluonCV's eps 0.025 "
    "on BCCD -0.8 (+1.3 val, within noise of 0.1), so the paper's 0.1 stays "
    "(docs/results/detection.md)",
)
