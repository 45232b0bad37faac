"""Fashion scenes: a small-object detection dataset generated from Fashion-MNIST, no download.

Each scene is a ``size x size`` grayscale canvas (PNG mode ``"L"``) holding 1–8 Fashion-MNIST
items pasted at random places that do not overlap, on a background of smooth low-frequency
shading, a finer texture and pixel noise that all vary per scene. It exists so that the
detection work, above all the small-object and image-pyramid tricks of the seed notes (section
8.1), has a default dataset that is cheap, deterministic and full of small objects. The longer
side of each item is drawn log-uniformly from ``item_px``, 12–160 px by default. Measured on
the default set (2,700 scenes, 11,881 boxes): 47% of the boxes are small by COCO's rule (area
w·h < 32²), 42% medium (< 96²) and 11% large; uniform sizes would make only about a fifth
small. The upper end is 160 rather than 120 because cropped items are on average only 0.65 as
wide as they are long, so 12–120 px left just 3% of the boxes large.

What :func:`make_scenes` writes, read back by ``--data coco:DIR``::

    DIR/scenes.json                    arguments + format version (the cache key)
    DIR/instances_{train,val,test}.json  COCO: images, annotations, 10 categories (ids 1..10)
    DIR/images/{train,val,test}/NNNNNN.png   file_name in the JSON is relative to DIR

How an item is drawn: crop the 28x28 item to its visible pixels (intensity >= ``ITEM_FLOOR``),
resize it (antialiased bilinear) so its longer side is the drawn size, keeping the crop's own
aspect; pixels that fall under the floor after resizing are dropped, and the box is the
bounding box of what remains, so it is tight around the pasted item. The item is blended
towards white with its intensity as alpha, so every item pixel is brighter than the background
beneath it. A box's ``area`` is its ``w * h``, the rule COCO's size bins use here.

Sources: test scenes use only Fashion-MNIST *test* items; validation scenes use training items
50000–59999 and training scenes items 0–49999, so validation items are unseen in training.
Each annotation records its item as ``"source": {"split": "train", "index": i}`` (COCO readers
ignore extra fields).

Randomness: scene ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``
and from nothing else, so a seed gives byte-identical files, and the test scenes do not change
when ``n_train`` does.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from freebies.data.datasets import load_dataset
from freebies.data.idx import FASHION_MNIST_CLASSES
from freebies.data.io import write_text
from freebies.errors import UsageError

__all__ = ["default_scenes_dir", "ensure_scenes", "make_scenes"]

VERSION = 1  # bump when the drawing changes, so that cached folders are regenerated
ITEM_FLOOR = 16  # item pixels dimmer than this (of 255) are dropped: too faint to be "the item"
MAX_TRIES = 64  # random positions tried per item before it is left out of the scene
GAP = 2  # px kept free between boxes, so that neighbouring items never touch
SPLITS = ("train", "val", "test")
_VAL_FROM = 50_000  # training items from here on feed the validation scenes
_JSONS = ["scenes.json", *(f"instances_{s}.json" for s in SPLITS)]
_OURS = {"images", *_JSONS}  # all a scenes folder may hold, with write_text's NAME.PID.tmp


def _is_tmp(name: str) -> bool:
    """A temporary file of `write_text` for one of the scenes' JSON files."""
    base, _, rest = name.partition(".json.")
    return f"{base}.json" in _JSONS and rest.endswith(".tmp")


@dataclass
class _Scene:
    """One drawn scene: the image, its boxes and which pixel belongs to which item."""

    image: np.ndarray  # uint8 (size, size)
    boxes: list[tuple[int, int, int, int]]  # (x, y, w, h) in pixels, COCO's order
    labels: list[int]  # class 0..9 per box
    sources: list[int]  # index of the Fashion-MNIST item in its file, per box
    instances: np.ndarray  # int16 (size, size): 0 = background, k + 1 = pixels of box k


@dataclass
class _Pool:
    """The Fashion-MNIST items one split draws from, with their visible-pixel crops."""

    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)
    crops: np.ndarray  # int64 (N, 4): y0, y1, x0, x1 (exclusive ends) of pixels >= ITEM_FLOOR
    split: str  # "train" or "test": the Fashion-MNIST file the items come from
    offset: int  # index of images[0] in that file


def default_scenes_dir() -> Path:
    """Where ``freebies detect`` keeps the default Fashion scenes.

    ``$FREEBIES_DATA/scenes`` when ``FREEBIES_DATA`` is set (the variable the dataset loader
    already searches), else ``~/.cache/freebies/scenes``. A folder made by another version or
    with other arguments is regenerated in place (see :func:`make_scenes`).
    """
    env = os.environ.get("FREEBIES_DATA")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "freebies"
    return root / "scenes"


