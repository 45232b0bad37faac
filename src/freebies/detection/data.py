"""Object-detection data: COCO, Pascal VOC and YOLO files -> letterboxed uint8 tensors + boxes.

Three on-disk formats, chosen by a spec string:

* ``coco:DIR``: one COCO annotation JSON per split, ``instances_train*.json`` and
  ``instances_val*.json`` / ``instances_test*.json`` in DIR (or DIR/annotations). Images sit
  beside the JSON, under ``images/``, under a folder named like the JSON (``train2017/``), or
  at their ``file_name`` path relative to DIR. ``coco:TRAIN.json,TEST.json`` (or
  ``TRAIN,VAL,TEST``) names the files instead. Boxes are ``bbox: [x, y, w, h]`` in pixels;
  ``iscrowd`` annotations are skipped (COCO's evaluator ignores them too) and counted.
* ``voc:DIR``: Pascal VOC, ``Annotations/*.xml`` (``<bndbox>`` corners in pixels),
  ``JPEGImages/``, and ``ImageSets/Main/{train,val,test}.txt`` (``trainval.txt`` when there is
  no ``train.txt``). Class names are the sorted names of the training annotations.
* ``yolo:DIR`` (or ``yolo:DATA.yaml``): one ``class cx cy w h`` line per box, normalised to
  [0, 1]. Labels live in ``labels/`` mirroring ``images/`` (Ultralytics: ``images/train/a.jpg``
  -> ``labels/train/a.txt``) or beside each image (darknet). Class names come from the data
  YAML's ``names`` (a list or a ``{index: name}`` dict) or a ``*.names`` / ``classes.txt``
  file. Splits come from the YAML's ``train`` / ``val`` / ``test`` entries (folders, image
  lists in .txt files, or lists of those), else ``train`` / ``val`` / ``test`` subfolders,
  else the whole folder is training data.

Splits, for every format: the test set is the files' test split, else their validation split
(COCO's own habit: report on val), else a seeded ``test_split`` share of training. When no
validation split is left, ``val_split`` carves a seeded one from training (``split_seed``).

Every image is letterboxed to ``image_size`` x ``image_size`` (:func:`letterbox`), and its
boxes scaled to match; ``DetSplit.orig_boxes`` keeps them in the image's own pixels for COCO
evaluation. Real annotations are messy, so boxes crossing the edge are clipped and boxes with
no area are dropped, and the counts go into one summary line in ``DetData.notes``. Anything
a person must fix (a missing image, a malformed file, an unknown class) raises
:class:`~freebies.errors.UsageError` with one line naming the file.

Libraries: PIL decodes, torchvision resizes, ``yaml.safe_load`` and the standard
``xml.etree.ElementTree`` parse (expat fetches no external entities).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from freebies.errors import UsageError, nearest

__all__ = [
    "DetData",
    "DetSplit",
    "letterbox",
    "letterboxed_split",
    "load_detection",
    "to_original",
]

VALID_FORMS = "coco:DIR, coco:TRAIN.json,TEST.json, voc:DIR, yolo:DIR (or yolo:DATA.yaml)"
_FORMATS = ["coco", "voc", "yolo"]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# YOLO coordinates a little past [0, 1] are rounding in exporters; further out they are
# pixels or garbage, which clipping would silently turn into wrong boxes.
YOLO_TOLERANCE = 0.01
# The carved test set uses a fixed seed, so varying split_seed (which moves the validation
# set) never moves the set the results are reported on.
_TEST_SEED = 0


@dataclass
class DetSplit:
    """One split in memory: letterboxed images and their boxes.

    ``scales[i]`` is the factor each xyxy coordinate of image i was multiplied by,
    ``(sx, sy, sx, sy)``: letterboxed px = original px * scale, so ``boxes / scales[i]`` maps
    predictions back to the original pixels. It is per axis because the resized sides are
    rounded to whole pixels (a 61 x 97 image at 64 gets factors 40/61 and 64/97); one shared
    factor would put boxes up to half a pixel off the pixels they cover.
    """

    images: torch.Tensor  # uint8 (N, 3, S, S), letterboxed (see letterbox)
    boxes: list[torch.Tensor]  # float32 (n_i, 4) xyxy, letterboxed pixels
    labels: list[torch.Tensor]  # int64 (n_i,), class index 0..K-1
    scales: torch.Tensor  # float64 (N, 4): (sx, sy, sx, sy), letterboxed = original * scale
    sizes: torch.Tensor  # int64 (N, 2): original (H, W)
    orig_boxes: list[torch.Tensor]  # float32 (n_i, 4) xyxy, original pixels, after cleaning
    image_ids: list[int]  # the file's own image id (COCO), else the position in the split
    files: list[str]  # image paths, for messages and written predictions

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx: Sequence[int] | torch.Tensor) -> DetSplit:
        """The images at positions ``idx``, in that order (ids and files go with them)."""
        picked = [int(i) for i in idx]
        t = torch.tensor(picked, dtype=torch.int64)
        return DetSplit(
            images=self.images[t],
            boxes=[self.boxes[i] for i in picked],
            labels=[self.labels[i] for i in picked],
            scales=self.scales[t],
            sizes=self.sizes[t],
            orig_boxes=[self.orig_boxes[i] for i in picked],
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
            h.update(split.images[:16].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _cat(tensors: list[torch.Tensor], empty: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.zeros(empty, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Letterbox


def letterbox(
    image: torch.Tensor, boxes: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit an image into a ``size`` x ``size`` canvas, keeping its aspect ratio.

    The rule: ``s = size / max(H, W)``; the image is resized (bilinear, antialiased, on uint8)
    to ``new_h = round(H * s)`` by ``new_w = round(W * s)`` (the longer side is exactly
    ``size``; halves round up), pasted at the top-left of a zero canvas, and the boxes are
    multiplied by the factors actually applied, ``sx = new_w / W`` and ``sy = new_h / H``.
    Top-left placement means no offset: mapping back is a division, ``boxes / scale``.

    Args:
        image: uint8 ``(C, H, W)`` (or ``(..., C, H, W)``).
        boxes: ``(n, 4)`` xyxy in the image's pixels (any float dtype, kept).
        size: the canvas side in pixels.

    Returns:
        ``(canvas (C, size, size), boxes (n, 4) in canvas pixels, scale)``, where ``scale`` is
        float64 ``(4,)`` = ``(sx, sy, sx, sy)``.
    """
    canvas = image.new_zeros((*image.shape[:-2], size, size))
    scale = _letterbox_into(image, canvas)
    return canvas, (boxes.double() * scale).to(boxes.dtype), scale


