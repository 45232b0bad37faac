"""Small objects at inference: an image pyramid and batched tiled ("sliced") inference.

The seed notes' section 8.1: look at the image at several scales (an image pyramid, as in
MTCNN or SNIP, Singh & Davis 2018, https://arxiv.org/abs/1711.08189) and through overlapping
windows (SAHI, Akyon et al. 2022, https://arxiv.org/abs/2202.06934), so that a small object
covers enough input pixels to be found.

Every function takes any torchvision-style detector: `model(list of (C, H, W) float images)`
returns one {"boxes", "scores", "labels"} per image, and `model.transform` has torchvision's
`min_size` / `max_size`. That transform resizes every input to its size, which would shrink an
enlarged image or tile straight back; `native_size` pins it to the tensor actually given, so
the backbone sees those pixels.

Merging (`merge_detections`): "nms" is class-wise IoU non-maximum suppression over every
pass. "ios" (the default with tiles) first deals with the pieces of cut objects: a tile's box
that touches one of the tile's inner edges (within 2% of the tile's side) is a piece. A piece
lying mostly inside (intersection over the piece's area >= the threshold) a same-class box that
touches no inner edge is dropped, since another pass saw that object whole. The pieces left are
grouped greedily by score, same class, intersection over the smaller box >= the threshold, and
each group becomes its enclosing box at its best score: the halves of an object that no pass
saw whole. Then class-wise IoU-NMS runs over everything. IoU-NMS alone cannot join two halves
(they barely overlap) and keeps a half beside the whole; joining every box by IoS, as SAHI's
GREEDYNMM does, lets one low-score box that contains a good one swell it (on Fashion scenes
that lost most of the map), so only pieces are ever joined.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_area

MERGES = ("ios", "nms")
Dets = list[dict[str, torch.Tensor]]


@contextlib.contextmanager
def native_size(model: nn.Module, h: int, w: int) -> Iterator[None]:
    """Let a torchvision detector's transform keep an (h, w) input at its size.

    GeneralizedRCNNTransform scales by min(min_size / min(h, w), max_size / max(h, w)); with
    min_size = min(h, w) and max_size = max(h, w) that factor is exactly 1. A model
    without such a transform is left as it is.
    """
    t = getattr(model, "transform", None)
    if t is None:
        yield
        return
    before = t.min_size, t.max_size
    t.min_size, t.max_size = (min(h, w),), max(h, w)
    try:
        yield
    finally:
        t.min_size, t.max_size = before


def _detect(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dets:
    """The detector on a batch of same-sized images (N, C, h, w), `batch_size` at a time."""
    out: Dets = []
    with torch.no_grad(), native_size(model, x.shape[-2], x.shape[-1]):
        for chunk in x.split(batch_size):
            out += model(list(chunk.unbind(0)))
    return out


def _side(boxes: torch.Tensor) -> torch.Tensor:
    """sqrt(w * h) of xyxy boxes."""
    return box_area(boxes).clamp(min=0).sqrt()


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if (h, w) == tuple(x.shape[-2:]):
        return x
    shrink = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


def _moved(boxes: torch.Tensor, sx: float, sy: float, dx: float = 0, dy: float = 0) -> torch.Tensor:
    """xyxy boxes scaled by (sx, sy), then shifted by (dx, dy): float64 arithmetic, float32
    out (never back to a bf16 of autocast, whose steps are 8 px beyond 1024)."""
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64, device=boxes.device)
    shift = torch.tensor([dx, dy, dx, dy], dtype=torch.float64, device=boxes.device)
    return (boxes.double() * scale + shift).float()


def check_scales(scales: Sequence[float]) -> None:
    if not all(s > 0 and math.isfinite(s) for s in scales):
        raise ValueError(f"pyramid: every scale must be a number > 0, got {list(scales)}")


def pyramid_parts(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float],
    snip: float | None,
    bs: int,
    base: float = 1.0,
) -> list[Dets]:
    """Each image's detections at every scale, in its own pixels (unmerged). With `snip`, a
    pass enlarged beyond `base` (the scale at which the model saw images in training) keeps
    only boxes below it, one shrunk below `base` only those at least as large."""
    n, _, h, w = images.shape
    parts: list[Dets] = [[] for _ in range(n)]
    for f in scales:
        sh, sw = max(1, round(h * f)), max(1, round(w * f))
        for i, det in enumerate(_detect(model, _resize(images, sh, sw), bs)):
            boxes = _moved(det["boxes"], w / sw, h / sh)
            keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
            if snip is not None and not math.isclose(f, base):
                keep = _side(boxes) < snip if f > base else _side(boxes) >= snip
            parts[i].append({k: v[keep] for k, v in {**det, "boxes": boxes}.items()})
    return parts


def tile_windows(
    h: int,
    w: int,
    *,
    grid: tuple[int, int] | None = None,
    tile_size: int | None = None,
    overlap: float = 0.2,
) -> list[tuple[int, int, int, int]]:
    """Overlapping windows (x0, y0, x1, y1) of one size that cover an h x w image.

    Neighbours share at least ``floor(overlap * tile)`` pixels (the overlap taken as the
    decimal it is written as, 0.3 = 3/10; all arithmetic on integers). Either `grid` =
    (rows, cols): the smallest tiles with which that many per axis keep the overlap; or
    `tile_size`: square tiles of that side (at most the image's), as few per axis as keep it
    (512 px, 64 px tiles, overlap 0.3: 11 per axis, 45 px apart). Tiles are spaced evenly
    (rounded to whole pixels) with the first at 0 and the last ending at the image's edge, so
    edge tiles have the full size too, and no two windows are the same.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"tiles: overlap must be in [0, 1), got {overlap}")
    if (grid is None) == (tile_size is None):
        raise ValueError("tiles: give exactly one of grid and tile_size")
    share = Fraction(str(overlap))  # exact: float 0.3 * 64 would floor or ceil the wrong way
    if grid is not None:
        rows, cols = grid
        if rows < 1 or cols < 1 or rows > h or cols > w:
            raise ValueError(f"tiles: a {rows}x{cols} grid does not fit a {h}x{w} image")
        th, tw = _tile_for(h, rows, share), _tile_for(w, cols, share)
    else:
        if tile_size < 1:
            raise ValueError(f"tiles: tile_size must be >= 1, got {tile_size}")
        th, tw = min(tile_size, h), min(tile_size, w)
        rows, cols = _count_for(h, th, share), _count_for(w, tw, share)
    ys, xs = _spread(h - th, rows), _spread(w - tw, cols)
    return [(x, y, x + tw, y + th) for y in ys for x in xs]