def ensure_scenes(out: Path | None = None, **kwargs: Any) -> Path:
    """The Fashion scenes folder, made first if it is missing or was made with other arguments.

    ``out`` defaults to :func:`default_scenes_dir`; ``kwargs`` are those of :func:`make_scenes`.
    Under torchrun, call it on one rank first: two processes must not write one folder at once.
    """
    return make_scenes(default_scenes_dir() if out is None else Path(out), **kwargs)


def make_scenes(
    out: Path,
    *,
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 500,
    size: int = 256,
    seed: int = 0,
    items: tuple[int, int] = (1, 8),
    item_px: tuple[float, float] = (12.0, 160.0),
) -> Path:
    """Write the Fashion scenes COCO dataset into ``out`` and return ``out``.

    Args:
        out: the folder to write (created if needed).
        n_train, n_val, n_test: scenes per split.
        size: canvas side in pixels (square, grayscale).
        seed: the one seed every random choice derives from.
        items: inclusive range of items attempted per scene; an item that finds no free place
            after ``MAX_TRIES`` positions is left out, so crowded scenes may hold fewer.
        item_px: range of the longer side of an item in pixels, drawn log-uniformly.

    Cached: when ``out/scenes.json`` says a complete dataset with these arguments and this
    version is there, it returns at once. A folder holding only an older scenes dataset is
    regenerated in place; any other non-empty folder raises :class:`UsageError`.
    """
    args = _check_args(n_train, n_val, n_test, size, seed, items, item_px)
    out = Path(out)
    if _is_cached(out, args):
        return out
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "scenes.json", {"version": VERSION, "args": args, "complete": False})
    pools = _load_pools()
    counts = {"train": n_train, "val": n_val, "test": n_test}
    threads = torch.get_num_threads()
    # Every tensor here is small: one thread is faster than several spinning on shared cores.
    torch.set_num_threads(1)
    try:
        for number, split in enumerate(SPLITS):
            coco = _write_split(out, split, number, counts[split], pools[split], args)
            _write_json(out / f"instances_{split}.json", coco)
    finally:
        torch.set_num_threads(threads)
    _write_json(out / "scenes.json", {"version": VERSION, "args": args, "complete": True})
    return out


def _check_args(
    n_train: int,
    n_val: int,
    n_test: int,
    size: int,
    seed: int,
    items: tuple[int, int],
    item_px: tuple[float, float],
) -> dict:
    """The arguments as plain JSON values (the cache key), or a UsageError naming the bad one."""
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"scenes: {name} must be a whole number >= 0, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise UsageError(f"scenes: size must be a whole number of pixels >= 16, got {size!r}")
    try:
        lo, hi = items
        small, large = (float(v) for v in item_px)
    except (TypeError, ValueError):
        raise UsageError(
            f"scenes: items and item_px are (min, max) pairs, got {items!r} and {item_px!r}"
        ) from None
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        raise UsageError(
            f"scenes: items must be (min, max) counts with 0 <= min <= max, got {items!r}"
        )
    if not 2.0 <= small <= large <= size - 2 * GAP:
        raise UsageError(
            f"scenes: item_px must be (min, max) with 2 <= min <= max <= size - {2 * GAP}"
            f" = {size - 2 * GAP}, got {item_px!r}"
        )
    return {
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "size": size,
        "seed": seed,
        "items": [lo, hi],
        "item_px": [small, large],
    }


# --------------------------------------------------------------------------------------------
# The cache and the folder


def _read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / "scenes.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_cached(out: Path, args: dict) -> bool:
    manifest = _read_manifest(out)
    if not manifest or manifest.get("version") != VERSION or manifest.get("args") != args:
        return False
    if manifest.get("complete") is not True:
        return False
    # A cheap completeness check: the JSONs exist and each split has its images (by count).
    for split in SPLITS:
        if not (out / f"instances_{split}.json").is_file():
            return False
        folder = out / "images" / split
        n = sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0
        if n != args[f"n_{split}"]:
            return False
    return True