def _letterbox_into(image: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """Resize ``image`` into the top-left of a zeroed square ``canvas``; the (4,) scale."""
    from torchvision.transforms.v2 import functional as F

    size = canvas.shape[-1]
    h, w = image.shape[-2:]
    s = size / max(h, w)
    new_h = size if h >= w else max(1, math.floor(h * s + 0.5))
    new_w = size if w >= h else max(1, math.floor(w * s + 0.5))
    # Writing straight into the canvas (no temporary) halves the time of a BCCD load.
    if (new_h, new_w) == (h, w):
        canvas[..., :new_h, :new_w] = image
    else:
        canvas[..., :new_h, :new_w] = F.resize(image, [new_h, new_w], antialias=True)
    return torch.tensor([new_w / w, new_h / h] * 2, dtype=torch.float64)


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


def letterboxed_split(image: torch.Tensor, size: int, file: str = "") -> DetSplit:
    """A one-image split without boxes, for predicting on a loose uint8 ``(3, H, W)`` image."""
    canvas, _, scale = letterbox(image, torch.zeros((0, 4)), size)
    none = torch.zeros((0, 4), dtype=torch.float32)
    return DetSplit(
        images=canvas[None],
        boxes=[none],
        labels=[torch.zeros(0, dtype=torch.int64)],
        scales=scale[None],
        sizes=torch.tensor([tuple(image.shape[-2:])], dtype=torch.int64),
        orig_boxes=[none],
        image_ids=[0],
        files=[file],
    )


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Item:
    """One image's annotation as read from the files, before the image is decoded."""

    path: Path
    boxes: np.ndarray  # float64 (n, 4): xyxy pixels, or YOLO's normalised cx, cy, w, h
    labels: np.ndarray  # int64 (n,)
    source: Path  # the annotation file, for messages
    image_id: int | None = None  # the file's own id (COCO)
    size: tuple[int, int] | None = None  # (H, W) the annotation declares, checked on decode
    normalized: bool = False  # YOLO: boxes are cx, cy, w, h relative to the decoded size


@dataclass
class _Read:
    """What a format reader found: items per split and the class mapping."""

    splits: dict[str, list[_Item]]
    classes: list[str]
    category_ids: list[int]
    rule: str
    notes: list[str] = field(default_factory=list)


def load_detection(
    spec: str,
    *,
    image_size: int = 416,
    val_split: float = 0.0,
    test_split: float = 0.2,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DetData:
    """Load the detection dataset named by ``spec`` (forms in the module docstring).

    Args:
        image_size: the letterbox canvas side, pixels.
        val_split: share of training carved as a seeded validation set when the files have
            none (0 = no validation set).
        test_split: share of training held out (fixed seed) when the files have no test or
            validation split, e.g. a flat YOLO folder.
        split_seed: seed of the validation carve.
        limit_train, limit_test: keep only the first N training / test (and validation)
            images, for smoke runs.
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
    built = {name: _build_split(items, image_size, tally) for name, items in splits.items()}
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


def _read_spec(spec: str) -> _Read:
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in _FORMATS or not sep:
        raise UsageError(
            f"unknown detection dataset {spec!r}{nearest(name, _FORMATS)}; valid forms:"
            f" {VALID_FORMS}"
        )
    if not arg.strip():
        raise UsageError(f"{spec!r} has nothing after ':'; valid forms: {VALID_FORMS}")
    readers: dict[str, Callable[[str], _Read]] = {
        "coco": _read_coco,
        "voc": _read_voc,
        "yolo": _read_yolo,
    }
    return readers[name](arg.strip())


def _arrange(
    read: _Read, spec: str, val_split: float, test_split: float, seed: int
) -> tuple[dict[str, list[_Item]], str]:
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


def _carve(
    items: list[_Item], share: float, seed: int, spec: str
) -> tuple[list[_Item], list[_Item]]:
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
    boxes: torch.Tensor
    orig_boxes: torch.Tensor
    labels: torch.Tensor
    scale: torch.Tensor
    size: tuple[int, int]
    clipped: int
    dropped: int


class _Tally:
    """Counts of what cleaning changed, with the first file of each kind, in load order."""

    def __init__(self) -> None:
        self.clipped = self.dropped = 0
        self.first_clipped: Path | None = None
        self.first_dropped: Path | None = None

    def add(self, source: Path, clipped: int, dropped: int) -> None:
        if clipped and self.first_clipped is None:
            self.first_clipped = source
        if dropped and self.first_dropped is None:
            self.first_dropped = source
        self.clipped += clipped
        self.dropped += dropped

    def parts(self) -> list[str]:
        out = []
        if self.clipped:
            out.append(f"clipped {self.clipped} boxes to the image (first: {self.first_clipped})")
        if self.dropped:
            out.append(f"dropped {self.dropped} zero-area boxes (first: {self.first_dropped})")
        return out


def _build_split(items: list[_Item], size: int, tally: _Tally) -> DetSplit:
    images = torch.zeros((len(items), 3, size, size), dtype=torch.uint8)

    def one(i: int) -> _Loaded:
        return _load_item(items[i], images[i])

    loaded = _parallel_map(one, range(len(items)))
    for item, r in zip(items, loaded, strict=True):
        tally.add(item.source, r.clipped, r.dropped)
    return DetSplit(
        images=images,
        boxes=[r.boxes for r in loaded],
        labels=[r.labels for r in loaded],
        scales=torch.stack([r.scale for r in loaded]) if loaded else torch.zeros((0, 4)).double(),
        sizes=torch.tensor([r.size for r in loaded], dtype=torch.int64).reshape(-1, 2),
        orig_boxes=[r.orig_boxes for r in loaded],
        image_ids=[i if item.image_id is None else item.image_id for i, item in enumerate(items)],
        files=[str(item.path) for item in items],
    )


def _load_item(item: _Item, out: torch.Tensor) -> _Loaded:
    """Decode, clean and letterbox one image into ``out`` (3, size, size), already zeros."""
    image = _decode(item.path)
    h, w = image.shape[1:]
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
    boxes, keep, clipped = _clip(boxes.reshape(-1, 4), h, w)
    orig = torch.from_numpy(boxes)
    scale = _letterbox_into(image, out)
    return _Loaded(
        boxes=(orig * scale).float(),
        orig_boxes=orig.float(),
        labels=torch.from_numpy(item.labels[keep].astype(np.int64)),
        scale=scale,
        size=(h, w),
        clipped=clipped,
        dropped=int((~keep).sum()),
    )


def _clip(boxes: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Boxes clipped to the image, minus those left with no area; (kept, keep mask, clipped)."""
    inside = boxes.copy()
    inside[:, 0::2] = inside[:, 0::2].clip(0, w)
    inside[:, 1::2] = inside[:, 1::2].clip(0, h)
    keep = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
    changed = (inside != boxes).any(axis=1)
    return inside[keep], keep, int((changed & keep).sum())


def _decode(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB; EXIF orientation is not applied, as COCO's own tools do not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")  # PIL wants palette transparency resolved first
            array = np.array(im.convert("RGB"))  # a writable copy, as torch wants
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UsageError(
            f"cannot read image {path} ({type(e).__name__}: {_one_line(e)}); replace it or"
            " remove it from the annotations"
        ) from None
    return torch.from_numpy(array).permute(2, 0, 1)


def _parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
    # PIL decoding and torch's resize release the GIL, so threads give a real speed-up.
    workers = min(8, os.cpu_count() or 1)
    if workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _boxes(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _labels(rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=np.int64)


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


# --------------------------------------------------------------------------------------------
# COCO


def _read_coco(arg: str) -> _Read:
    if "," in arg or arg.lower().endswith(".json"):
        paths = [Path(p.strip()).expanduser() for p in arg.split(",") if p.strip()]
        if not 1 <= len(paths) <= 3:
            raise UsageError(
                f"coco:{arg} names {len(paths)} files; give TRAIN,TEST or TRAIN,VAL,TEST"
            )
        names = [["train"], ["train", "test"], ["train", "val", "test"]][len(paths) - 1]
        files = dict(zip(names, paths, strict=True))
        rule = "COCO files " + ", ".join(f"{k}={p.name}" for k, p in files.items())
    else:
        files = _coco_dir_files(Path(arg).expanduser())
        rule = "COCO " + ", ".join(p.name for p in files.values())
    docs = {}
    for split, path in files.items():
        if not path.is_file():
            raise UsageError(f"COCO annotation file {path} does not exist")
        try:
            docs[split] = json.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(
                f"{path} is not valid JSON ({_one_line(e)}); fix or re-export it"
            ) from None
        if not isinstance(docs[split], dict):
            raise UsageError(f"{path} holds a JSON {type(docs[split]).__name__}, not a COCO object")
    train_cats = _coco_categories(docs["train"], files["train"])
    for split, path in files.items():
        for cid, name in _coco_categories(docs[split], path).items():
            if cid in train_cats and train_cats[cid] != name:
                raise UsageError(
                    f"category id {cid} is {name!r} in {path} but {train_cats[cid]!r} in"
                    f" {files['train']}; the splits must share one category list"
                )
    ids = sorted(train_cats)
    index = {cid: i for i, cid in enumerate(ids)}
    splits, crowd = {}, 0
    for split, path in files.items():
        splits[split], n = _coco_items(docs[split], path, index, files["train"])
        crowd += n
    notes = [f"skipped {crowd} crowd (iscrowd) annotations"] if crowd else []
    return _Read(splits, [train_cats[c] for c in ids], ids, rule, notes)


def _coco_dir_files(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise UsageError(f"COCO folder {root} does not exist; valid forms: {VALID_FORMS}")
    for folder in (root, root / "annotations"):
        found = {}
        for split in ("train", "val", "test"):
            matches = sorted(folder.glob(f"instances_{split}*.json"))
            if len(matches) > 1:
                raise UsageError(
                    f"{folder} holds several {split} files ({', '.join(m.name for m in matches)});"
                    " keep one, or name them: --data coco:TRAIN.json,TEST.json"
                )
            if matches:
                found[split] = matches[0]
        if "train" in found:
            return found
    raise UsageError(
        f"{root} has no instances_train*.json (nor annotations/instances_train*.json); name the"
        " files instead: --data coco:TRAIN.json,TEST.json"
    )


def _need(entry: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``entry[key]``, checked to be of ``kind``; one-line error naming the file otherwise."""
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        what = " or ".join(k.__name__ for k in kinds)
        raise UsageError(f"{path}: {where} needs {key!r} ({what}), got {value!r}; fix the file")
    return value


def _coco_categories(doc: dict, path: Path) -> dict[int, str]:
    cats = _need(doc, "categories", list, path, "the top level")
    out: dict[int, str] = {}
    for k, cat in enumerate(cats):
        cid = _need(cat, "id", int, path, f"categories[{k}]")
        if cid in out:
            raise UsageError(f"{path}: category id {cid} appears twice in categories; fix the file")
        out[cid] = str(_need(cat, "name", str, path, f"categories[{k}]"))
    return out


def _coco_items(
    doc: dict, path: Path, index: dict[int, int], train_path: Path
) -> tuple[list[_Item], int]:
    """The images of one COCO file with their boxes, and how many crowd boxes were skipped."""
    own = _coco_categories(doc, path)
    found = _coco_images(doc, path)
    boxes: dict[int, list[list[float]]] = {iid: [] for iid in found}
    labels: dict[int, list[int]] = {iid: [] for iid in found}
    crowd = 0
    for k, ann in enumerate(_need(doc, "annotations", list, path, "the top level")):
        where = f"annotations[{k}]"
        iid = _need(ann, "image_id", int, path, where)
        if iid not in found:
            raise UsageError(f"{path}: {where} refers to image_id {iid}, which 'images' lacks")
        if ann.get("iscrowd", 0):
            crowd += 1  # COCO evaluates crowd regions as "ignore", never as objects to find
            continue
        cid = _need(ann, "category_id", int, path, where)
        if cid not in own or cid not in index:
            known = ", ".join(map(str, sorted(index)))
            raise UsageError(
                f"{path}: {where} has unknown category_id {cid} (the categories of"
                f" {train_path.name} are {known}); fix the id or add the category"
            )
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise UsageError(f"{path}: {where} needs 'bbox': [x, y, w, h] numbers, got {bbox!r}")
        x, y, bw, bh = (float(v) for v in bbox)
        boxes[iid].append([x, y, x + bw, y + bh])
        labels[iid].append(index[cid])
    items = [
        _Item(p, _boxes(boxes[iid]), _labels(labels[iid]), path, iid, size)
        for iid, (p, size) in found.items()
    ]
    return items, crowd


def _coco_images(doc: dict, path: Path) -> dict[int, tuple[Path, tuple[int, int] | None]]:
    """image id -> (image path, declared (H, W)), in the file's order."""
    here = path.parent
    roots = [here, here.parent] if here.name == "annotations" else [here]
    tag = path.stem.removeprefix("instances_")  # instances_train2017 -> train2017/
    bases = [b for r in roots for b in (r, r / "images", r / tag, r / "images" / tag)]
    out: dict[int, tuple[Path, tuple[int, int] | None]] = {}
    for k, im in enumerate(_need(doc, "images", list, path, "the top level")):
        iid = _need(im, "id", int, path, f"images[{k}]")
        name = _need(im, "file_name", str, path, f"images[{k}]")
        if iid in out:
            raise UsageError(f"{path}: image id {iid} appears twice in 'images'; fix the file")
        for j, base in enumerate(bases):
            if (base / name).is_file():
                bases.insert(0, bases.pop(j))  # the folder that worked is tried first next time
                break
        else:
            raise UsageError(
                f"{path}: image {name!r} (id {iid}) is missing; looked in"
                f" {', '.join(str(b) for b in bases)}; put the images beside the JSON or"
                " under images/"
            )
        h, w = im.get("height"), im.get("width")
        declared = (h, w) if all(isinstance(v, int) and v > 0 for v in (h, w)) else None
        out[iid] = (bases[0] / name, declared)
    return out


# --------------------------------------------------------------------------------------------
# Pascal VOC


def _read_voc(arg: str) -> _Read:
    root = Path(arg).expanduser()
    ann_dir, img_dir, main = root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"
    if not ann_dir.is_dir():
        raise UsageError(
            f"{root} has no Annotations/ folder; voc:DIR needs DIR/Annotations/*.xml,"
            " DIR/JPEGImages/ and DIR/ImageSets/Main/{train,val,test}.txt"
        )
    lists: dict[str, tuple[Path, list[str]]] = {}
    for split, name in (
        ("train", "train"),
        ("train", "trainval"),
        ("val", "val"),
        ("test", "test"),
    ):
        f = main / f"{name}.txt"
        if split not in lists and f.is_file():
            lists[split] = (f, _voc_ids(f))
    if lists:
        rule = "VOC ImageSets/Main " + "/".join(f.stem for f, _ in lists.values())
    else:  # no split files: every annotation is training data, a test share is carved later
        lists["train"] = (ann_dir, sorted(p.stem for p in ann_dir.glob("*.xml")))
        rule = "VOC every Annotations/*.xml (no ImageSets/Main split files)"
    parsed = {
        split: [_voc_xml(ann_dir / f"{i}.xml", img_dir, listed, i) for i in ids]
        for split, (listed, ids) in lists.items()
    }
    if not parsed["train"]:
        return _Read({"train": []}, [], [], rule)  # load_detection says what is missing
    classes = sorted({n for item, names in parsed["train"] for n in names})
    index = {n: k for k, n in enumerate(classes)}
    splits = {}
    for split, records in parsed.items():
        for item, names in records:
            for n in names:
                if n not in index:
                    raise UsageError(
                        f"{item.source}: class {n!r} is in no training annotation"
                        f"{nearest(n, classes)}; fix the name (classes: {', '.join(classes)})"
                    )
            item.labels = _labels([index[n] for n in names])
        splits[split] = [item for item, _ in records]
    return _Read(splits, classes, list(range(1, len(classes) + 1)), rule)


def _voc_ids(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read split file {path} ({_one_line(e)}); fix it") from None
    # Per-class files ("id  1") carry a second column; the id is the first word.
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _voc_xml(xml_path: Path, img_dir: Path, listed: Path, image_id: str) -> tuple[_Item, list[str]]:
    """One VOC annotation: its item (labels still empty) and the class name of each box."""
    if not xml_path.is_file():
        raise UsageError(
            f"{listed} names {image_id!r} but {xml_path} does not exist; add it or drop the line"
        )
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise UsageError(
            f"{xml_path} is not valid XML ({_one_line(e)}); fix or re-export it"
        ) from None
    filename = (root.findtext("filename") or "").strip()
    candidates = [img_dir / filename] if filename else []
    candidates += [img_dir / f"{image_id}{ext}" for ext in (".jpg", ".jpeg", ".png", ".JPG")]
    image = next((c for c in candidates if c.is_file()), None)
    if image is None:
        raise UsageError(
            f"{listed} names {image_id!r} but its image {candidates[0]} does not exist; add the"
            " image or drop the line"
        )
    boxes, names = [], []
    # Corners are taken as written: VOC's 1-based pixel indices differ from corner
    # coordinates by at most one pixel, as torchvision's reader also accepts.
    for k, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        try:
            box = [
                float(obj.findtext(f"bndbox/{t}") or "") for t in ("xmin", "ymin", "xmax", "ymax")
            ]
        except ValueError:
            box = []
        if not name or len(box) != 4 or not all(map(math.isfinite, box)):
            raise UsageError(
                f"{xml_path}: <object> {k} needs a <name> and a <bndbox> with numeric <xmin>,"
                " <ymin>, <xmax>, <ymax>; fix the file"
            )
        boxes.append(box)
        names.append(name)
    return _Item(image, _boxes(boxes), _labels([]), xml_path, size=_voc_size(root)), names


def _voc_size(root: ET.Element) -> tuple[int, int] | None:
    try:
        h, w = int(root.findtext("size/height") or 0), int(root.findtext("size/width") or 0)
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None  # some tools write 0: then trust the image


# --------------------------------------------------------------------------------------------
# YOLO (Ultralytics and darknet layouts)


def _read_yolo(arg: str) -> _Read:
    target = Path(arg).expanduser()
    if target.is_file() and target.suffix.lower() in (".yaml", ".yml"):
        root, yaml_path = target.parent, target
    elif target.is_dir():
        root, yaml_path = target, _find_yaml(target)
    else:
        raise UsageError(
            f"YOLO folder or data YAML {target} does not exist; valid forms: {VALID_FORMS}"
        )
    cfg = _load_yaml(yaml_path) if yaml_path else {}
    classes, names_from = _yolo_names(cfg, yaml_path, root)
    lists, rule = _yolo_split_images(cfg, yaml_path, root)
    splits: dict[str, list[_Item]] = {}
    found = unlabelled = 0
    for split, images in lists.items():
        splits[split] = []
        for image in images:
            txt = _yolo_label_path(image)
            if txt is None:
                unlabelled += 1  # Ultralytics' rule: an image without a label file is a negative
                boxes, labels = _boxes([]), _labels([])
            else:
                found += 1
                boxes, labels = _yolo_labels(txt, len(classes), names_from)
            splits[split].append(_Item(image, boxes, labels, txt or image, normalized=True))
    if not found and any(lists.values()):
        raise UsageError(
            f"no YOLO label .txt found for any image under {root}; put them in labels/ mirroring"
            " images/ (images/train/a.jpg -> labels/train/a.txt) or beside each image"
        )
    notes = [f"{unlabelled} images have no label file (kept as negatives)"] if unlabelled else []
    return _Read(splits, classes, list(range(1, len(classes) + 1)), rule, notes)


def _find_yaml(root: Path) -> Path | None:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (root / name).is_file():
            return root / name
    found = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    if len(found) > 1:
        raise UsageError(
            f"{root} holds several YAML files ({', '.join(f.name for f in found)}); name the data"
            f" YAML: --data yolo:{found[0]}"
        )
    return found[0] if found else None


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"{path} is not valid YAML ({_one_line(e)}); fix it") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{path} should map keys (names, train, val, test) to values; fix it")
    return cfg


def _yolo_names(cfg: dict, yaml_path: Path | None, root: Path) -> tuple[list[str], Path]:
    """Class names (index = YOLO class) and the file they came from."""
    names, nc = cfg.get("names"), cfg.get("nc")
    if isinstance(names, list) and names:
        out = [str(n) for n in names]
    elif isinstance(names, dict) and names:
        if sorted(names) != list(range(len(names))):
            raise UsageError(
                f"{yaml_path}: names keys must be the class indices 0..{len(names) - 1}, got"
                f" {sorted(names, key=str)}; fix the YAML"
            )
        out = [str(names[i]) for i in range(len(names))]
    elif names is not None:
        raise UsageError(f"{yaml_path}: names should be a list or an index: name map; fix it")
    elif isinstance(nc, int) and nc > 0:
        out = [str(i) for i in range(nc)]
    else:
        return _names_file(root)
    assert yaml_path is not None  # names came from the YAML
    if isinstance(nc, int) and nc != len(out):
        raise UsageError(f"{yaml_path}: nc is {nc} but names lists {len(out)} classes; fix one")
    return out, yaml_path


def _names_file(root: Path) -> tuple[list[str], Path]:
    found = sorted(root.glob("*.names")) or sorted(root.glob("classes.txt"))
    if len(found) != 1:
        what = "several" if found else "no"
        raise UsageError(
            f"{root} has {what} class-name files ({', '.join(f.name for f in found) or 'none'});"
            " add one data.yaml with names: [...] or one .names file (a name per line)"
        )
    try:
        names = [ln.strip() for ln in found[0].read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {found[0]} ({_one_line(e)}); fix it") from None
    names = [n for n in names if n]
    if not names:
        raise UsageError(f"{found[0]} lists no class names; write one name per line")
    return names, found[0]


def _yolo_split_images(
    cfg: dict, yaml_path: Path | None, root: Path
) -> tuple[dict[str, list[Path]], str]:
    """Image paths per split, and the rule that found them."""
    if yaml_path is not None and any(cfg.get(s) for s in ("train", "val", "test")):
        if not cfg.get("train"):
            raise UsageError(f"{yaml_path} has val/test entries but no train; add train: PATH")
        base = Path(str(cfg.get("path") or "")).expanduser()
        base = base if base.is_absolute() else yaml_path.parent / base
        if not base.is_dir():
            base = yaml_path.parent  # Ultralytics reads `path` relative to its own datasets dir
        lists = {
            s: _yolo_entry(cfg[s], base, yaml_path, s)
            for s in ("train", "val", "test")
            if cfg.get(s)
        }
        return lists, f"YOLO {yaml_path.name} " + "/".join(lists)
    subs = {}
    for split in ("train", "val", "test"):
        for folder in (root / "images" / split, root / split):
            if split not in subs and folder.is_dir():
                subs[split] = folder
    if "train" in subs:
        return {s: _images_under(d) for s, d in subs.items()}, "YOLO subfolders " + "/".join(subs)
    return {"train": _images_under(root)}, f"YOLO flat folder {root}"


def _yolo_entry(entry: Any, base: Path, yaml_path: Path, split: str) -> list[Path]:
    """The images a YAML split entry names: a folder, a .txt list of images, or a list."""
    if isinstance(entry, list):
        return [p for e in entry for p in _yolo_entry(e, base, yaml_path, split)]
    if not isinstance(entry, str):
        raise UsageError(f"{yaml_path}: {split} should be a path or a list of paths, got {entry!r}")
    path = base / entry
    if not path.exists() and entry.startswith("../"):
        path = base / entry[3:]  # Roboflow exports write ../train/images; Ultralytics retries
    if path.is_dir():
        return _images_under(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        return _image_list(path, base)
    raise UsageError(f"{yaml_path}: {split}: {path} is neither a folder of images nor a .txt list")


def _image_list(path: Path, base: Path) -> list[Path]:
    """The images a darknet-style list file names, one path per line."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read image list {path} ({_one_line(e)}); fix it") from None
    out = []
    for ln, line in enumerate(lines, 1):
        if not line:
            continue
        p = Path(line).expanduser()
        # Relative lines are read from beside the list (Ultralytics) or the dataset root.
        candidates = [p] if p.is_absolute() else [path.parent / p, base / p]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UsageError(
                f"{path}:{ln} names image {line!r}, which does not exist (looked beside the list"
                f" and in {base}); fix the path or drop the line"
            )
        out.append(found)
    return out


def _yolo_label_path(image: Path) -> Path | None:
    """labels/ mirroring images/ (Ultralytics: the last /images/ becomes /labels/), else beside."""
    parts = image.parts
    if "images" in parts[:-1]:
        k = len(parts) - 2 - parts[:-1][::-1].index("images")
        mirrored = Path(*parts[:k], "labels", *parts[k + 1 :]).with_suffix(".txt")
        if mirrored.is_file():
            return mirrored
    beside = image.with_suffix(".txt")
    return beside if beside.is_file() else None


def _yolo_labels(txt: Path, k: int, names_from: Path) -> tuple[np.ndarray, np.ndarray]:
    """(cx, cy, w, h) rows normalised to [0, 1], and class indices, of one YOLO label file."""
    try:
        lines = txt.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read label file {txt} ({_one_line(e)}); fix it") from None
    boxes, labels = [], []
    for ln, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(parts) != 5 or len(values) != 5 or not values[0].is_integer():
            raise UsageError(
                f"{txt}:{ln}: expected 'class cx cy w h' (a class index and 4 numbers), got"
                f" {line.strip()!r}; fix the line"
            )
        c = int(values[0])
        if not 0 <= c < k:
            raise UsageError(
                f"{txt}:{ln}: class {c} is unknown: {names_from} names {k} classes (0..{k - 1});"
                " fix the index or add the name"
            )
        bad = [v for v in values[1:] if not -YOLO_TOLERANCE <= v <= 1 + YOLO_TOLERANCE]
        if bad:
            raise UsageError(
                f"{txt}:{ln}: value {bad[0]:g} is far outside [0, 1]; YOLO boxes are fractions"
                " of the image size (pixel coordinates?); fix the file"
            )
        boxes.append(values[1:])
        labels.append(c)
    return _boxes(boxes), _labels(labels)
