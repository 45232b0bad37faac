"""Object-detection data: COCO, Pascal VOC and YOLO files -> letterboxed uint8 tensors + boxes.

Three on-disk formats, chosen by a spec string, each read by its own module:
``coco:DIR`` or ``coco:TRAIN.json,TEST.json`` (:mod:`freebies.data.coco`), ``voc:DIR``
(:mod:`freebies.data.voc`) and ``yolo:DIR`` or ``yolo:DATA.yaml`` (:mod:`freebies.data.yolo`).

Splits, for every format: the test set is the files' test split, else their validation split
(COCO's own habit: report on val), else a seeded ``test_split`` share of training. When no
validation split is left, ``val_split`` carves a seeded one from training (``split_seed``).

Every image is letterboxed (:func:`letterbox`): its longer side resized to ``image_size``,
its aspect ratio kept, and its boxes scaled to match. With ``rect`` (the default) each image's
batch shape is its own size rounded up to a multiple of 32, so that batches of similar shape
carry little padding (aspect-ratio grouping, :func:`shape_groups`); without it every image
sits on an ``image_size`` square. ``DetSplit.images`` holds all images on one canvas that
covers every shape, each at its top-left. ``DetSplit.truth`` keeps the boxes in the image's
own pixels for COCO evaluation, with each box's COCO ``area`` and the crowd regions
(``iscrowd``), which evaluation ignores and training never sees. Real annotations are messy,
so boxes crossing the edge are clipped and boxes with no area are dropped, and the counts go
into one summary line in ``DetData.notes``. Anything a person must fix (a missing image, a
malformed file, an unknown class) raises :class:`~freebies.errors.UsageError` with one line
naming the file.

Images are decoded by :func:`freebies.data.io.decode` and resized by torchvision.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from freebies.data.annotations import VALID_FORMS, Item, Read
from freebies.data.coco import read_coco
from freebies.data.io import decode, parallel_map, read_header
from freebies.data.voc import read_voc
from freebies.data.yolo import read_yolo
from freebies.errors import UsageError, nearest

__all__ = [
    "DetData",
    "DetSplit",
    "StreamedImages",
    "Truth",
    "batch_shape",
    "image_stats",
    "letterbox",
    "letterboxed_split",
    "load_detection",
    "pad_shape",
    "shape_groups",
    "to_original",
]

_FORMATS = ["coco", "voc", "yolo"]
# The carved test set uses a fixed seed, so varying split_seed (which moves the validation
# set) never moves the set the results are reported on.
_TEST_SEED = 0


class Truth(NamedTuple):
    """One image's ground truth for COCO evaluation, in its original pixels, after cleaning."""

    boxes: torch.Tensor  # float32 (m, 4) xyxy: the training boxes and the crowd regions
    labels: torch.Tensor  # int64 (m,) class index 0..K-1
    areas: torch.Tensor  # float64 (m,): the file's COCO `area`, else w x h (the size bins)
    iscrowd: torch.Tensor  # bool (m,): crowd regions, ignore regions for COCO's evaluator


class StreamedImages(torch.utils.data.Dataset):
    """A split's images read from disk when needed (in DataLoader workers while training):
    image i decoded, resized and padded to its batch shape ``shapes[i]``, as the in-memory
    canvas holds it. ``shape`` is that canvas's, (N, 3, H, W); ``collate`` pads a batch to its
    largest shape, the batch's :func:`batch_shape`."""

    def __init__(
        self,
        paths: list[Path],
        resize: Callable[[Path], torch.Tensor],
        shapes: list[tuple[int, int]],
    ) -> None:
        self.paths, self.resize, self.shapes = paths, resize, shapes
        hw = torch.tensor(shapes).amax(0).tolist() if shapes else [32, 32]
        self.shape = (len(paths), 3, *hw)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.collate([self.resize(self.paths[i])], self.shapes[i])[0]

    def subset(self, picked: list[int]) -> StreamedImages:
        return StreamedImages(
            [self.paths[i] for i in picked], self.resize, [self.shapes[i] for i in picked]
        )

    @staticmethod
    def collate(images: list[torch.Tensor], hw: Sequence[int] | None = None) -> torch.Tensor:
        h, w = hw or (max(im.shape[d] for im in images) for d in (1, 2))
        out = torch.zeros((len(images), images[0].shape[0], h, w), dtype=torch.uint8)
        for o, im in zip(out, images, strict=True):
            o[:, : im.shape[1], : im.shape[2]] = im
        return out


