"""YOLO files (Ultralytics and darknet layouts) -> :class:`~freebies.data.annotations.Read`.

``yolo:DIR`` (or ``yolo:DATA.yaml``): one ``class cx cy w h`` line per box, normalised to
[0, 1]. Labels live in ``labels/`` mirroring ``images/`` (Ultralytics: ``images/train/a.jpg``
-> ``labels/train/a.txt``) or beside each image (darknet). Class names come from the data
YAML's ``names`` (a list or a ``{index: name}`` dict) or a ``*.names`` / ``classes.txt``
file. Splits come from the YAML's ``train`` / ``val`` / ``test`` entries (folders, image
lists in .txt files, or lists of those), else ``train`` / ``val`` / ``test`` subfolders,
else the whole folder is training data. YAML is read with ``yaml.safe_load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from freebies.data.annotations import VALID_FORMS, Item, Read, box_rows, label_rows
from freebies.data.io import IMAGE_EXTENSIONS, one_line
from freebies.errors import UsageError

__all__ = ["read_yolo"]

# YOLO coordinates a little past [0, 1] are rounding in exporters; further out they are
# pixels or garbage, which clipping would silently turn into wrong boxes.
YOLO_TOLERANCE = 0.01


def read_yolo(arg: str) -> Read:
    """The splits of ``yolo:ARG`` (a folder or a data YAML)."""
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
    splits: dict[str, list[Item]] = {}
    found = unlabelled = 0
    for split, images in lists.items():
        splits[split] = []
        for image in images:
            txt = _yolo_label_path(image)
            if txt is None:
                unlabelled += 1  # Ultralytics' rule: an image without a label file is a negative
                boxes, labels = box_rows([]), label_rows([])
            else:
                found += 1
                boxes, labels = _yololabel_rows(txt, len(classes), names_from)
            splits[split].append(Item(image, boxes, labels, txt or image, normalized=True))
    if not found and any(lists.values()):
        raise UsageError(
            f"no YOLO label .txt found for any image under {root}; put them in labels/ mirroring"
            " images/ (images/train/a.jpg -> labels/train/a.txt) or beside each image"
        )
    notes = [f"{unlabelled} images have no label file (kept as negatives)"] if unlabelled else []
    return Read(splits, classes, list(range(1, len(classes) + 1)), rule, notes)


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
        raise UsageError(f"{path} is not valid YAML ({one_line(e)}); fix it") from None
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
        raise UsageError(f"cannot read {found[0]} ({one_line(e)}); fix it") from None
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
        raise UsageError(f"cannot read image list {path} ({one_line(e)}); fix it") from None
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


def _yololabel_rows(txt: Path, k: int, names_from: Path) -> tuple[np.ndarray, np.ndarray]:
    """(cx, cy, w, h) rows normalised to [0, 1], and class indices, of one YOLO label file."""
    try:
        lines = txt.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read label file {txt} ({one_line(e)}); fix it") from None
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
    return box_rows(boxes), label_rows(labels)


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
