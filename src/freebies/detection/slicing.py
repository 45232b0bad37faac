"""Sliced training: each training sample is a window cut from the image at its own resolution.

SAHI's slicing-aided fine-tuning (Akyon et al. 2022, "Slicing Aided Hyper Inference and
Fine-tuning for Small Object Detection", https://arxiv.org/abs/2202.06934) cuts every training
image into overlapping slices beforehand, plus the whole image; here each step draws, per
image, a random window of `size` x `size` at the image's stored resolution (native, or
`det.slice_scale` x native), or with probability `full_prob` the whole image shrunk into the
window, so that large objects are still learned. A small object keeps its pixels, and the model
learns it at the scale that tiled inference later shows it (`freebies.detection.multiscale`).
On sparse data many uniform windows hold no object (45% of 416 px windows on the aerial-drone
training frames); with probability `object_prob` a window is instead placed uniformly among
the positions that hold wholly one of the image's boxes that fit in it, drawn at random (SAHI's
counterpart is `ignore_negative_samples`, which drops the empty slices altogether).

Boxes are clipped to the window; a box keeps its label only when at least `min_visible` of its
area is inside (SAHI keeps a cut box above a visible share too). All draws come from the
step's generator, so a resumed run and each DDP rank draw their own windows exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch.nn import functional as F

from freebies.tricks.record import Key, Settings, Trick, when


def slice_batch(
    images: torch.Tensor | Sequence[torch.Tensor],
    fitted: torch.Tensor,
    boxes: list[torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    size: int,
    min_visible: float = 0.5,
    full_prob: float = 0.0,
    object_prob: float = 0.0,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One window (or the whole image, shrunk) per image, as a float batch (N, C, size, size).

    Args:
        images: uint8 (N, C, H, W), or N uint8 (C, H_i, W_i) views: image i in its top-left
            ``fitted[i]`` = (h_i, w_i). Only the windows, and the images shown whole,
            are copied.
        fitted: int64 (N, 2), each image's own size on the canvas.
        boxes: N float (n_i, 4) xyxy in the images' pixels.
        generator: the step's source of randomness (CPU or the images' device).
        size: the window's side, pixels.
        min_visible: the share of a box's area that must lie in the window for it to stay.
        full_prob: the probability that an image is shown whole, its longer side shrunk (or
            enlarged) to `size`, instead of a window.
        object_prob: the probability that a window (of an image with a box that fits in it)
            is placed to hold wholly such a box, drawn at random; else it is placed uniformly.

    Returns:
        The batch in float pixels (windows smaller than `size`, from small images, sit at the
        top-left on zeros), the boxes in it, and keeps: N bool (n_i,) saying which boxes
        stayed (to filter labels and weights).
    """
    if not all(0 <= p <= 1 for p in (min_visible, full_prob, object_prob)) or size < 1:
        raise ValueError(
            f"slice_batch: size >= 1, min_visible, full_prob and object_prob in [0, 1] needed, "
            f"got {size}, {min_visible}, {full_prob}, {object_prob}"
        )
    n, (c, dev) = len(images), (images[0].shape[0], images[0].device)
    # Runs without object_prob draw exactly the numbers they drew before it existed.
    u = torch.rand(n, 5 if object_prob else 3, generator=generator, device=dev, dtype=torch.float64)
    u = u.cpu()
    out = torch.zeros((n, c, size, size), dtype=torch.float32, device=dev)
    out_boxes, keeps = [], []
    for i, (h, w) in enumerate(fitted.tolist()):
        b = boxes[i]
        if u[i, 0] < full_prob:
            f = size / max(h, w)
            nh, nw = max(1, round(h * f)), max(1, round(w * f))
            whole = images[i][None, :, :h, :w].float()
            out[i, :, :nh, :nw] = F.interpolate(
                whole, size=(nh, nw), mode="bilinear", align_corners=False, antialias=f < 1
            )[0]
            scale = torch.tensor([nw / w, nh / h] * 2, dtype=b.dtype, device=b.device)
            out_boxes.append(b * scale)
            keeps.append(torch.ones(len(b), dtype=torch.bool, device=b.device))
            continue
        wh, ww = min(size, h), min(size, w)
        box = _pick(b, ww, wh, u[i, 4].item()) if object_prob and u[i, 3] < object_prob else None
        if box is not None:
            x0 = _around(box[0], box[2], ww, w, u[i, 2].item())
            y0 = _around(box[1], box[3], wh, h, u[i, 1].item())
        else:
            y0 = min(int(u[i, 1] * (h - wh + 1)), h - wh)
            x0 = min(int(u[i, 2] * (w - ww + 1)), w - ww)
        out[i, :, :wh, :ww] = images[i][:, y0 : y0 + wh, x0 : x0 + ww].float()
        kept, keep = window_boxes(b, (x0, y0, x0 + ww, y0 + wh), min_visible)
        out_boxes.append(kept)
        keeps.append(keep)
    return out, out_boxes, keeps