def _clear_previous(out: Path) -> None:
    """Remove an earlier scenes dataset from ``out``; refuse if it holds anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"scenes: {out} is a file, not a folder; pass --out a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if "scenes.json" not in entries:
        raise UsageError(
            f"scenes: {out} is not empty and holds no Fashion scenes (no scenes.json);"
            " choose an empty or new folder"
        )
    stray = [e for e in entries if e not in _OURS and not _is_tmp(e)]
    images = out / "images"
    if images.is_dir():
        for sub in sorted(images.iterdir()):
            if sub.name not in SPLITS or not sub.is_dir():
                stray.append(f"images/{sub.name}")
            else:
                stray += [
                    f"images/{sub.name}/{f.name}" for f in sub.iterdir() if f.suffix != ".png"
                ]
    if stray:
        raise UsageError(
            f"scenes: {out} holds Fashion scenes to be remade but also {stray[0]}, which is"
            " not part of them; move that away or choose another folder"
        )
    shutil.rmtree(images, ignore_errors=True)  # stale images from a larger earlier set


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------------------------
# The items


def _visible_crops(images: torch.Tensor) -> np.ndarray:
    """(N, 4) y0, y1, x0, x1 of each item's pixels >= ITEM_FLOOR, vectorised over all items."""
    visible = (images >= ITEM_FLOOR).numpy()
    rows, cols = visible.any(2), visible.any(1)  # (N, H), (N, W)
    h, w = rows.shape[1], cols.shape[1]
    y0, x0 = rows.argmax(1), cols.argmax(1)
    y1 = h - rows[:, ::-1].argmax(1)
    x1 = w - cols[:, ::-1].argmax(1)
    empty = ~rows.any(1)  # a blank item would crop to nothing; keep the full square instead
    y0[empty], x0[empty], y1[empty], x1[empty] = 0, 0, h, w
    return np.stack([y0, y1, x0, x1], 1).astype(np.int64)


def _load_pools() -> dict[str, _Pool]:
    """Fashion-MNIST split into the item pools of the three scene splits."""
    data = load_dataset("fashion-mnist")
    assert isinstance(data.train_x, torch.Tensor) and isinstance(data.test_x, torch.Tensor)
    train_x, test_x = data.train_x[:, 0], data.test_x[:, 0]
    train_y, test_y = data.train_y.numpy(), data.test_y.numpy()
    train_crops, test_crops = _visible_crops(train_x), _visible_crops(test_x)
    cut = _VAL_FROM
    return {
        "train": _Pool(train_x[:cut], train_y[:cut], train_crops[:cut], "train", 0),
        "val": _Pool(train_x[cut:], train_y[cut:], train_crops[cut:], "train", cut),
        "test": _Pool(test_x, test_y, test_crops, "test", 0),
    }


