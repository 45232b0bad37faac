"""Pascal VOC detection files -> :class:`~freebies.data.annotations.Read`.

``voc:DIR``: ``Annotations/*.xml`` (``<bndbox>`` corners in pixels), ``JPEGImages/``, and
``ImageSets/Main/{train,val,test}.txt`` (``trainval.txt`` when there is no ``train.txt``).
Class names are the sorted names of the training annotations. XML is parsed by the standard
``xml.etree.ElementTree`` (expat fetches no external entities).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from freebies.data.annotations import Item, Read, box_rows, label_rows
from freebies.data.io import one_line
from freebies.errors import UsageError, nearest

__all__ = ["read_voc"]


def read_voc(arg: str) -> Read:
    """The splits of ``voc:ARG``."""
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
        return Read({"train": []}, [], [], rule)  # load_detection says what is missing
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
            item.labels = label_rows([index[n] for n in names])
        splits[split] = [item for item, _ in records]
    return Read(splits, classes, list(range(1, len(classes) + 1)), rule)


def _voc_ids(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read split file {path} ({one_line(e)}); fix it") from None
    # Per-class files ("id  1") carry a second column; the id is the first word.
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _voc_xml(xml_path: Path, img_dir: Path, listed: Path, image_id: str) -> tuple[Item, list[str]]:
    """One VOC annotation: its item (labels still empty) and the class name of each box."""
    if not xml_path.is_file():
        raise UsageError(
            f"{listed} names {image_id!r} but {xml_path} does not exist; add it or drop the line"
        )
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise UsageError(
            f"{xml_path} is not valid XML ({one_line(e)}); fix or re-export it"
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
    return Item(image, box_rows(boxes), label_rows([]), xml_path, size=_voc_size(root)), names


def _voc_size(root: ET.Element) -> tuple[int, int] | None:
    try:
        h, w = int(root.findtext("size/height") or 0), int(root.findtext("size/width") or 0)
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None  # some tools write 0: then trust the image