def _pick(boxes: torch.Tensor, ww: int, wh: int, u: float) -> list[float] | None:
    """The box (xyxy) drawn by `u` among those that fit in a `ww` x `wh` window; None when
    none does (a box longer than the window would be cut below its visible share)."""
    fits = ((boxes[:, 2] - boxes[:, 0] <= ww) & (boxes[:, 3] - boxes[:, 1] <= wh)).nonzero()
    if not len(fits):
        return None
    return boxes[fits[min(int(u * len(fits)), len(fits) - 1), 0]].tolist()


def _around(lo: float, hi: float, window: int, side: int, u: float) -> int:
    """A window start in [0, side - window], drawn by `u` among those whose window holds
    [lo, hi] (no longer than the window) wholly."""
    a = min(max(math.ceil(hi) - window, 0), side - window)  # the first start that holds hi
    b = min(max(math.floor(lo), 0), side - window)  # the last start that holds lo
    return min(a + int(u * (b - a + 1)), b)


def window_boxes(
    boxes: torch.Tensor, window: tuple[int, int, int, int], min_visible: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes (n, 4) xyxy seen through `window` (x0, y0, x1, y1): clipped to it, in its
    pixels, those with at least `min_visible` of their area (and some area) inside; and which
    of the n boxes those are."""
    x0, y0, x1, y1 = window
    lo = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype, device=boxes.device)
    hi = torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype, device=boxes.device)
    clipped = torch.minimum(torch.maximum(boxes, lo), hi)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    seen = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(1)
    keep = (seen > 0) & (seen >= min_visible * area)
    return clipped[keep] - lo, keep


def _slice_rules(s: Settings) -> list[tuple[bool, str]]:
    size = s["det.slice_size"]
    return [
        (
            size is None or size % 32 == 0,
            f"det.slice_size={size}: the window must be a multiple of 32 (the backbone's "
            "stride), e.g. 416, or null for off",
        ),
        (
            size is None or not s["det.random_shapes"],
            "det.slice_size and det.random_shapes both set the training size; use one",
        ),
    ]


DET_SLICE = Trick(
    "det_slice",
    ("detect",),
    (
        Key("det.slice_size", int, "(0, inf)", note="window side in px; null = off"),
        Key("det.slice_scale", float, "(0, inf)", note="1 = native resolution"),
        Key("det.slice_min_visible", float, "[0, 1]", note="share of a box's area"),
        Key("det.slice_full_prob", float, "[0, 1]", note="share of whole images"),
        Key("det.slice_object_prob", float, "[0, 1]", note="share of windows around a box"),
    ),
    {"det.slice_size": 416},
    "Akyon et al. 2022 (SAHI, slicing-aided fine-tuning)",
    "https://arxiv.org/abs/2202.06934",
    "train on random windows cut at native resolution (or slice_scale x native), now and "
    "then the whole image shrunk to the window; evaluation tiles at the same scale",
    advice="pays when objects are small at the training size: BCCD/4 trained at 2x "
    "(slice_scale=2) +18.3 map [+16.2, +20.5] over 3 seeds at 3.6x the training time and 7x "
    "the inference time (its tiles), twice what the whole image at 2x bought with the same "
    "pixels; aerial-drone at native resolution with slice_object_prob=0.5 +10.6 map "
    "[+6.8, +14.4] over 3 seeds at 1.2x the training time; not when sizes span a decade: "
    "Fashion scenes (12-160 px) at 2x -2.4 map [-10.1, +5.3], small objects +8.5 AP but "
    "medium and large -9.9 and -8.3; keep slice_full_prob low "
    "(0.5 cost 3.3 map on BCCD/4 and once killed the box head on aerial-drone) "
    "(docs/results/small-objects.md)",
    check=_slice_rules,
    build=lambda s: when(
        s["det.slice_size"],
        lambda: partial(
            slice_batch,
            size=s["det.slice_size"],
            min_visible=s["det.slice_min_visible"],
            full_prob=s["det.slice_full_prob"],
            object_prob=s["det.slice_object_prob"],
        ),
    ),
)
