"""Detections drawn on their image with torchvision's `draw_bounding_boxes`: line width and
label size scale with the image, labels sit on a filled band of the box's colour."""

from __future__ import annotations

import torch
from torchvision.utils import draw_bounding_boxes

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]


def label_font() -> str:
    """A TrueType font that is always there: matplotlib's bundled DejaVu Sans (a dependency),
    so labels can be sized; torchvision's default bitmap font is 11 px at any image size."""
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans", fallback_to_default=True)


def draw_detections(
    image: torch.Tensor, boxes: torch.Tensor, labels: list[str], color_ids: list[int]
) -> torch.Tensor:
    """uint8 image (3, H, W) with `boxes` (n, 4) xyxy pixels drawn, each with its label on a
    band of its colour (`color_ids` index PALETTE, e.g. category ids)."""
    if len(boxes) == 0:  # draw_bounding_boxes warns on an empty set
        return image
    side = max(image.shape[-2:])
    colors = [PALETTE[i % len(PALETTE)] for i in color_ids]
    return draw_bounding_boxes(
        image,
        boxes.float(),
        labels=labels,
        colors=colors,
        width=max(2, round(side / 400)),
        font=label_font(),
        font_size=max(12, round(side / 50)),
        label_colors="white",
        label_background_colors=colors,
        fill_labels=True,
    )
