"""Write small detection datasets in the real on-disk formats, for tests.

* COCO: ``instances_<split>.json`` (``images``, ``annotations`` with ``bbox: [x, y, w, h]``,
  ``categories``) with PNG/JPEG images beside it, under ``images/``, or at a nested
  ``file_name``.
* Pascal VOC: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt``.
* YOLO: ``class cx cy w h`` lines normalised to [0, 1], in the Ultralytics layout
  (``images/<split>/``, ``labels/<split>/``, ``data.yaml``), the darknet layout (a ``.txt``
  beside each image, ``obj.names``) or one flat folder.

Each scene knows its boxes in pixels, so a test can compare what the loader read with what
was written. Every box is a filled rectangle in its class's colour over dark noise, so a test
can also check that letterboxed boxes still sit on their pixels.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@dataclass
class Scene:
    """One image: its size and its boxes in pixels."""

    name: str  # file stem, unique across splits
    height: int
    width: int
    boxes: np.ndarray  # float64 (n, 4) xyxy pixels (whole numbers, inside the image)
    labels: np.ndarray  # int64 (n,) class index
    crowd: np.ndarray | None = None  # bool (n,): COCO iscrowd regions (COCO files only)
    areas: np.ndarray | None = None  # float64 (n,): COCO `area`, NaN = none written; default w*h


def cycled_scenes(n: int, prefix: str, classes: int, seed: int = 0) -> list[Scene]:
    """n scenes whose labels cycle through all `classes`, so every split sees each class."""
    out = make_scenes(n, seed=seed, prefix=prefix)
    k = 0
    for s in out:
        s.labels = (np.arange(len(s.labels)) + k) % classes
        k += len(s.labels)
    return out


def make_scenes(
    n: int,
    *,
    seed: int = 0,
    classes: int = 3,
    sizes: tuple[tuple[int, int], ...] = ((48, 64), (60, 36)),
    max_boxes: int = 3,
    prefix: str = "img",
) -> list[Scene]:
    """``n`` scenes with 1..max_boxes boxes each, sizes (H, W) cycling through ``sizes``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        k = int(rng.integers(1, max_boxes + 1))
        x1 = rng.integers(0, w - 8, size=k)
        y1 = rng.integers(0, h - 8, size=k)
        x2 = x1 + rng.integers(4, 9, size=k)
        y2 = y1 + rng.integers(4, 9, size=k)
        boxes = np.stack([x1, y1, np.minimum(x2, w), np.minimum(y2, h)], 1).astype(np.float64)
        labels = rng.integers(0, classes, size=k).astype(np.int64)
        out.append(Scene(f"{prefix}{i:03d}", h, w, boxes, labels))
    return out


def render(scene: Scene) -> np.ndarray:
    """uint8 (H, W, 3): dark noise with each box filled in its class's colour."""
    rng = np.random.default_rng(zlib.crc32(scene.name.encode()))
    image = rng.integers(0, 40, size=(scene.height, scene.width, 3), dtype=np.uint8)
    for (x1, y1, x2, y2), c in zip(scene.boxes.astype(int), scene.labels, strict=True):
        image[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = COLORS[c % len(COLORS)]
    return image


def save_image(path: Path, scene: Scene) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(scene)).save(path, quality=95)


def write_coco(
    root: Path,
    splits: dict[str, list[Scene]],
    classes: list[str],
    *,
    category_ids: list[int] | None = None,
    layout: str = "beside",
    ext: str = ".png",
) -> dict[str, Path]:
    """One ``instances_<split>.json`` per split in ``root``; returns split -> JSON path.

    ``layout``: "beside" (images next to the JSON), "images" (under ``root/images/``) or
    "nested" (``file_name`` = ``pics/<split>/x.png``, relative to ``root``). Image ids are
    the file's own (100, 107, 114, ... across all splits), not positions. A scene's ``crowd``
    and ``areas`` become its annotations' ``iscrowd`` and ``area`` (default 0 and w * h).
    """
    ids = category_ids or list(range(1, len(classes) + 1))
    root.mkdir(parents=True, exist_ok=True)
    out, next_id = {}, 100
    for split, scenes in splits.items():
        images, anns = [], []
        for scene in scenes:
            name = f"pics/{split}/{scene.name}{ext}" if layout == "nested" else scene.name + ext
            folder = root / "images" if layout == "images" else root
            save_image(folder / name, scene)
            images.append(
                {"id": next_id, "file_name": name, "height": scene.height, "width": scene.width}
            )
            for j, ((x1, y1, x2, y2), c) in enumerate(zip(scene.boxes, scene.labels, strict=True)):
                box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
                area = box[2] * box[3] if scene.areas is None else float(scene.areas[j])
                ann = {
                    "id": len(anns) + 1,
                    "image_id": next_id,
                    "category_id": ids[c],
                    "bbox": box,
                    "area": area,
                    "iscrowd": 0 if scene.crowd is None else int(scene.crowd[j]),
                }
                if np.isnan(area):
                    del ann["area"]
                anns.append(ann)
            next_id += 7
        pairs = zip(ids, classes, strict=True)
        cats = [{"id": i, "name": n, "supercategory": "thing"} for i, n in pairs]
        doc = {"images": images, "annotations": anns, "categories": cats}
        out[split] = root / f"instances_{split}.json"
        out[split].write_text(json.dumps(doc))
    return out


