"""Visually coherent image mixup for detection: Zhang et al. 2019, "Bag of Freebies for
Training Object Detection Neural Networks", https://arxiv.org/abs/1902.04103, section 3.1.

Two images are blended with lam ~ Beta(alpha, alpha) (1.5 in the paper) on a max(H) x max(W)
canvas with both at the top left, so neither is resized or distorted, and every box of both is
kept with its image's weight: lam or 1 - lam. The loss multiplies each foreground location by
its box's weight (see `freebies.detection.model.Head`). A letterboxed batch has one size, so
the canvas is that size and no pixel moves.

Written by hand: torchvision's v2.MixUp is for classification labels, and no maintained
library weights the detection loss per box (MMDetection and YOLOX blend at a fixed 0.5,
Ultralytics at Beta(32, 32), all without weights).
"""

from __future__ import annotations

from functools import partial

import torch

from freebies.tricks.checks import check_generator, check_images, check_nonneg, scalar_device
from freebies.tricks.record import Key, Trick, when


def mix_detection(
    x: torch.Tensor,
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Blend each image with another image of the batch, keeping both images' boxes.

    Args:
        x: images (N, C, H, W), float.
        boxes: N tensors (n_i, 4), xyxy pixels.
        labels: N tensors (n_i,).
        alpha: each image draws its own lam_i ~ Beta(alpha, alpha); 0 returns the batch with
            weight 1 on every box.
        generator: optional source of randomness, on x's device.

    Returns:
        (images, boxes, labels, weights): image i is lam_i * x[i] + (1 - lam_i) * x[j], where
        j != i comes from a random cyclic order of the batch (a batch of 1 is returned
        unmixed); its boxes are image i's with weight lam_i followed by image j's with weight
        1 - lam_i, less any box of weight 0 (so lam_i = 1 is exactly the unmixed image).
    """
    check_images(x, "mix_detection")
    check_nonneg("alpha", alpha, "mix_detection")
    check_generator(x, generator, "mix_detection")
    n = x.shape[0]
    if len(boxes) != n or len(labels) != n:
        raise ValueError(
            f"mix_detection: one box and one label tensor per image needed, got {n} images, "
            f"{len(boxes)} box and {len(labels)} label tensors"
        )
    if alpha == 0 or n == 1:
        return x, boxes, labels, [b.new_ones(len(b)) for b in boxes]
    dev = scalar_device(generator)
    conc = torch.full((n, 2), float(alpha), dtype=torch.float64, device=dev)
    lam = torch._sample_dirichlet(conc, generator=generator)[:, 0]  # Beta(a, a), see mixing.py
    order = torch.randperm(n, generator=generator, device=dev)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # each image's successor in a random cycle: never itself
    w = lam.to(x.device, x.dtype)
    mixed = torch.lerp(x[partner.to(x.device)], x, w[:, None, None, None])
    out_boxes, out_labels, out_weights = [], [], []
    for i, (j, li) in enumerate(zip(partner.tolist(), lam.tolist(), strict=True)):
        weight = torch.cat([boxes[i].new_full((len(boxes[i]),), li),
                            boxes[j].new_full((len(boxes[j]),), 1 - li)])  # fmt: skip
        keep = weight > 0
        out_boxes.append(torch.cat([boxes[i], boxes[j]])[keep])
        out_labels.append(torch.cat([labels[i], labels[j]])[keep])
        out_weights.append(weight[keep])
    return mixed, out_boxes, out_labels, out_weights


def mixup_until(epochs: int, off: int | None) -> int:
    """The first epoch trained without detection mixup: the last `off` epochs are clean, by
    default the last tenth (Zhang et al. 2019, after GluonCV's YOLOv3: 20 of 200)."""
    return epochs - (epochs // 10 if off is None else off)


DET_MIXUP = Trick(
    "det_mixup",
    ("detect",),
    (
        Key("det.mixup", float, "[0, inf)", note="the Beta alpha, 1.5 in the paper; 0 = off"),
        Key(
            "det.mixup_off_epochs",
            int,
            "[0, inf)",
            note="no mixup in the last N epochs; null = the last tenth",
        ),
    ),
    {"det.mixup": 1.5},
    "Zhang et al. 2019 (detection bag of freebies)",
    "https://arxiv.org/abs/1902.04103",
    "visually coherent mixup: blend two images, keep both images' boxes, each box's loss "
    "weighted by its image's share",
    build=lambda s: when(s["det.mixup"], lambda: partial(mix_detection, alpha=s["det.mixup"])),
    advice="from scratch it pays once the baseline has converged and overfits: scenes (500 "
    "images, 40 epochs) +5.9 map [+2.4, +9.5], BCCD (205 images, 20 epochs) +2.9 (+3.4 "
    "val); costs at a short budget (scenes, 500 steps: -3.7); use it alone, not stacked "
    "with other regularisers, at such budgets (docs/results/detection.md)",
)