@dataclass
class DetSplit:
    """One split in memory: letterboxed images and their boxes.

    ``scales[i]`` is the factor each xyxy coordinate of image i was multiplied by,
    ``(sx, sy, sx, sy)``: letterboxed px = original px * scale, so ``boxes / scales[i]`` maps
    predictions back to the original pixels. It is per axis because the resized sides are
    rounded to whole pixels (a 61 x 97 image at 64 gets factors 40/61 and 64/97); one shared
    factor would put boxes up to half a pixel off the pixels they cover.
    """

    images: torch.Tensor | StreamedImages  # uint8 (N, 3, H, W), each at the top-left
    shapes: torch.Tensor  # int64 (N, 2): each image's batch shape (h, w), within (H, W)
    boxes: list[torch.Tensor]  # float32 (n_i, 4) xyxy, letterboxed pixels
    labels: list[torch.Tensor]  # int64 (n_i,), class index 0..K-1
    scales: torch.Tensor  # float64 (N, 4): (sx, sy, sx, sy), letterboxed = original * scale
    sizes: torch.Tensor  # int64 (N, 2): original (H, W)
    truth: list[Truth]  # per image, what COCO evaluation compares with (crowd regions too)
    image_ids: list[int]  # the file's own image id (COCO), else the position in the split
    files: list[str]  # image paths, for messages and written predictions

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int, images: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (3, h, w): image i's own pixels, without padding (a view; of `images`, a copy
        of the in-memory canvas on another device, when given)."""
        h, w = (self.sizes[i] * self.scales[i, [1, 0]]).round().long().tolist()
        return (self.images if images is None else images)[i][:, :h, :w]

    def batch(
        self, ids: list[int] | torch.Tensor, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 (n, 3, h, w): the images `ids` cut to their `batch_shape` before the copy (from
        `images`, a copy of the in-memory canvas on another device, when given)."""
        x = self.images if images is None else images
        if isinstance(x, torch.Tensor):
            h, w = batch_shape(self.shapes[ids])
            return x[torch.as_tensor(ids, device=x.device), :, :h, :w]
        return x.collate(parallel_map(x.__getitem__, list(ids)))

    @property
    def fitted(self) -> torch.Tensor:
        """int64 (N, 2): the (h, w) each image covers at its canvas's top-left."""
        return (self.sizes * self.scales[:, [1, 0]]).round().long()

    @property
    def orig_boxes(self) -> list[torch.Tensor]:
        """float32 (n_i, 4) xyxy: the training boxes in each image's original pixels."""
        return [t.boxes[~t.iscrowd] for t in self.truth]

    def subset(self, idx: Sequence[int] | torch.Tensor) -> DetSplit:
        """The images at positions ``idx``, in that order (ids and files go with them)."""
        picked = [int(i) for i in idx]
        t = torch.tensor(picked, dtype=torch.int64)
        images = self.images
        return DetSplit(
            images=images[t] if isinstance(images, torch.Tensor) else images.subset(picked),
            shapes=self.shapes[t],
            boxes=[self.boxes[i] for i in picked],
            labels=[self.labels[i] for i in picked],
            scales=self.scales[t],
            sizes=self.sizes[t],
            truth=[self.truth[i] for i in picked],
            image_ids=[self.image_ids[i] for i in picked],
            files=[self.files[i] for i in picked],
        )


