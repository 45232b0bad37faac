"""What a detection reader returns: each image's annotation as read from the files, per
split, with the class mapping; the readers (coco, voc, yolo) share these records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["VALID_FORMS", "Item", "Read", "box_rows", "label_rows"]

VALID_FORMS = "coco:DIR, coco:TRAIN.json,TEST.json, voc:DIR, yolo:DIR (or yolo:DATA.yaml)"


@dataclass
class Item:
    """One image's annotation as read from the files, before the image is decoded."""

    path: Path
    boxes: np.ndarray  # float64 (n, 4): xyxy pixels, or YOLO's normalised cx, cy, w, h
    labels: np.ndarray  # int64 (n,)
    source: Path  # the annotation file, for messages
    image_id: int | None = None  # the file's own id (COCO)
    size: tuple[int, int] | None = None  # (H, W) the annotation declares, checked on decode
    normalized: bool = False  # YOLO: boxes are cx, cy, w, h relative to the decoded size
    areas: np.ndarray | None = None  # float64 (n,): COCO's `area` per box, NaN where not given
    crowd: np.ndarray | None = None  # bool (n,): COCO's `iscrowd` regions (evaluation only)


@dataclass
class Read:
    """What a format reader found: items per split and the class mapping."""

    splits: dict[str, list[Item]]
    classes: list[str]
    category_ids: list[int]
    rule: str
    notes: list[str] = field(default_factory=list)


def box_rows(rows: list[list[float]]) -> np.ndarray:
    """float64 (n, 4) boxes from a list of 4-number rows (n may be 0)."""
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def label_rows(rows: list[int]) -> np.ndarray:
    """int64 (n,) class indices."""
    return np.array(rows, dtype=np.int64)