def pycocotools_eval(doc: dict, results: list[dict], classes: list[str], ids: list[int]) -> dict:
    """The reference: pycocotools' COCOeval of `results` (COCO's results format) against the
    COCO document `doc`; map, map_50, ..., map_large and ap_per_class, in percent (None where
    there is no ground truth)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from freebies.detection.coco import KEYS

    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {k: None if v < 0 else 100 * float(v) for k, v in zip(KEYS, ev.stats, strict=False)}
    per_class = {}
    for name, cid in zip(classes, ids, strict=True):
        p = ev.eval["precision"][:, :, ev.params.catIds.index(cid), 0, -1]
        per_class[name] = 100 * float(p[p > -1].mean()) if (p > -1).any() else None
    return {**out, "ap_per_class": per_class}


def voc_xml(scene: Scene, classes: list[str], filename: str) -> str:
    """A Pascal VOC annotation for ``scene``, as labelImg writes it."""
    objects = "".join(
        f"<object><name>{escape(classes[c])}</name><pose>Unspecified</pose>"
        "<truncated>0</truncated><difficult>0</difficult><bndbox>"
        f"<xmin>{x1:g}</xmin><ymin>{y1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax>"
        "</bndbox></object>\n"
        for (x1, y1, x2, y2), c in zip(scene.boxes, scene.labels, strict=True)
    )
    return (
        f"<annotation>\n<folder>JPEGImages</folder><filename>{filename}</filename>\n"
        f"<size><width>{scene.width}</width><height>{scene.height}</height><depth>3</depth>"
        f"</size><segmented>0</segmented>\n{objects}</annotation>\n"
    )


def write_voc(
    root: Path, splits: dict[str, list[Scene]], classes: list[str], *, ext: str = ".jpg"
) -> Path:
    """``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt`` under ``root``."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, scenes in splits.items():
        for scene in scenes:
            save_image(root / "JPEGImages" / f"{scene.name}{ext}", scene)
            xml = voc_xml(scene, classes, f"{scene.name}{ext}")
            (root / "Annotations" / f"{scene.name}.xml").write_text(xml)
        ids = "".join(f"{s.name}\n" for s in scenes)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(ids)
    return root


def yolo_lines(scene: Scene) -> str:
    """``class cx cy w h`` lines, normalised by the image size, at full precision."""
    lines = []
    for (x1, y1, x2, y2), c in zip(scene.boxes, scene.labels, strict=True):
        w, h = scene.width, scene.height
        vals = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        lines.append(f"{c} " + " ".join(repr(float(v)) for v in vals))
    return "".join(line + "\n" for line in lines)


def write_yolo(
    root: Path,
    splits: dict[str, list[Scene]],
    classes: list[str],
    *,
    layout: str = "ultralytics",
    names: str = "list",
) -> Path:
    """A YOLO dataset under ``root``; returns ``root``.

    ``layout``: "ultralytics" (``images/<split>/``, ``labels/<split>/``), "darknet"
    (``<split>/x.png`` with ``<split>/x.txt`` beside it) or "flat" (``images/`` and
    ``labels/``, all splits together). ``names``: "list" or "dict" write a ``data.yaml``
    (with train/val/test entries for the Ultralytics layout), "file" writes ``obj.names``.
    """
    for split, scenes in splits.items():
        for scene in scenes:
            if layout == "ultralytics":
                image = root / "images" / split / f"{scene.name}.png"
                label = root / "labels" / split / f"{scene.name}.txt"
            elif layout == "darknet":
                image = root / split / f"{scene.name}.png"
                label = image.with_suffix(".txt")
            else:
                image = root / "images" / f"{scene.name}.png"
                label = root / "labels" / f"{scene.name}.txt"
            save_image(image, scene)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(yolo_lines(scene))
    if names == "file":
        (root / "obj.names").write_text("".join(f"{n}\n" for n in classes))
        return root
    if names == "dict":
        listed = "\n".join(f"  {i}: {n}" for i, n in enumerate(classes))
        text = f"names:\n{listed}\n"
    else:
        text = f"names: [{', '.join(classes)}]\n"
    if layout == "ultralytics":
        text += "".join(f"{s}: images/{s}\n" for s in splits)
    (root / "data.yaml").write_text(f"path: .\nnc: {len(classes)}\n{text}")
    return root