def _step(tile: int, share: Fraction) -> int:
    """The largest distance between neighbouring tiles that keeps floor(share * tile) shared."""
    return tile - math.floor(share * tile)  # >= 1, as share < 1


def _count_for(length: int, tile: int, share: Fraction) -> int:
    """The fewest tiles of side `tile` that cover `length` keeping the overlap."""
    return 1 + -(-(length - tile) // _step(tile, share))


def _tile_for(length: int, count: int, share: Fraction) -> int:
    """The smallest tile side with which `count` tiles cover `length` keeping the overlap (the
    step grows with the tile, so the first side that works is the smallest)."""
    return next(t for t in range(1, length + 1) if (count - 1) * _step(t, share) >= length - t)


def _spread(room: int, count: int) -> list[int]:
    """`count` starts from 0 to `room`, evenly spaced, each rounded half up to a whole pixel."""
    if count == 1:
        return [0]
    return [(2 * k * room + count - 1) // (2 * (count - 1)) for k in range(count)]


def tile_parts(
    model: nn.Module,
    images: torch.Tensor,
    windows: list[tuple[int, int, int, int]],
    input_size: int,
    bs: int,
    snip: float | None = None,
) -> list[Dets]:
    """Each image's detections in every window, upsampled to `input_size` (unmerged), each
    box marked "cut" when it touches an inner edge of its window; with `snip`, only the boxes
    whose side is below it."""
    n, _, h, w = images.shape
    x0, y0, x1, y1 = windows[0]
    th, tw = y1 - y0, x1 - x0
    if any((b - t, r - le) != (th, tw) for le, t, r, b in windows):
        raise ValueError("tiles: every window must have the same size")
    f = input_size / max(th, tw)
    sh, sw = max(1, round(th * f)), max(1, round(tw * f))
    crops = torch.stack([images[:, :, t:b, le:r] for le, t, r, b in windows], 1)  # (N, T, ...)
    found = _detect(model, _resize(crops.flatten(0, 1), sh, sw), bs)
    parts: list[Dets] = [[] for _ in range(n)]
    for k, det in enumerate(found):
        i, win = k // len(windows), windows[k % len(windows)]
        det = {**det, "boxes": _moved(det["boxes"], tw / sw, th / sh, win[0], win[1])}
        det["cut"] = _touches_inner_edge(det["boxes"], win, h, w)
        if snip is not None:
            det = {k: v[_side(det["boxes"]) < snip] for k, v in det.items()}
        parts[i].append(det)
    return parts


def _touches_inner_edge(
    boxes: torch.Tensor, window: tuple[int, int, int, int], h: int, w: int
) -> torch.Tensor:
    """Which boxes reach, within 2% of the tile's side, an edge of `window` inside the image."""
    le, t, r, b = window
    m = 0.02 * max(r - le, b - t)
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for inner, reaches in (
        (le > 0, boxes[:, 0] <= le + m),
        (t > 0, boxes[:, 1] <= t + m),
        (r < w, boxes[:, 2] >= r - m),
        (b < h, boxes[:, 3] >= b - m),
    ):
        if inner:
            cut |= reaches
    return cut


def multiscale_detect(
    model: nn.Module,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    windows: list[tuple[int, int, int, int]] | None = None,
    input_size: int | None = None,
    snip: float | None = None,
    merge: str | None = None,
    threshold: float = 0.5,
    batch_size: int = 8,
    detections: int = 100,
    base: float = 1.0,
) -> Dets:
    """Detect on an image pyramid and/or tiles of each image, map back, merge.

    Args:
        model: a torchvision-style detector in eval mode.
        images: (N, C, H, W) float images in the model's input range.
        scales: the pyramid: each pass sees the image at round(H * f) x round(W * f); the
            default (1,) is the plain full-image pass that tiling adds to its windows; ()
            with windows runs the tiles alone.
        windows: tiles from `tile_windows(H, W, ...)`, all of one size, or None. Each is
            upsampled so its longer side is `input_size` (a crop at its own resolution would
            show the model the same pixels); the windows of all images run in batches.
        input_size: the side the model was trained at (needed with `windows`).
        snip: SNIP-style ranges, in original pixels: a pass with f > `base` and every tile
            keep only boxes whose side sqrt(w * h) is below `snip` (they exist for small
            objects), a pass with f < `base` only boxes at least that large; the pass at
            `base` keeps all. None keeps every box.
        merge: "ios" or "nms" (see `merge_detections`); default "ios" with tiles, else "nms".
        threshold: the merge's IoS or IoU threshold.
        batch_size: images (or tiles) per forward pass.
        detections: the most boxes kept per image, by score.
        base: the resize at which the model saw these images in training (images at their
            own resolution for a model trained letterboxed: the letterbox factor); the pass
            at `base` is the plain one that snip leaves whole.

    Returns:
        One {"boxes" (xyxy, the input's pixels), "scores", "labels"} per image.
    """
    check_scales(scales)
    if not scales and not windows:
        raise ValueError("multiscale_detect: give scales, windows or both")
    parts = pyramid_parts(model, images, scales, snip, batch_size, base)
    if windows:
        if input_size is None:
            raise ValueError("multiscale_detect: tiles need input_size (the training size)")
        tiles = tile_parts(model, images, windows, input_size, batch_size, snip)
        for mine, more in zip(parts, tiles, strict=True):
            mine += more
    mode = merge or ("ios" if windows else "nms")
    return [merge_parts(p, mode, threshold, detections) for p in parts]


def merge_parts(
    parts: Dets, merge: str, threshold: float, detections: int
) -> dict[str, torch.Tensor]:
    """One image's passes (from `pyramid_parts` and `tile_parts`) merged by `merge`, boxes
    without area dropped first, the best `detections` kept."""
    boxes, scores, labels = (
        torch.cat([p[k] for p in parts]) for k in ("boxes", "scores", "labels")
    )
    cut = torch.cat(
        [
            p.get("cut", torch.zeros(len(p["boxes"]), dtype=torch.bool, device=boxes.device))
            for p in parts
        ]
    )
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels = merge_detections(
        boxes[real], scores[real], labels[real], merge, threshold, cut=cut[real]
    )
    top = scores.argsort(descending=True)[:detections]
    return {"boxes": boxes[top], "scores": scores[top], "labels": labels[top]}


def _overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection areas of xyxy boxes a (n, 4) and b (m, 4): (n, m)."""
    # Not box_iou: IoS divides the intersection by the smaller area, and torchvision exposes
    # the intersection only through a private helper (ops.boxes._box_inter_union).
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    return (rb - lt).clamp(min=0).prod(-1)


def _join(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy groups by score (same class, IoS with the group's best >= threshold), each
    replaced by its enclosing box at the best score."""
    if len(boxes) == 0:
        return boxes, scores, labels
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    area = box_area(boxes)
    ios = _overlap(boxes, boxes) / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-9)
    joins = ((ios >= threshold) & (labels[:, None] == labels[None, :])).tolist()
    free, out, best = [True] * len(boxes), [], []
    for i in range(len(boxes)):
        if not free[i]:
            continue
        group = [i] + [j for j in range(i + 1, len(boxes)) if free[j] and joins[i][j]]
        for j in group:
            free[j] = False
        g = boxes[group]
        out.append(torch.cat([g[:, :2].min(0)[0], g[:, 2:].max(0)[0]]))
        best.append(i)
    kept = torch.tensor(best, dtype=torch.long, device=boxes.device)
    return torch.stack(out), scores[kept], labels[kept]


def merge_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    threshold: float,
    cut: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the passes' boxes (see the module docstring for both rules); `cut` marks the
    pieces (tile boxes at an inner tile edge), which only "ios" treats apart."""
    if mode not in MERGES:
        raise ValueError(f"merge_detections: mode must be one of {', '.join(MERGES)}, got {mode!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"merge_detections: threshold must be in (0, 1], got {threshold}")
    if mode == "ios" and cut is not None and cut.any():
        whole, piece = (~cut).nonzero().flatten(), cut.nonzero().flatten()
        inside = _overlap(boxes[piece], boxes[whole]) / box_area(boxes[piece])[:, None].clamp(
            min=1e-9
        )
        seen = ((inside >= threshold) & (labels[piece, None] == labels[None, whole])).any(1)
        piece = piece[~seen]
        joined = _join(boxes[piece], scores[piece], labels[piece], threshold)
        boxes, scores, labels = (
            torch.cat([v[whole], j]) for v, j in zip((boxes, scores, labels), joined, strict=True)
        )
    keep = batched_nms(boxes.float(), scores.float(), labels, threshold)
    return boxes[keep], scores[keep], labels[keep]


def small_box_side(boxes: list[torch.Tensor]) -> float | None:
    """The median side sqrt(w * h) of the boxes under 32 px (COCO's small), or None."""
    sides = torch.cat([box_area(b.double()).clamp(min=0).sqrt() for b in boxes] or [torch.zeros(0)])
    small = sides[sides < 32]
    return float(small.median()) if len(small) else None


def auto_tile_size(
    small_side: float | None, input_size: int, image_size: int, target: float = 32.0
) -> int | None:
    """The tile side at which the median small training object reaches `target` input pixels.

    The rule: with m = `small_side` (`small_box_side` of the training boxes, in the model's
    input pixels), a tile of side t is shown to the model at `input_size`, so an object grows
    by input_size / t; t = input_size * m / target, rounded down to a multiple of 8 and at
    least input_size / 4. None (no tiling) without small boxes or when t is at least the
    image's side. target = 32 is the smallest medium object: our detectors' AP-medium is far
    above their AP-small.
    """
    if small_side is None:
        return None
    t = input_size * small_side / target
    t = max(int(t) // 8 * 8, input_size // 4)
    return None if t >= image_size else t
