"""COCO detection files -> :class:`~freebies.data.annotations.Read`.

``coco:DIR``: one COCO annotation JSON per split, ``instances_train*.json`` and
``instances_val*.json`` / ``instances_test*.json`` in DIR (or DIR/annotations). Images sit
beside the JSON, under ``images/``, under a folder named like the JSON (``train2017/``), or
at their ``file_name`` path relative to DIR. ``coco:TRAIN.json,TEST.json`` (or
``TRAIN,VAL,TEST``) names the files instead. Boxes are ``bbox: [x, y, w, h]`` in pixels;
``iscrowd`` annotations are crowd regions: left out of training (and so of augmentation), kept
for evaluation, where COCO's evaluator ignores the detections that fall on them rather than
counting them as false positives. Each annotation's ``area`` (a segmentation's area on real
COCO files) is kept for COCO's size bins; without one, the box's w x h is used, as COCO does.

Parsed with ``json`` and checked entry by entry here, not with ``faster_coco_eval.COCO``: its
index raises a bare KeyError for an annotation without ``id`` (which this reader accepts),
turns string ids into ints and keeps the last of two images with one id, so the one-line
errors that name the entry at fault would need these checks anyway.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from freebies.data.annotations import VALID_FORMS, Item, Read, box_rows, label_rows
from freebies.data.io import one_line
from freebies.errors import UsageError

__all__ = ["read_coco"]


def read_coco(arg: str) -> Read:
    """The splits of ``coco:ARG`` (a folder, or 1-3 JSON files)."""
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
                f"{path} is not valid JSON ({one_line(e)}); fix or re-export it"
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
    notes = [f"left {crowd} crowd (iscrowd) regions out of training (evaluation ignores them)"]
    notes = notes if crowd else []
    return Read(splits, [train_cats[c] for c in ids], ids, rule, notes)


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
) -> tuple[list[Item], int]:
    """The images of one COCO file with their boxes (crowd regions marked), and how many
    crowd regions there were."""
    own = _coco_categories(doc, path)
    found = _coco_images(doc, path)
    rows: dict[int, list[tuple[list[float], int, float, bool]]] = {iid: [] for iid in found}
    crowd = 0
    for k, ann in enumerate(_need(doc, "annotations", list, path, "the top level")):
        where = f"annotations[{k}]"
        iid = _need(ann, "image_id", int, path, where)
        if iid not in found:
            raise UsageError(f"{path}: {where} refers to image_id {iid}, which 'images' lacks")
        is_crowd = bool(ann.get("iscrowd", 0))  # COCO evaluates crowd regions as "ignore"
        crowd += is_crowd
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
        rows[iid].append(([x, y, x + bw, y + bh], index[cid], _area(ann, path, where), is_crowd))
    items = [
        Item(
            p,
            box_rows([r[0] for r in rows[iid]]),
            label_rows([r[1] for r in rows[iid]]),
            path,
            iid,
            size,
            areas=np.array([r[2] for r in rows[iid]], dtype=np.float64),
            crowd=np.array([r[3] for r in rows[iid]], dtype=bool),
        )
        for iid, (p, size) in found.items()
    ]
    return items, crowd


def _area(ann: dict, path: Path, where: str) -> float:
    """The annotation's own ``area`` (NaN when it has none), checked."""
    area = ann.get("area")
    if area is None:
        return math.nan
    if isinstance(area, bool) or not isinstance(area, int | float) or not 0 <= area < math.inf:
        raise UsageError(f"{path}: {where} has 'area' {area!r}; it must be a number >= 0")
    return float(area)


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
