"""Box-aware batched transforms: expand_boxes (SSD's zoom out), crop_boxes (SSD's IoU crop) and
resize_boxes (random shapes), checked on painted images: box k of an image is a solid 255
rectangle on black in channel 2 + k, so every box can be found again in the output pixels, and
channels 0 and 1 hold each pixel's column and row, so a crop's geometry can be read back.
All images are non-square (H = 48, W = 64) and tiny, so the file stays cheap on shared cores.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from freebies.detection import transforms
from freebies.detection.transforms import crop_boxes, expand_boxes, resize_boxes, shape_like

H, W = 48, 64


def random_boxes(g: torch.Generator, counts: list[int], lo: int = 10, hi: int = 30):
    """Integer-aligned boxes with sides in [lo, hi], inside an H x W image, `counts[i]` of them
    in image i."""
    out = []
    for n in counts:
        wh = torch.randint(lo, hi + 1, (n, 2), generator=g)
        xy = (torch.rand(n, 2, generator=g) * (torch.tensor([W, H]) - wh + 1)).floor()
        out.append(torch.cat([xy, xy + wh], 1).float())
    return out


def painted(boxes: list[torch.Tensor], h: int = H, w: int = W) -> torch.Tensor:
    """Channel 0: the column, channel 1: the row, channel 2 + k: box k at 255 on 0."""
    x = torch.zeros(len(boxes), 2 + max(len(b) for b in boxes), h, w)
    x[:, 0] = torch.arange(w, dtype=torch.float32)
    x[:, 1] = torch.arange(h, dtype=torch.float32)[:, None]
    for i, b in enumerate(boxes):
        for k, (x1, y1, x2, y2) in enumerate(b.long().tolist()):
            x[i, 2 + k, y1:y2, x1:x2] = 255.0
    return x


def paint_of(img: torch.Tensor, k: int) -> torch.Tensor:
    """The bounding box (xyxy) of the pixels at least half covered by box k's paint."""
    ys, xs = torch.nonzero(img[2 + k] >= 127.5, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def per_box(a: float, b: float) -> torch.Tensor:
    return torch.tensor([a, b, a, b])


# --------------------------------------------------------------------------------------------
# expand_boxes


def pasted_rect(img: torch.Tensor, fill: float) -> tuple[int, int, int, int]:
    """(ox, oy, w', h') of the pasted image, read from where the canvas is not `fill`."""
    mask = (img != fill).any(0)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    ox, oy = int(xs.min()), int(ys.min())
    nw, nh = int(xs.max()) + 1 - ox, int(ys.max()) + 1 - oy
    assert int(mask.sum()) == nw * nh  # a solid rectangle, the rest all `fill`
    return ox, oy, nw, nh


def test_expand_moves_boxes_with_their_pixels():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(g, [3, 1, 2, 3, 2, 1, 3, 3, 2, 1])
    x = painted(boxes)
    c = x.shape[1]
    out, out_boxes = expand_boxes(
        x, boxes, torch.Generator().manual_seed(1), max_ratio=4.0, fill=[-1.0] * c, p=1.0
    )
    assert out.shape == x.shape and out.dtype == x.dtype
    widths = set()
    for img, b, o in zip(out, boxes, out_boxes, strict=True):
        ox, oy, nw, nh = pasted_rect(img, -1.0)
        widths.add(nw)
        # one ratio r in [1, 4] for both sides: w' = round(W / r), h' = round(H / r)
        assert W / 4 - 0.5 <= nw <= W and H / 4 - 0.5 <= nh <= H
        assert abs(nw / W - nh / H) <= 0.5 / W + 0.5 / H
        assert torch.equal(o, b * per_box(nw, nh) / per_box(W, H) + per_box(ox, oy))
        for k, box in enumerate(o):
            assert (paint_of(img, k) - box).abs().max() <= 1.0
    assert len(widths) > 3  # each image drew its own ratio


def test_expand_with_p0_or_max_ratio_1_changes_nothing():
    g = torch.Generator().manual_seed(2)
    boxes = random_boxes(g, [2, 0, 3])
    x = painted(boxes)
    for kwargs in ({"p": 0.0}, {"p": 1.0, "max_ratio": 1.0}):
        out, out_boxes = expand_boxes(x, boxes, torch.Generator().manual_seed(3), **kwargs)
        assert torch.equal(out, x)
        assert all(torch.equal(o, b) for o, b in zip(out_boxes, boxes, strict=True))


def test_expand_fills_with_each_images_channel_means_by_default():
    g = torch.Generator().manual_seed(4)
    boxes = random_boxes(g, [2] * 8)
    x = painted(boxes) + torch.rand(8, 4, 1, 1, generator=g) * 50  # different means per image
    sentinel, _ = expand_boxes(x, boxes, torch.Generator().manual_seed(5), fill=[-1.0] * 4, p=1)
    out, _ = expand_boxes(x, boxes, torch.Generator().manual_seed(5), p=1)  # same draws
    corners = 0
    for img, ref, mean in zip(out, sentinel, x.mean((2, 3)), strict=True):
        canvas = (ref == -1.0).all(0)
        torch.testing.assert_close(img[:, canvas], mean[:, None].expand(-1, int(canvas.sum())))
        if canvas[0, 0] or canvas[-1, -1]:
            corner = img[:, 0, 0] if canvas[0, 0] else img[:, -1, -1]
            torch.testing.assert_close(corner, mean)
            corners += 1
    assert corners > 0


def test_expand_is_seeded():
    g = torch.Generator().manual_seed(6)
    boxes = random_boxes(g, [1, 2, 3, 1])
    x = painted(boxes)
    a, ab = expand_boxes(x, boxes, torch.Generator().manual_seed(7))
    b, bb = expand_boxes(x, boxes, torch.Generator().manual_seed(7))
    c, _ = expand_boxes(x, boxes, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(ab, bb, strict=True))
    assert not torch.equal(a, c)


# --------------------------------------------------------------------------------------------
# crop_boxes


def read_crop(img: torch.Tensor) -> tuple[int, int, int, int]:
    """(left, top, cw, ch) of the crop behind an output image, from its column and row ramps:
    bilinear resizing keeps a ramp linear away from the borders."""
    geometry = []
    for ramp, size in ((img[0, H // 2], W), (img[1, :, W // 2], H)):
        j1, j2 = size // 4, 3 * size // 4
        slope = float(ramp[j2] - ramp[j1]) / (j2 - j1)  # cw / W
        geometry.append((round(float(ramp[j1]) - (j1 + 0.5) * slope + 0.5), round(slope * size)))
    (left, cw), (top, ch) = geometry
    return left, top, cw, ch


def test_crop_moves_boxes_with_their_pixels_and_keeps_says_which():
    g = torch.Generator().manual_seed(9)
    boxes = random_boxes(g, [3, 2, 3, 1, 3, 3, 2, 3] * 4, lo=16)  # none under min_size before
    boxes[5] = torch.zeros(0, 4)  # an image without boxes is never cropped
    x = painted(boxes)
    out, out_boxes, keeps = crop_boxes(x, boxes, torch.Generator().manual_seed(10), min_size=16)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[5], x[5]) and out_boxes[5].shape == (0, 4) and keeps[5].shape == (0,)
    cropped = off_centre = too_small = 0
    for img, src, b, o, keep in zip(out, x, boxes, out_boxes, keeps, strict=True):
        left, top, cw, ch = read_crop(img)
        if (left, top, cw, ch) == (0, 0, W, H):
            assert torch.equal(img, src)
        else:
            cropped += 1
            assert 0.5 <= (cw / W) / (ch / H) <= 2 and cw >= 0.3 * W and ch >= 0.3 * H
        centre = (b[:, :2] + b[:, 2:]) / 2
        lo, hi = per_box(left, top), per_box(left + cw, top + ch)
        centred = ((lo[:2] < centre) & (centre < hi[2:])).all(1)
        moved = (b.clamp(min=lo, max=hi) - lo) * per_box(W, H) / per_box(cw, ch)
        big = ((moved[:, 2:] - moved[:, :2]) >= 16).all(1)
        assert keep.dtype == torch.bool and torch.equal(keep, centred & big)
        assert torch.equal(o, moved[keep])
        off_centre += int((~centred).sum())
        too_small += int((centred & ~big).sum())
        assert bool((o >= 0).all() and (o[:, 2] <= W).all() and (o[:, 3] <= H).all())
        for k, box in zip(keep.nonzero()[:, 0].tolist(), o, strict=True):
            assert (paint_of(img, k) - box).abs().max() <= 1.0  # box k still covers its colour
    assert 0 < cropped < len(boxes) - 1 and off_centre > 0 and too_small > 0


TINY, WHOLE = torch.tensor([[30.0, 20.0, 34.0, 24.0]]), torch.tensor([[0.0, 0.0, W, H]])


def test_crop_needs_a_box_with_the_iou_of_its_mode(monkeypatch):
    # without the unconstrained mode: a 4 x 4 box has IoU < 0.1 with any crop of at least
    # 20 x 15 pixels: never cropped; a box over the whole image has IoU = the crop's share of
    # the image: cropped in most modes
    monkeypatch.setattr(transforms, "_MIN_IOUS", (math.inf, 0.1, 0.3, 0.5, 0.7, 0.9))
    tiny, whole = TINY, WHOLE
    boxes = [tiny, whole] * 16
    x = painted(boxes)
    out, out_boxes, keeps = crop_boxes(x, boxes, torch.Generator().manual_seed(11))
    assert all(torch.equal(out[i], x[i]) for i in range(0, 32, 2))
    assert all(torch.equal(out_boxes[i], tiny) and bool(keeps[i].all()) for i in range(0, 32, 2))
    assert sum(not torch.equal(out[i], x[i]) for i in range(1, 32, 2)) > 8


def test_crop_has_an_unconstrained_mode():
    # only the unconstrained mode (any crop holding a box centre) can crop around a 4 x 4 box
    boxes = [TINY] * 64
    x = painted(boxes)
    out, out_boxes, keeps = crop_boxes(x, boxes, torch.Generator().manual_seed(19))
    cropped = [i for i in range(64) if not torch.equal(out[i], x[i])]
    # drawn before "whole image" with probability 1/2, then found within the trials
    assert 16 < len(cropped) < 48
    for i in cropped:
        left, top, cw, ch = read_crop(out[i])
        assert left < 32 < left + cw and top < 22 < top + ch  # the box centre is inside
        assert bool(keeps[i].all()) and len(out_boxes[i]) == 1  # and the box is kept


def test_crop_keeps_an_image_no_crop_can_satisfy_whole_and_stops(monkeypatch):
    # no box, or only boxes centred on the border (no crop holds them strictly inside), even
    # when "whole image" is never drawn: the search gives up after its rounds
    border = torch.tensor([[-4.0, 20.0, 4.0, 28.0], [W - 3.0, H - 3.0, W + 3.0, H + 3.0]])
    boxes = [torch.zeros(0, 4), border, border[:1], torch.zeros(0, 4)]
    x = painted(boxes)
    for modes in ((0.0,), transforms._MIN_IOUS):
        monkeypatch.setattr(transforms, "_MIN_IOUS", modes)
        out, out_boxes, keeps = crop_boxes(x, boxes, torch.Generator().manual_seed(20))
        assert torch.equal(out, x)
        assert all(torch.equal(o, b) for o, b in zip(out_boxes, boxes, strict=True))
        assert all(bool(k.all()) and len(k) == len(b) for k, b in zip(keeps, boxes, strict=True))


def bccd_like(g: torch.Generator, n: int, h: int, w: int) -> list[torch.Tensor]:
    """`n` images' boxes as in BCCD (blood cells): 5 to 20 boxes a side 20 to 80 pixels."""
    out = []
    for _ in range(n):
        k = int(torch.randint(5, 21, (), generator=g))
        wh = torch.randint(20, 81, (k, 2), generator=g)
        xy = (torch.rand(k, 2, generator=g) * (torch.tensor([w, h]) - wh + 1)).floor()
        out.append(torch.cat([xy, xy + wh], 1).float())
    return out


def test_crop_crops_as_often_as_torchvisions_random_iou_crop():
    # the share of cropped images over 10 draws of 40 BCCD-like images; each share's binomial
    # standard error is at most sqrt(p (1 - p) / 400); the old rule (no unconstrained mode,
    # no redraw) cropped 16% here against torchvision's 69%
    h, w, reps = 320, 416, 10
    g = torch.Generator().manual_seed(21)
    boxes = bccd_like(g, 40, h, w)
    x = torch.rand(len(boxes), 1, h, w, generator=g)
    ours = 0
    for _ in range(reps):
        out, _, _ = crop_boxes(x, boxes, g)
        ours += sum(not torch.equal(o, i) for o, i in zip(out, x, strict=True))
    crop, img, theirs = v2.RandomIoUCrop(), tv_tensors.Image(torch.zeros(1, h, w)), 0
    with torch.random.fork_rng():
        torch.manual_seed(22)
        for _ in range(reps):
            for b in boxes:
                o, _ = crop(img, tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w)))
                theirs += o.shape[-2:] != (h, w)  # a crop is always smaller than the image
    n = reps * len(boxes)
    p = (ours + theirs) / (2 * n)
    se = math.sqrt(p * (1 - p) * 2 / n)  # of the difference of the two shares
    assert abs(ours - theirs) / n <= max(4 * se, 0.08), (ours / n, theirs / n)


def test_crop_with_min_scale_1_changes_nothing():
    g = torch.Generator().manual_seed(12)
    boxes = random_boxes(g, [3, 1, 2, 3] * 3)
    x = painted(boxes)
    out, out_boxes, keeps = crop_boxes(x, boxes, torch.Generator().manual_seed(13), min_scale=1)
    assert torch.equal(out, x)
    assert all(torch.equal(o, b) for o, b in zip(out_boxes, boxes, strict=True))
    assert all(bool(k.all()) and len(k) == len(b) for k, b in zip(keeps, boxes, strict=True))


def test_crop_is_seeded():
    g = torch.Generator().manual_seed(14)
    boxes = random_boxes(g, [3, 2, 3, 1] * 2)
    x = painted(boxes)
    a, ab, ak = crop_boxes(x, boxes, torch.Generator().manual_seed(15))
    b, bb, bk = crop_boxes(x, boxes, torch.Generator().manual_seed(15))
    assert torch.equal(a, b)
    assert all(torch.equal(p, q) for p, q in zip(ab + ak, bb + bk, strict=True))


# --------------------------------------------------------------------------------------------
# resize_boxes


@pytest.mark.parametrize("size", [32, 56, 96])  # shrink both sides, shrink W / grow H, grow both
def test_resize_scales_boxes_exactly_with_their_pixels(size):
    g = torch.Generator().manual_seed(16)
    boxes = random_boxes(g, [3, 0, 2])
    x = painted(boxes)
    out, out_boxes = resize_boxes(x, boxes, size)
    assert out.shape == (3, x.shape[1], size, size) and out.dtype == x.dtype
    for img, b, o in zip(out, boxes, out_boxes, strict=True):
        assert torch.equal(o, b * size / per_box(W, H))
        for k, box in enumerate(o):
            assert (paint_of(img, k) - box).abs().max() <= 1.0


# --------------------------------------------------------------------------------------------
# errors and devices


def _batch():
    return torch.zeros(2, 3, H, W), [torch.zeros(0, 4), torch.tensor([[1.0, 2.0, 30.0, 40.0]])]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, b: expand_boxes(x, b, max_ratio=0.5), r"^expand_boxes: max_ratio must be"),
        (lambda x, b: expand_boxes(x, b, max_ratio=float("inf")), r"^expand_boxes: max_ratio"),
        (lambda x, b: expand_boxes(x, b, p=1.5), r"^expand_boxes: p must be in \[0, 1\]"),
        (lambda x, b: expand_boxes(x, b, p=-0.1), r"^expand_boxes: p must be in \[0, 1\]"),
        (lambda x, b: expand_boxes(x, b, fill=[1.0, 2.0]), r"^expand_boxes: fill must hold 3"),
        (
            lambda x, b: expand_boxes(x, b[:1]),
            r"^expand_boxes: boxes must hold one tensor per image of x, got 1 for 2",
        ),
        (lambda x, b: expand_boxes(x[0], b), r"^expand_boxes: x must be a 4-D float batch"),
        (lambda x, b: crop_boxes(x, b, min_scale=0), r"^crop_boxes: min_scale must be in"),
        (lambda x, b: crop_boxes(x, b, min_scale=1.5), r"^crop_boxes: min_scale must be in"),
        (lambda x, b: crop_boxes(x, b, trials=0), r"^crop_boxes: trials must be an int >= 1"),
        (lambda x, b: crop_boxes(x, b, min_size=-1), r"^crop_boxes: min_size must be >= 0"),
        (
            lambda x, b: crop_boxes(x, [b[0], b[1][:, :3]]),
            r"^crop_boxes: boxes must be float \(n_i, 4\) tensors, got \['\(1, 3\) torch",
        ),
        (
            lambda x, b: crop_boxes(x, [b[0], b[1].long()]),
            r"^crop_boxes: boxes must be float \(n_i, 4\) tensors, got \['\(1, 4\) torch.int64",
        ),
        (lambda x, b: resize_boxes(x, b, 0), r"^resize_boxes: size must be a positive int"),
        (lambda x, b: resize_boxes(x, b, 32.0), r"^resize_boxes: size must be a positive int"),
        (
            lambda x, b: resize_boxes(x, b * 2, 32),
            r"^resize_boxes: boxes must hold one tensor per image of x, got 4",
        ),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_function(call, match):
    x, b = _batch()
    with pytest.raises(ValueError, match=match):
        call(x, b)