def _render_item(image: torch.Tensor, crop: np.ndarray, long_side: float) -> np.ndarray | None:
    """The item cropped, resized so its longer side is ``long_side``, re-cropped to its visible
    pixels (float32 (h, w) in [0, 1], zero where the item is not), or None if nothing is left."""
    y0, y1, x0, x1 = (int(v) for v in crop)
    patch = image[y0:y1, x0:x1].float()[None, None] / 255.0
    scale = long_side / max(y1 - y0, x1 - x0)
    h, w = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    resized = F.interpolate(
        patch, size=(h, w), mode="bilinear", antialias=True, align_corners=False
    )
    item = resized[0, 0].clamp_(0, 1).numpy()
    # Resampling spreads faint fringes; dropping them keeps the box on what can be seen.
    item[item < ITEM_FLOOR / 255.0] = 0.0
    rows, cols = np.flatnonzero(item.any(1)), np.flatnonzero(item.any(0))
    if rows.size == 0:
        return None
    return item[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@functools.lru_cache(maxsize=256)
def _upsampler(grid: int, size: int, mode: str) -> torch.Tensor:
    """float32 (size, grid): torch's 1-D ``mode`` upsampling from ``grid`` to ``size`` samples
    as a matrix, so a smooth 2-D field is ``A @ noise @ A.T`` (both modes are separable)."""
    eye = torch.eye(grid)[None, None]  # interpolating the identity gives the weights
    return F.interpolate(eye, size=(size, grid), mode=mode, align_corners=False)[0, 0]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size) in [0, 150]: shading + texture + pixel noise, all varying per scene.

    Kept darker than white so that items, blended towards white, always stand out. The
    smooth fields are two small matrix products, not a 2-D resize of the whole canvas.
    """

    def smooth(grid: int, mode: str) -> np.ndarray:
        a = _upsampler(grid, size, mode)
        up = (
            a @ torch.from_numpy(rng.standard_normal((grid, grid), dtype=np.float32)) @ a.T
        ).numpy()
        return up / max(float(np.abs(up).max()), 1e-6)  # in [-1, 1]

    shading = smooth(int(rng.integers(2, 7)), "bicubic") * np.float32(rng.uniform(5, 45))
    texture = smooth(int(rng.integers(16, 65)), "bilinear") * np.float32(rng.uniform(0, 12))
    pixels = rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(0, 4))
    canvas = np.float32(rng.uniform(15, 95)) + shading + texture + pixels
    return np.clip(canvas, 0, 150, out=canvas)


# --------------------------------------------------------------------------------------------
# The scenes


def _place(rng: np.random.Generator, shapes: list[tuple[int, int]], size: int) -> list:
    """Top-left (x, y) for each (h, w) in order, boxes at least GAP apart, or None where
    MAX_TRIES random positions all collide. One draw per item whether it fits or not."""
    placed = np.empty((0, 4), np.int64)  # x0, y0, x1, y1 (exclusive) of boxes placed so far
    spots: list[tuple[int, int] | None] = []
    for h, w in shapes:
        xs = rng.integers(0, size - w + 1, MAX_TRIES)
        ys = rng.integers(0, size - h + 1, MAX_TRIES)
        clash = (
            (xs[:, None] < placed[None, :, 2] + GAP)
            & (xs[:, None] + w + GAP > placed[None, :, 0])
            & (ys[:, None] < placed[None, :, 3] + GAP)
            & (ys[:, None] + h + GAP > placed[None, :, 1])
        ).any(1)
        free = np.flatnonzero(~clash)
        if free.size == 0:
            spots.append(None)
            continue
        x, y = int(xs[free[0]]), int(ys[free[0]])
        placed = np.vstack([placed, [x, y, x + w, y + h]])
        spots.append((x, y))
    return spots


def _draw_scene(
    rng: np.random.Generator,
    pool: _Pool,
    size: int,
    items: tuple[int, int],
    item_px: tuple[float, float],
) -> _Scene:
    """One scene: background, then items largest first (so the large ones, which are the
    hardest to fit, are not the ones left out), each blended towards white by its intensity."""
    canvas = _background(rng, size)
    count = int(rng.integers(items[0], items[1] + 1))
    picks = rng.integers(0, len(pool.labels), count)
    sides = np.exp(rng.uniform(math.log(item_px[0]), math.log(item_px[1]), count))
    rendered = [
        (int(i), _render_item(pool.images[i], pool.crops[i], s))
        for i, s in zip(picks, sides, strict=True)
    ]
    rendered = [(i, a) for i, a in rendered if a is not None]
    rendered.sort(key=lambda r: -r[1].size)  # stable: ties keep the drawn order
    spots = _place(rng, [a.shape for _, a in rendered], size)
    scene = _Scene(canvas, [], [], [], np.zeros((size, size), np.int16))
    for (index, alpha), spot in zip(rendered, spots, strict=True):
        if spot is None:
            continue
        x, y = spot
        h, w = alpha.shape
        region = canvas[y : y + h, x : x + w]
        region += (255.0 - region) * alpha  # in place: every item pixel ends brighter
        mask = alpha > 0
        scene.instances[y : y + h, x : x + w][mask] = len(scene.boxes) + 1
        # The box comes from the pasted pixels, not the paste rectangle (they agree, since
        # _render_item crops to the visible pixels; this keeps the box right if that changes).
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box_w, box_h = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
        scene.boxes.append((x + int(cols[0]), y + int(rows[0]), box_w, box_h))
        scene.labels.append(int(pool.labels[index]))
        scene.sources.append(pool.offset + index)
    scene.image = np.rint(canvas).astype(np.uint8)
    return scene


def _write_split(out: Path, split: str, number: int, n: int, pool: _Pool, args: dict) -> dict:
    """Draw and save the ``n`` scenes of one split; return its COCO dictionary."""
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    items, item_px = tuple(args["items"]), tuple(args["item_px"])
    images, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng([args["seed"], number, i])
        scene = _draw_scene(rng, pool, args["size"], items, item_px)
        name = f"{i:06d}.png"
        # Level 4 compresses these noisy canvases as well as the default 6, in half the time.
        Image.fromarray(scene.image).save(folder / name, compress_level=4)
        images.append(
            {
                "id": i + 1,
                "file_name": f"images/{split}/{name}",
                "width": args["size"],
                "height": args["size"],
            }
        )
        for box, label, source in zip(scene.boxes, scene.labels, scene.sources, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": list(box),
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                    "source": {"split": pool.split, "index": source},
                }
            )
    categories = [
        {"id": k + 1, "name": name, "supercategory": "fashion"}
        for k, name in enumerate(FASHION_MNIST_CLASSES)
    ]
    info = {"description": f"Fashion scenes v{VERSION}, {split} split", "version": str(VERSION)}
    info["arguments"] = args
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}
