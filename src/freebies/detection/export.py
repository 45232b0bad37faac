"""A trained FCOS as an ONNX graph (torch.onnx, dynamo exporter), and the post-processing that
turns its outputs into detections, checked against the eager detector.

The graph is the network only: a float image batch (N, 3, S, S) in [0, 1] at the trained
letterbox size S -> per-location class logits (N, L, K), box regression (N, L, 4), centre-ness
logit (N, L, 1), and the L anchors (L, 4) as a constant. Decoding, score filtering, top-k and
NMS (data-dependent shapes) stay outside, as in Ultralytics' and MMDeploy's raw-output exports;
`postprocess` is the reference, torchvision's own FCOS post-processing. README (Detection ->
Export) writes the rules out for other runtimes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

OUTPUTS = ("cls_logits", "bbox_regression", "bbox_ctrness", "anchors")


class DenseFCOS(nn.Module):
    """A torchvision FCOS without its transform and post-processing, at one input size."""

    def __init__(self, fcos: nn.Module, size: int) -> None:
        super().__init__()
        self.backbone, self.head = fcos.backbone, fcos.head
        t = fcos.transform
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std).view(1, 3, 1, 1))
        with torch.no_grad():
            x = torch.zeros(1, 3, size, size, device=self.mean.device)
            features = list(self.backbone(x).values())
            anchors = fcos.anchor_generator(ImageList(x, [(size, size)]), features)[0]
        self.register_buffer("anchors", anchors)
        self.level_sizes = [f.shape[-2] * f.shape[-1] for f in features]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.head(list(self.backbone((x - self.mean) / self.std).values()))
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"], self.anchors


def export_onnx(fcos: nn.Module, size: int, path: Path, batch: int = 2) -> DenseFCOS:
    """Write `fcos` (eval mode) as ONNX with a dynamic batch; returns the exported module."""
    dense = DenseFCOS(fcos, size).eval()
    x = torch.rand(batch, 3, size, size, device=dense.mean.device)
    torch.onnx.export(
        dense,
        (x,),
        str(path),
        input_names=["images"],
        output_names=list(OUTPUTS),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        dynamo=True,
        verbose=False,
    )
    return dense


def postprocess(
    fcos: nn.Module, outputs: list[torch.Tensor], level_sizes: list[int], size: int
) -> list[dict[str, torch.Tensor]]:
    """Detections per image (boxes xyxy in the S x S input's pixels, scores, labels) from the
    graph's four outputs: torchvision's FCOS post-processing (score sqrt(sigmoid(cls) *
    sigmoid(ctr)) above score_thresh, top candidates per level, decoding, clipping, batched
    NMS, the best detections_per_img)."""
    cls, reg, ctr, anchors = outputs
    head = {"cls_logits": cls, "bbox_regression": reg, "bbox_ctrness": ctr}
    per_level = {k: list(v.split(level_sizes, dim=1)) for k, v in head.items()}
    anchors_per_level = [list(anchors.split(level_sizes)) for _ in range(len(cls))]
    return fcos.postprocess_detections(per_level, anchors_per_level, [(size, size)] * len(cls))


def matched_share(
    eager: list[dict[str, torch.Tensor]], exported: list[dict[str, torch.Tensor]]
) -> float:
    """The share of the eager detector's detections that the exported graph's detections
    repeat (same label, IoU >= 0.99, score within 1e-3); near-tied scores may swap places or
    the last of the kept boxes, which a position-by-position comparison would call a miss."""
    found = total = 0
    for a, b in zip(eager, exported, strict=True):
        total += len(a["boxes"])
        if len(a["boxes"]) and len(b["boxes"]):
            same = (a["labels"][:, None] == b["labels"][None]) & (
                (a["scores"][:, None] - b["scores"][None]).abs() <= 1e-3
            )
            same &= box_iou(a["boxes"], b["boxes"]) >= 0.99
            found += int(same.any(1).sum())
    return found / total if total else 1.0