def test_integer_images_are_a_type_error():
    x, b = _batch()
    with pytest.raises(TypeError, match=r"^resize_boxes: x must be a 4-D float batch"):
        resize_boxes(x.to(torch.uint8), b, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_all_three_run_on_cuda():
    g = torch.Generator().manual_seed(17)
    boxes = [b.cuda() for b in random_boxes(g, [3, 0, 2, 1])]
    x = painted(boxes).cuda()
    gen = torch.Generator(device="cuda").manual_seed(18)
    out, ex = expand_boxes(x, boxes, gen, fill=[-1.0] * x.shape[1], p=1)
    for img, b, o in zip(out.cpu(), boxes, ex, strict=True):
        ox, oy, nw, nh = pasted_rect(img, -1.0)
        assert o.is_cuda and torch.equal(
            o.cpu(), b.cpu() * per_box(nw, nh) / per_box(W, H) + per_box(ox, oy)
        )
    out, cb, keeps = crop_boxes(x, boxes, gen, min_scale=0.5)
    assert out.is_cuda and all(o.is_cuda and k.is_cuda for o, k in zip(cb, keeps, strict=True))
    assert all(int(k.sum()) == len(o) for o, k in zip(cb, keeps, strict=True))
    out, rb = resize_boxes(x, boxes, 40)
    assert out.shape[-2:] == (40, 40) and all(o.is_cuda for o in rb)


def test_random_shapes_keep_a_rectangular_batch_aspect():
    assert shape_like(256, 416, 416) == (256, 256)
    assert shape_like(256, 320, 416) == (192, 256)  # 196.9 -> 192
    assert shape_like(288, 416, 320) == (288, 224)  # 221.5 -> 224
    assert shape_like(96, 32, 416) == (32, 96)  # never below one stride
    x = torch.rand(2, 3, 40, 80) * 255
    boxes = [torch.tensor([[8.0, 4.0, 72.0, 36.0]]), torch.zeros((0, 4))]
    out, moved = resize_boxes(x, boxes, (20, 60))
    assert out.shape == (2, 3, 20, 60)
    torch.testing.assert_close(moved[0], torch.tensor([[6.0, 2.0, 54.0, 18.0]]))
