"""Box-aware augmentation on batched tensors: images move, and their boxes move with them.

Boxes are xyxy in pixels, one (n_i, 4) tensor per image, because images hold different
numbers of boxes. Every image draws its own parameters from the optional ``generator``, on
x's device; the output batch keeps its shape (N, C, H, W), as a fixed-size batch needs.

- SSD's zoom out and IoU-constrained crop: Liu et al. 2016, "SSD: Single Shot MultiBox
  Detector", https://arxiv.org/abs/1512.02325 (section 2.2, data augmentation); both are in
  Zhang et al. 2019, "Bag of Freebies for Training Object Detection Neural Networks",
  https://arxiv.org/abs/1902.04103 (section 3.3). The crop follows torchvision's v2
  ``RandomIoUCrop``: an unconstrained mode besides SSD's minimum IoUs, and a new mode drawn
  after failed trials.
- Random shapes (a new input size every few steps, from YOLOv3): Zhang et al. 2019, section 3.5.

Written by hand: torchvision's v2 ``RandomZoomOut`` / ``RandomIoUCrop`` transform one sample
at a time from the global random state (no ``torch.Generator``) and change its size, so a
batch would need a Python loop over them and a resize after each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch.nn import functional as F
from torchvision.ops import box_iou

from freebies.tricks.checks import check_generator, check_images
from freebies.tricks.record import Key, Settings, Trick, when

# SSD's crop modes, as torchvision's v2 RandomIoUCrop: the minimum IoU between the crop and a box
# whose centre it holds; inf keeps the whole image, 0.0 takes any crop holding a box centre.
_MIN_IOUS = (math.inf, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
# Rounds of (mode, `trials` crops) before an image that never found a crop is kept whole.
_ROUNDS = 50


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


def _check_batch(
    x: torch.Tensor, boxes: list[torch.Tensor], generator: torch.Generator | None, fn: str
) -> None:
    """`x` a float batch, `boxes` one float (n_i, 4) tensor per image, `generator` on x's device."""
    check_images(x, fn)
    if len(boxes) != x.shape[0]:
        raise ValueError(
            f"{fn}: boxes must hold one tensor per image of x, got {len(boxes)} for "
            f"{x.shape[0]} images"
        )
    bad = [
        f"{tuple(b.shape)} {b.dtype}"
        for b in boxes
        if b.dim() != 2 or b.shape[1] != 4 or not b.is_floating_point()
    ]
    if bad:
        raise ValueError(f"{fn}: boxes must be float (n_i, 4) tensors, got {bad}")
    check_generator(x, generator, fn)