@dataclass
class DetData:
    """A detection dataset: train / val / test splits and the class mapping."""

    train: DetSplit
    val: DetSplit | None
    test: DetSplit
    classes: list[str]  # class names; index = training label
    category_ids: list[int]  # the file's own category id per class index (VOC / YOLO: 1..K)
    notes: list[str]  # at most one summary line of what cleaning changed, for a warning
    split_rule: str  # how the splits were made, for the run's record

    @property
    def fingerprint(self) -> str:
        """A cheap identity of the data (shapes, labels, boxes, first images), for resume."""
        h = hashlib.sha1("\n".join(self.classes).encode())
        for split in (self.train, self.val, self.test):
            if split is None:
                h.update(b"no split")
                continue
            h.update(str(tuple(split.images.shape)).encode())
            h.update(_cat(split.labels, (0,), torch.int64).numpy().tobytes())
            h.update(_cat(split.boxes, (0, 4), torch.float32).numpy().tobytes())
            if isinstance(split.images, torch.Tensor):
                h.update(split.images[:16].contiguous().numpy().tobytes())
            else:  # streamed: the files and their sizes, nothing decoded
                h.update("\n".join(split.files).encode())
                h.update(split.sizes.numpy().tobytes())
        return h.hexdigest()[:16]


def _cat(tensors: list[torch.Tensor], empty: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.zeros(empty, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Letterbox


def letterbox(
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    rect: bool = False,
    factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit an image into a canvas whose longer side is ``size``, keeping its aspect ratio.

    The rule: ``s = size / max(H, W)``; the image is resized (bilinear, antialiased, on uint8)
    to ``new_h = round(H * s)`` by ``new_w = round(W * s)`` (the longer side is exactly
    ``size``; halves round up), pasted at the top-left of a zero canvas, and the boxes are
    multiplied by the factors actually applied, ``sx = new_w / W`` and ``sy = new_h / H``.
    Top-left placement means no offset: mapping back is a division, ``boxes / scale``. The
    canvas is ``size`` x ``size``, or with ``rect`` :func:`pad_shape` of the resized image.

    Args:
        image: uint8 ``(C, H, W)`` (or ``(..., C, H, W)``).
        boxes: ``(n, 4)`` xyxy in the image's pixels (any float dtype, kept).
        size: the longer side in pixels.
        rect: pad to a multiple of 32 instead of to a square.
        factor: resize by this factor instead (1 = its own pixels), padded to 32.

    Returns:
        ``(canvas (C, h, w), boxes (n, 4) in canvas pixels, scale)``, where ``scale`` is
        float64 ``(4,)`` = ``(sx, sy, sx, sy)``.
    """
    resized, scale = _fit(image, size, factor)
    h, w = pad_shape(resized.shape[-2:], None if factor else size, rect or factor is not None)
    canvas = image.new_zeros((*image.shape[:-2], h, w))
    canvas[..., : resized.shape[-2], : resized.shape[-1]] = resized
    return canvas, (boxes.double() * scale).to(boxes.dtype), scale


def _fit(
    image: torch.Tensor, size: int, factor: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` resized to :func:`fitted_size`, and the (4,) scale applied."""
    from torchvision.transforms.v2 import functional as F

    h, w = image.shape[-2:]
    new_h, new_w = fitted_size(h, w, size, factor)
    if (new_h, new_w) != (h, w):
        image = F.resize(image, [new_h, new_w], antialias=True)
    return image, torch.tensor([new_w / w, new_h / h] * 2, dtype=torch.float64)


def fitted_size(h: int, w: int, size: int, factor: float | None = None) -> tuple[int, int]:
    """The (h, w) an image is resized to: its longer side ``size`` (halves round up), or with
    ``factor`` each side ``round(side * factor)``."""
    if factor is not None:
        return max(1, math.floor(h * factor + 0.5)), max(1, math.floor(w * factor + 0.5))
    s = size / max(h, w)
    new_h = size if h >= w else max(1, math.floor(h * s + 0.5))
    new_w = size if w >= h else max(1, math.floor(w * s + 0.5))
    return new_h, new_w


def pad_shape(fitted: Sequence[int], size: int | None, rect: bool) -> tuple[int, int]:
    """The batch shape (h, w) of an image letterboxed to ``fitted`` (h, w): ``size`` x
    ``size``, or with ``rect`` each side rounded up to a multiple of 32 (the detector's
    largest stride that FCOS pads to anyway), never beyond ``size`` (None: no bound)."""
    if not rect and size is not None:
        return size, size
    h, w = (min(-(-int(v) // 32) * 32, size or math.inf) for v in fitted)
    return int(h), int(w)


def batch_shape(shapes: torch.Tensor) -> tuple[int, int]:
    """The (h, w) that holds every image of a batch: the largest of their ``shapes`` rows."""
    h, w = shapes.amax(0).tolist()
    return int(h), int(w)


def shape_groups(shapes: torch.Tensor) -> torch.Tensor:
    """int64 (N,): 0 for landscape or square batch shapes, 1 for portrait ones; batches drawn
    within a group carry little padding (detectron2's aspect-ratio grouping)."""
    return (shapes[:, 0] > shapes[:, 1]).long()


def image_stats(split: DetSplit, limit: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (float64, pixel units) of the images' own pixels, the padding
    left out; from up to ``limit`` images spread evenly over the split."""
    n, c = len(split), split.images.shape[1]
    sums, squares, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c).double(), 0
    for i in torch.linspace(0, n - 1, min(n, limit)).round().long().unique().tolist():
        pixels = split.image(i).reshape(c, -1).double()
        sums += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = sums / max(count, 1)
    var = (squares - count * mean * mean) / max(count - 1, 1)
    return mean, var.clamp(min=0).sqrt()


def to_original(
    boxes: torch.Tensor, scale: torch.Tensor, size: tuple[int, int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Map xyxy boxes ``(n, 4)`` from letterboxed pixels back to the original image's.

    ``scale`` is ``DetSplit.scales[i]`` (or letterbox's third result); ``size`` (H, W), when
    given, clips to the image, since a prediction may reach into the padding.
    """
    out = (boxes.double() / scale.double()).to(boxes.dtype)
    if size is not None:
        h, w = (int(v) for v in size)
        out = out.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=out.dtype))
    return out


def letterboxed_split(
    image: torch.Tensor,
    size: int,
    file: str = "",
    rect: bool = False,
    factor: float | None = None,
) -> DetSplit:
    """A one-image split without boxes, for predicting on a loose uint8 ``(3, H, W)`` image
    (letterbox's options)."""
    canvas, _, scale = letterbox(image, torch.zeros((0, 4)), size, rect, factor)
    none, no_labels = torch.zeros((0, 4), dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    return DetSplit(
        images=canvas[None],
        shapes=torch.tensor([canvas.shape[-2:]], dtype=torch.int64),
        boxes=[none],
        labels=[no_labels],
        scales=scale[None],
        sizes=torch.tensor([tuple(image.shape[-2:])], dtype=torch.int64),
        truth=[Truth(none, no_labels, torch.zeros(0).double(), torch.zeros(0, dtype=torch.bool))],
        image_ids=[0],
        files=[file],
    )


# --------------------------------------------------------------------------------------------
# Loading


def load_detection(
    spec: str,
    *,
    image_size: int = 416,
    val_split: float = 0.0,
    test_split: float = 0.2,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    rect: bool = True,
    scale: float | None = None,
    stream: bool | None = None,
    memory_mb: int = 4096,
) -> DetData:
    """Load the detection dataset named by ``spec`` (forms in the module docstring).

    Args:
        image_size: the letterboxed images' longer side, pixels.
        val_split: share of training carved as a seeded validation set when the files have
            none (0 = no validation set).
        test_split: share of training held out (fixed seed) when the files have no test or
            validation split, e.g. a flat YOLO folder.
        split_seed: seed of the validation carve.
        limit_train, limit_test: keep only the first N training / test (and validation)
            images, for smoke runs.
        rect: keep each image's aspect ratio in its batch shape (:func:`pad_shape`).
        scale: resize every image by this factor (1 = its own pixels, for sliced training
            and tiled inference) instead of to ``image_size``; batch shapes are rectangular.
        stream: read the images from disk when a batch needs them (:class:`StreamedImages`)
            instead of holding them in memory; None: stream when the splits' canvases would
            take more than ``memory_mb`` MiB.
    """
    _check_options(image_size, val_split, test_split, limit_train, limit_test)
    read = _read_spec(spec)
    splits, rule = _arrange(read, spec, val_split, test_split, split_seed)
    if limit_train is not None:
        splits["train"] = splits["train"][:limit_train]
    if limit_test is not None:
        for name in ("val", "test"):
            if name in splits:
                splits[name] = splits[name][:limit_test]
    tally = _Tally()
    loaded = {k: parallel_map(lambda it: _load_item(it, image_size, scale), v)
              for k, v in splits.items()}  # fmt: skip
    bound = None if scale is not None else image_size
    shapes = {k: [pad_shape(r.fitted, bound, rect) for r in v] for k, v in loaded.items()}
    need = sum(_canvas_bytes(v) for v in shapes.values())
    streamed = need > memory_mb * 2**20 if stream is None else stream
    resize = partial(_read, size=image_size, factor=scale)  # picklable, for DataLoader workers
    built = {}
    for k, items in splits.items():
        for item, r in zip(items, loaded[k], strict=True):
            tally.add(item.source, r.changes)
        built[k] = _build_split(items, loaded[k], shapes[k], resize, streamed)
    notes = [*read.notes, *tally.parts()]
    return DetData(
        train=built["train"],
        val=built.get("val"),
        test=built["test"],
        classes=read.classes,
        category_ids=read.category_ids,
        notes=["; ".join(notes)] if notes else [],
        split_rule=rule,
    )


def _check_options(
    image_size: Any, val_split: Any, test_split: Any, limit_train: Any, limit_test: Any
) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UsageError(f"data.image_size must be a positive whole number, got {image_size!r}")
    for name, v in (("data.val_split", val_split), ("data.test_split", test_split)):
        if not (isinstance(v, int | float) and 0 <= v < 1):
            raise UsageError(f"{name} must be a share in [0, 1), got {v!r}")
    for name, v in (("data.limit_train", limit_train), ("data.limit_test", limit_test)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UsageError(f"{name} must be a positive whole number of images, got {v!r}")


def _read_spec(spec: str) -> Read:
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in _FORMATS or not sep:
        raise UsageError(
            f"unknown detection dataset {spec!r}{nearest(name, _FORMATS)}; valid forms:"
            f" {VALID_FORMS}"
        )
    if not arg.strip():
        raise UsageError(f"{spec!r} has nothing after ':'; valid forms: {VALID_FORMS}")
    readers: dict[str, Callable[[str], Read]] = {
        "coco": read_coco,
        "voc": read_voc,
        "yolo": read_yolo,
    }
    return readers[name](arg.strip())


def _arrange(
    read: Read, spec: str, val_split: float, test_split: float, seed: int
) -> tuple[dict[str, list[Item]], str]:
    """Final train / val / test item lists, and the rule that made them, in words."""
    splits = {k: v for k, v in read.splits.items() if v or k == "train"}
    rule = read.rule
    if not splits.get("train"):
        raise UsageError(f"{spec}: no training images ({rule}); add some to the training split")
    if "test" not in splits and "val" in splits:
        splits["test"] = splits.pop("val")
        rule += "; its validation split is the test set"
    if "test" not in splits:
        if test_split <= 0:
            raise UsageError(
                f"{spec} has no test or validation split; set data.test_split (e.g. 0.2) to"
                " hold out a share of the training images"
            )
        splits["train"], splits["test"] = _carve(splits["train"], test_split, _TEST_SEED, spec)
        rule += f"; test = seeded {test_split:g} of the images (seed {_TEST_SEED})"
    if "val" not in splits and val_split > 0:
        splits["train"], splits["val"] = _carve(splits["train"], val_split, seed, spec)
        rule += f"; val = seeded {val_split:g} of train (split_seed {seed})"
    return splits, rule


def _carve(items: list[Item], share: float, seed: int, spec: str) -> tuple[list[Item], list[Item]]:
    """(rest, picked): a seeded ``share`` of ``items``, both in their original order."""
    n = len(items)
    k = max(1, round(share * n))
    if k >= n:
        raise UsageError(
            f"{spec}: {n} training image(s) are too few to hold out {share:g} of them; add"
            " images or lower the split"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    picked = set(order[:k])
    return [x for i, x in enumerate(items) if i not in picked], [items[i] for i in sorted(picked)]


class _Loaded(NamedTuple):
    fitted: tuple[int, int]  # (h, w) the image is resized to
    boxes: torch.Tensor
    labels: torch.Tensor
    truth: Truth
    scale: torch.Tensor
    size: tuple[int, int]
    changes: dict[str, int]  # what cleaning did to this image's boxes: kind -> count


DROPS = ("zero-area", "inverted", "outside the image")  # why a box is dropped
NAMED = 3  # files named per kind in the cleaning note


class _Tally:
    """What cleaning changed, per kind (clipped, or dropped and why), with the files it
    happened in (in load order)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.files: dict[str, list[Path]] = {}

    def add(self, source: Path, changes: dict[str, int]) -> None:
        for kind, n in changes.items():
            if n:
                self.counts[kind] = self.counts.get(kind, 0) + n
                files = self.files.setdefault(kind, [])
                files += [] if source in files else [source]

    def parts(self) -> list[str]:
        out = []
        if self.counts.get("clipped"):
            out.append(
                f"clipped {self.counts['clipped']} boxes to the image ({self.where('clipped')})"
            )
        dropped = [k for k in DROPS if self.counts.get(k)]
        if dropped:
            total = sum(self.counts[k] for k in dropped)
            kinds = "; ".join(f"{self.counts[k]} {k} ({self.where(k)})" for k in dropped)
            out.append(f"dropped {total} boxes: {kinds}")
        return out

    def where(self, kind: str) -> str:
        files = self.files[kind]
        more = f" and {len(files) - NAMED} more files" if len(files) > NAMED else ""
        return ", ".join(map(str, files[:NAMED])) + more


def _build_split(
    items: list[Item],
    loaded: list[_Loaded],
    shapes: list[tuple[int, int]],
    resize: Callable[[Path], torch.Tensor],
    streamed: bool,
) -> DetSplit:
    """One split: its images decoded into one canvas that covers every batch shape, or
    (`streamed`) read from disk when a batch needs them."""
    h, w = torch.tensor(shapes).amax(0).tolist() if shapes else (32, 32)
    paths = [item.path for item in items]
    if streamed:
        images: torch.Tensor | StreamedImages = StreamedImages(paths, resize, shapes)
    else:
        images = torch.zeros((len(items), 3, h, w), dtype=torch.uint8)

        def paste(i: int) -> None:
            image = resize(paths[i])
            images[i, :, : image.shape[1], : image.shape[2]] = image

        parallel_map(paste, range(len(items)))
    return DetSplit(
        images=images,
        shapes=torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2),
        boxes=[r.boxes for r in loaded],
        labels=[r.labels for r in loaded],
        scales=torch.stack([r.scale for r in loaded]) if loaded else torch.zeros((0, 4)).double(),
        sizes=torch.tensor([r.size for r in loaded], dtype=torch.int64).reshape(-1, 2),
        truth=[r.truth for r in loaded],
        image_ids=[i if item.image_id is None else item.image_id for i, item in enumerate(items)],
        files=[str(item.path) for item in items],
    )


def _read(path: Path, size: int, factor: float | None) -> torch.Tensor:
    """Decode one image and resize it as the split holds it (:func:`fitted_size`)."""
    return _fit(decode(path, fix=_FIX), size, factor)[0]


def _canvas_bytes(shapes: list[tuple[int, int]]) -> int:
    """The bytes of a split's in-memory canvas: its images on their largest shape."""
    return 3 * len(shapes) * int(torch.tensor(shapes).amax(0).prod()) if shapes else 0


_FIX = "replace it or remove it from the annotations"


def _load_item(item: Item, size: int, factor: float | None = None) -> _Loaded:
    """Read one image's size from its header, clean its boxes, and scale them to the size
    the image is resized to (its longer side ``size``, or by ``factor``)."""
    (w, h), _ = read_header(item.path, fix=_FIX)
    if item.size is not None and item.size != (h, w):
        raise UsageError(
            f"{item.source} says {item.path.name} is {item.size[1]}x{item.size[0]} (WxH) but the"
            f" image is {w}x{h}; fix the size in the annotation or replace the image"
        )
    boxes = item.boxes
    if item.normalized:
        cx, cy, bw, bh = boxes.T
        boxes = np.stack(
            [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1
        )
    boxes, keep, changes = _clip(boxes.reshape(-1, 4), h, w)
    orig = torch.from_numpy(boxes)
    truth = _truth(item, orig.float(), keep)
    train = ~truth.iscrowd  # crowd regions are for evaluation only
    new_h, new_w = fitted_size(h, w, size, factor)
    scale = torch.tensor([new_w / w, new_h / h] * 2, dtype=torch.float64)
    return _Loaded(
        fitted=(new_h, new_w),
        boxes=(orig[train] * scale).float(),
        labels=truth.labels[train],
        truth=truth,
        scale=scale,
        size=(h, w),
        changes=changes,
    )


def _truth(item: Item, boxes: torch.Tensor, keep: np.ndarray) -> Truth:
    """The evaluation's ground truth of the cleaned ``boxes`` (float32 (m, 4), the ``keep``
    rows of the item's): the file's area where it gave one, else w x h of the box."""
    wide = boxes.double()
    areas = (wide[:, 2] - wide[:, 0]) * (wide[:, 3] - wide[:, 1])
    if item.areas is not None:
        given = torch.from_numpy(item.areas[keep])
        areas = torch.where(given.isnan(), areas, given)
    crowd = np.zeros(len(boxes), bool) if item.crowd is None else item.crowd[keep]
    labels = torch.from_numpy(item.labels[keep].astype(np.int64))
    return Truth(boxes, labels, areas, torch.from_numpy(crowd))


def _clip(boxes: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Boxes clipped to the image, minus those left with no area: (kept, keep mask, counts of
    clipped boxes and of dropped ones by why: zero-area or inverted as written, or (with an
    area) wholly outside the image)."""
    inside = boxes.copy()
    inside[:, 0::2] = inside[:, 0::2].clip(0, w)
    inside[:, 1::2] = inside[:, 1::2].clip(0, h)
    keep = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
    changed = (inside != boxes).any(axis=1)
    dx, dy = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    inverted = (dx < 0) | (dy < 0)
    flat = ~inverted & ((dx == 0) | (dy == 0))
    changes = {
        "clipped": int((changed & keep).sum()),
        "zero-area": int((~keep & flat).sum()),
        "inverted": int((~keep & inverted).sum()),
        "outside the image": int((~keep & ~flat & ~inverted).sum()),
    }
    return inside[keep], keep, changes
