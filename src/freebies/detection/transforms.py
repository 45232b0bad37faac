"""Box-aware augmentation on batched tensors: images move, and their boxes move with them.

Boxes are xyxy in pixels, one (n_i, 4) tensor per image, because images hold different
numbers of boxes.
"""

from __future__ import annotations

import torch


def hflip_boxes(
    x: torch.Tensor, boxes: list[torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Flip each image left-right with probability 1/2 (its own draw), and its boxes.

    Args:
        x: images (N, C, H, W), any dtype.
        boxes: N tensors (n_i, 4), xyxy pixels in x's frame.
        generator: optional source of randomness, on x's device.

    Returns:
        The images and boxes; a flipped box is (W - x2, y1, W - x1, y2).
    """
    if x.dim() != 4 or len(boxes) != x.shape[0]:
        raise ValueError(
            f"hflip_boxes: x must be (N, C, H, W) with one box tensor per image, got shape "
            f"{tuple(x.shape)} and {len(boxes)} box tensors"
        )
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    w = x.shape[3]
    out = []
    for b, f in zip(boxes, flip.tolist(), strict=True):
        out.append(torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if f else b)
    return x, out