def _resize(x: torch.Tensor, h: int, w: int, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of (N, C, h0, w0) to (N, C, h, w), pixel centres aligned as in PIL."""
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)


def _per_box(b: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """(v0, v1, v2, v3) as a tensor in the boxes' dtype and device, to scale or shift xyxy.

    Callers scale by multiplying by the new size, then dividing by the old one: each step is
    correctly rounded, so a box edge on the old border lands exactly on the new one, where a
    precomputed ratio new / old can overshoot the image by one ulp.
    """
    return torch.tensor(values, dtype=b.dtype, device=b.device)


def expand_boxes(
    x: torch.Tensor,
    boxes: list[torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    max_ratio: float = 4.0,
    fill: Sequence[float] | None = None,
    p: float = 0.5,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SSD's "zoom out" (Liu et al. 2016; Zhang et al. 2019, section 3.3): shrink each image with
    probability p and paste it at a random place on a canvas of its own size.

    An image draws r ~ U[1, max_ratio], is resized to (h', w') = (round(H / r), round(W / r))
    (bilinear, antialiased) and pasted at a uniform integer offset ox in [0, W - w'],
    oy in [0, H - h'] on an H x W canvas filled with `fill`. This is SSD's expansion onto an
    r x larger canvas, resized back to the input size so that the batch keeps its shape.

    Args:
        x: images (N, C, H, W), float, pixel values in 0..255.
        boxes: N float tensors (n_i, 4), xyxy pixels in x's frame.
        generator: optional source of randomness, on x's device.
        max_ratio: the largest zoom-out factor, >= 1.
        fill: C per-channel canvas values in pixel units; None: each image's channel means.
        p: the probability that an image is zoomed out, in [0, 1].

    Returns:
        The images and boxes; a moved box is b * (w', h', w', h') / (W, H, W, H)
        + (ox, oy, ox, oy), i.e. scaled by (w'/W, h'/H) and shifted by (ox, oy).
    """
    _check_batch(x, boxes, generator, "expand_boxes")
    if not 1 <= max_ratio < math.inf:
        raise ValueError(f"expand_boxes: max_ratio must be a finite number >= 1, got {max_ratio}")
    if not 0 <= p <= 1:
        raise ValueError(f"expand_boxes: p must be in [0, 1], got {p}")
    n, c, h, w = x.shape
    if fill is None:
        fills = x.mean((2, 3))
    else:
        fills = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
        if fills.shape != (c,):
            raise ValueError(
                f"expand_boxes: fill must hold {c} values (one per channel), got {fill!r}"
            )
        fills = fills.expand(n, c)
    u = torch.rand(n, 4, generator=generator, device=x.device, dtype=torch.float64)
    hw = torch.tensor([h, w], device=x.device)
    size = (hw / (1 + (max_ratio - 1) * u[:, 1:2])).round().clamp(min=1).long()  # (N, 2)
    room = hw - size
    offset = torch.minimum((u[:, 2:] * (room + 1)).long(), room)  # (N, 2): oy, ox
    params = torch.cat([(u[:, :1] < p).long(), size, offset], 1).tolist()  # one device sync
    out, out_boxes = x.clone(), list(boxes)
    for i, (zoom, nh, nw, oy, ox) in enumerate(params):
        if not zoom:
            continue
        out[i] = fills[i, :, None, None]
        out[i, :, oy : oy + nh, ox : ox + nw] = _resize(x[i : i + 1], nh, nw)[0]
        b = boxes[i]
        scaled = b * _per_box(b, [nw, nh] * 2) / _per_box(b, [w, h] * 2)
        out_boxes[i] = scaled + _per_box(b, [ox, oy] * 2)
    return out, out_boxes


def _trial_crops(
    h: int, w: int, pad: torch.Tensor, least: torch.Tensor, min_scale: float, trials: int, draw
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`trials` random crops for each of k images: the crops (k, T, 4) xyxy, whether each is
    accepted (k, T), and whether each box's centre lies strictly inside it (k, T, M), given the
    boxes `pad` (k, M, 4) and each image's minimum IoU `least` (k,)."""
    k = len(pad)
    # round() first: 0.3 * 10 is 3.0000000000000004, whose ceiling would leave out width 3
    cw = torch.randint(math.ceil(round(min_scale * w, 9)), w + 1, (k, trials), **draw)
    ch = torch.randint(math.ceil(round(min_scale * h, 9)), h + 1, (k, trials), **draw)
    u = torch.rand(2, k, trials, dtype=torch.float64, **draw)
    left = torch.minimum((u[0] * (w - cw + 1)).long(), w - cw)
    top = torch.minimum((u[1] * (h - ch + 1)).long(), h - ch)
    crops = torch.stack([left, top, left + cw, top + ch], -1)  # (k, T, 4)
    centre = ((pad[:, :, :2] + pad[:, :, 2:]) / 2)[:, None]  # (k, 1, M, 2)
    c = crops[:, :, None].double()  # (k, T, 1, 4)
    inside = ((c[..., :2] < centre) & (centre < c[..., 2:])).all(-1)  # (k, T, M)
    best = box_iou(crops.double(), pad).masked_fill(~inside, -1.0).amax(-1)  # (k, T)
    aspect = (cw * h) / (ch * w)  # the crop's w / h relative to the image's
    valid = (aspect >= 0.5) & (aspect <= 2.0) & inside.any(-1) & (best >= least[:, None])
    return crops, valid, inside


def _search_crops(
    x: torch.Tensor,
    boxes: list[torch.Tensor],
    generator: torch.Generator | None,
    min_scale: float,
    trials: int,
) -> tuple[list[list[int] | None], torch.Tensor]:
    """SSD's crop search, as torchvision's RandomIoUCrop but all images at once, in rounds:
    each image still searching draws a mode, then `trials` crops; one that accepts none draws
    again next round. Returns each image's accepted crop [left, top, right, bottom] (None: keep
    the image whole) and (N, max n_i) whether each box's centre lies strictly inside it."""
    n, _, h, w = x.shape
    dev = x.device
    draw = {"generator": generator, "device": dev}
    # Boxes padded to (N, M, 4); a padding box's centre (-1, -1) is outside every crop.
    pad = torch.full(
        (n, max(1, *(len(b) for b in boxes)), 4), -1.0, dtype=torch.float64, device=dev
    )
    for i, b in enumerate(boxes):
        pad[i, : len(b)] = b
    min_ious = torch.tensor(_MIN_IOUS, dtype=torch.float64, device=dev)
    found = torch.zeros(n, 4, dtype=torch.long, device=dev)
    accepted = torch.zeros(n, dtype=torch.bool, device=dev)
    centred = torch.zeros(pad.shape[:2], dtype=torch.bool, device=dev)
    todo = torch.tensor([i for i, b in enumerate(boxes) if len(b)], dtype=torch.long, device=dev)
    for _ in range(_ROUNDS):
        least = min_ious[torch.randint(len(_MIN_IOUS), (len(todo),), **draw)]
        todo, least = todo[least < 1], least[least < 1]  # a mode >= 1 keeps the image whole
        if len(todo) == 0:
            break
        crops, valid, inside = _trial_crops(h, w, pad[todo], least, min_scale, trials, draw)
        ok, first = valid.any(1), valid.int().argmax(1)  # the first accepted trial
        rows = torch.arange(len(todo), device=dev)[ok]
        found[todo[ok]], centred[todo[ok]] = crops[rows, first[ok]], inside[rows, first[ok]]
        accepted[todo[ok]] = True
        todo = todo[~ok]
    chosen = found.tolist()
    return [cr if ok else None for ok, cr in zip(accepted.tolist(), chosen, strict=True)], centred


def crop_boxes(
    x: torch.Tensor,
    boxes: list[torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    min_scale: float = 0.3,
    trials: int = 50,
    min_size: float = 2.0,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """SSD's random IoU-constrained crop (Liu et al. 2016; Zhang et al. 2019, section 3.3),
    resized back to the input size.

    The rule of torchvision's v2 RandomIoUCrop: each image draws a minimum IoU from (whole image,
    0, 0.1, 0.3, 0.5, 0.7, 0.9). For the whole image, or an image without boxes, nothing changes.
    Otherwise up to `trials` crops are drawn: integer width in [min_scale * W, W] and height in
    [min_scale * H, H], at a uniform integer position inside the image; a crop is rejected when
    its w / h relative to W / H is outside [0.5, 2], when no box has its centre strictly inside
    it, or when the largest IoU between the crop and those boxes is below the minimum (0: any
    crop holding a box centre). The first accepted crop is used; when none is, the image draws a
    new minimum and tries again, and after 50 such rounds it is kept whole.

    On a crop [l, t, r, b] of size (cw, ch): the boxes whose centre lies strictly inside are
    kept, the others dropped; a kept box is clipped to the crop, shifted by (l, t) and scaled by
    (W / cw, H / ch), i.e. (clamp(box, (l, t, l, t), (r, b, r, b)) - (l, t, l, t))
    * (W, H, W, H) / (cw, ch, cw, ch); then boxes narrower or shorter than `min_size` pixels
    (in the output) are dropped. The crop's pixels are resized to H x W (bilinear, antialiased);
    an image kept whole keeps all its boxes as they are.

    Args:
        x: images (N, C, H, W), float, pixel values in 0..255.
        boxes: N float tensors (n_i, 4), xyxy pixels in x's frame.
        generator: optional source of randomness, on x's device.
        min_scale: the smallest crop side as a fraction of the image's, in (0, 1].
        trials: crops drawn per image for each minimum IoU it draws, >= 1.
        min_size: the smallest width and height (output pixels) of a kept box, >= 0.

    Returns:
        The images, the boxes, and keeps: N bool tensors (n_i,) over each image's original boxes
        saying which survive (to filter labels or per-box weights the same way).
    """
    _check_batch(x, boxes, generator, "crop_boxes")
    if not 0 < min_scale <= 1:
        raise ValueError(f"crop_boxes: min_scale must be in (0, 1], got {min_scale}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"crop_boxes: trials must be an int >= 1, got {trials!r}")
    if not min_size >= 0:
        raise ValueError(f"crop_boxes: min_size must be >= 0, got {min_size}")
    _, _, h, w = x.shape
    crops, inside = _search_crops(x, boxes, generator, min_scale, trials)
    out, out_boxes, keeps = x.clone(), [], []
    for i, (b, crop) in enumerate(zip(boxes, crops, strict=True)):
        if crop is None:
            out_boxes.append(b)
            keeps.append(torch.ones(len(b), dtype=torch.bool, device=b.device))
            continue
        left, top, right, bottom = crop
        out[i] = _resize(x[i : i + 1, :, top:bottom, left:right], h, w)[0]
        centred = inside[i, : len(b)].to(b.device)
        lo, hi = _per_box(b, [left, top] * 2), _per_box(b, [right, bottom] * 2)
        clipped = torch.minimum(torch.maximum(b[centred], lo), hi) - lo
        moved = clipped * _per_box(b, [w, h] * 2) / (hi - lo)
        big = ((moved[:, 2:] - moved[:, :2]) >= min_size).all(1)
        keep = centred.clone()
        keep[centred] = big
        out_boxes.append(moved[big])
        keeps.append(keep)
    return out, out_boxes, keeps


def resize_boxes(
    x: torch.Tensor, boxes: list[torch.Tensor], size: int | tuple[int, int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Resize the whole batch to `size` (h, w), or size x size, and its boxes: the input size of
    "random shapes" training (Zhang et al. 2019, section 3.5, from YOLOv3).

    Args:
        x: images (N, C, H, W), float, pixel values in 0..255.
        boxes: N float tensors (n_i, 4), xyxy pixels in x's frame.
        size: the new height and width, positive ints (one int: a square).

    Returns:
        The images (N, C, h, w), bilinear (antialiased when shrinking), and the boxes
        scaled by (w / W, h / H), as b * (w, h, w, h) / (W, H, W, H).
    """
    _check_batch(x, boxes, None, "resize_boxes")
    hw = [size, size] if isinstance(size, int) else list(size) if isinstance(size, tuple) else []
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f"resize_boxes: size must be a positive int or (h, w), got {size!r}")
    (h, w), (_, _, h0, w0) = hw, x.shape
    x = _resize(x, h, w, antialias=h < h0 or w < w0)
    return x, [b * _per_box(b, [w, h] * 2) / _per_box(b, [w0, h0] * 2) for b in boxes]


def shape_like(size: int, h: int, w: int) -> tuple[int, int]:
    """Random shapes on an (h, w) batch: the longer side becomes `size`, the other keeps the
    aspect ratio, rounded to a multiple of 32 (at least 32); a square batch gets size x size."""
    f = size / max(h, w)
    return tuple(size if v == max(h, w) else max(32, round(v * f / 32) * 32) for v in (h, w))


def random_shape(shapes: Sequence[int], every: int, seed: int, step: int) -> int:
    """Random shapes (YOLOv3; Zhang et al. 2019, section 3.5): the training size for global
    `step`, drawn from `shapes` every `every` steps. Every rank and a resumed run draw the same
    size: it depends only on the seed and the step."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step // every)
    return shapes[int(torch.randint(len(shapes), (), generator=g))]


def _shape_rules(s: Settings) -> list[tuple[bool, str]]:
    shapes = s["det.random_shapes"]
    return [
        (
            shapes is None or len(shapes) > 0,
            "det.random_shapes is empty; list sizes such as [192,224,256], or null for off",
        ),
        (
            shapes is None or all(v > 0 and v % 32 == 0 for v in shapes),
            f"det.random_shapes={shapes}: every size must be a positive multiple of 32 (the "
            "backbone's stride)",
        ),
    ]


DET_HFLIP = Trick(
    "det_hflip",
    ("detect",),
    (Key("det.hflip", bool),),
    {"det.hflip": True},
    "Zhang et al. 2019 (detection bag of freebies)" + "; Liu et al. 2016 (SSD)",
    "https://arxiv.org/abs/1902.04103",
    "random horizontal flip, boxes flipped with the image (on in the detection recipes)",
    build=lambda s: when(s["det.hflip"], lambda: hflip_boxes),
)
DET_EXPAND = Trick(
    "det_expand",
    ("detect",),
    (Key("det.expand", bool), Key("det.expand_ratio", float, "[1, inf)", note="SSD: 4")),
    {"det.expand": True},
    "Zhang et al. 2019 (detection bag of freebies)" + "; Liu et al. 2016 (SSD)",
    "https://arxiv.org/abs/1512.02325",
    "zoom out: shrink the image by up to expand_ratio onto a mean-filled canvas",
    build=lambda s: when(
        s["det.expand"], lambda: partial(expand_boxes, max_ratio=s["det.expand_ratio"])
    ),
    advice="pays at convergence on both sets measured: scenes (500 images, 40 epochs) +4.8 "
    "map [+1.7, +8.0], AP-small +7.5; BCCD (205 images, 20 epochs) +4.5 [+1.5, +7.4]; "
    "costs at a short budget (scenes, 500 steps: -4.4); stacked with others it underfits "
    "at these budgets (docs/results/detection.md)",
)
DET_CROP = Trick(
    "det_crop",
    ("detect",),
    (Key("det.crop", bool), Key("det.crop_min_scale", float, "(0, 1]", note="SSD: 0.3")),
    {"det.crop": True},
    "Zhang et al. 2019 (detection bag of freebies)" + "; Liu et al. 2016 (SSD)",
    "https://arxiv.org/abs/1512.02325",
    "random crop with a minimum IoU (or none) to some box, redrawn until one fits or the whole "
    "image is drawn; boxes clipped, tiny ones dropped",
    build=lambda s: when(
        s["det.crop"], lambda: partial(crop_boxes, min_scale=s["det.crop_min_scale"])
    ),
    advice="costs from scratch, at both budgets: at convergence scenes -4.1 map [-8.5, "
    "+0.4] (-2.9 val), BCCD -0.4 (platelets -9 AP); scenes short budget -5.1; leave it "
    "off (docs/results/detection.md)",
)
DET_RANDOM_SHAPES = Trick(
    "det_random_shapes",
    ("detect",),
    (
        Key("det.random_shapes", list, "(0, inf)", note="multiples of 32; null = off"),
        Key("det.random_shapes_scale", tuple, "(0, inf)", note="[lo, hi] x data.image_size"),
        Key("det.random_shapes_every", int, "(0, inf)", note="iterations"),
    ),
    {"det.random_shapes_scale": [0.75, 1.25]},
    "Zhang et al. 2019 (detection bag of freebies)" + "; Redmon & Farhadi 2018 (YOLOv3)",
    "https://arxiv.org/abs/1902.04103",
    "every k iterations the whole batch trains at a size drawn from the list (or from every "
    "multiple of 32 in [lo, hi] x data.image_size); evaluation stays at data.image_size",
    check=_shape_rules,
    build=lambda s: when(
        s["det.random_shapes"],
        lambda: partial(
            random_shape,
            s["det.random_shapes"],
            s["det.random_shapes_every"],
            s["train.seed"],
        ),
    ),
    advice="the largest single gain at convergence on Fashion scenes (192-320 px around "
    "256, 40 epochs: +8.5 map [+5.6, +11.4], AP-small +7.5), nothing measurable on BCCD "
    "(320-512 around 416, 20 epochs: -0.5, +1.2 val) nor at a short budget; peak memory "
    "follows the largest size (docs/results/detection.md)",
)
