"""Detection data: the COCO / VOC / YOLO readers, split rules, letterbox, cleaning and errors.

Every dataset here is written by tests/detfake.py in the real on-disk format; BCCD (real VOC
data) is read from FREEBIES_BCCD or ../shared/data/bccd when present.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from detfake import (
    Scene,
    cycled_scenes,
    make_scenes,
    save_image,
    voc_xml,
    write_coco,
    write_voc,
    write_yolo,
)
from freebies.data.detection import (
    DetSplit,
    batch_shape,
    image_stats,
    letterbox,
    letterboxed_split,
    load_detection,
    pad_shape,
    shape_groups,
    to_original,
)
from freebies.data.loader import channel_stats
from freebies.errors import UsageError

CLASSES = ["cat", "dog", "fox"]
REPO = Path(__file__).resolve().parents[1]


def scenes(n: int, prefix: str, seed: int = 0) -> list[Scene]:
    return cycled_scenes(n, prefix, len(CLASSES), seed)


def three_splits() -> dict[str, list[Scene]]:
    return {"train": scenes(5, "tr"), "val": scenes(2, "va", 1), "test": scenes(3, "te", 2)}


def check_split(split: DetSplit | None, written: list[Scene], size: int) -> None:
    """The split holds exactly the written scenes, in order, boxes on the same pixels."""
    assert split is not None and len(split) == len(written)
    assert split.images.shape == (len(written), 3, size, size)
    assert split.images.dtype == torch.uint8
    assert split.scales.dtype == torch.float64 and split.scales.shape == (len(written), 4)
    for i, s in enumerate(written):
        assert split.sizes[i].tolist() == [s.height, s.width]
        assert Path(split.files[i]).stem == s.name
        expected = torch.tensor(s.boxes, dtype=torch.float32)
        torch.testing.assert_close(split.orig_boxes[i], expected, atol=1e-4, rtol=0)
        assert split.labels[i].dtype == torch.int64
        assert split.labels[i].tolist() == s.labels.tolist()
        back = split.boxes[i].double() / split.scales[i]
        torch.testing.assert_close(back, expected.double(), atol=1e-4, rtol=0)


def one_line_error(match: str, fn: Callable[[], object]) -> str:
    with pytest.raises(UsageError, match=match) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# Readers and split rules


def test_voc_reads_imagesets_splits(tmp_path: Path):
    written = three_splits()
    write_voc(tmp_path, written, CLASSES)
    data = load_detection(f"voc:{tmp_path}", image_size=40)
    for name in ("train", "val", "test"):
        check_split(getattr(data, name), written[name], 40)
    assert data.classes == CLASSES and data.category_ids == [1, 2, 3]
    assert data.split_rule == "VOC ImageSets/Main train/val/test"
    assert data.test.image_ids == [0, 1, 2]
    assert data.notes == []


def test_voc_trainval_and_val_as_test(tmp_path: Path):
    write_voc(tmp_path, {"trainval": scenes(6, "tv"), "val": scenes(2, "va")}, CLASSES)
    data = load_detection(f"voc:{tmp_path}", image_size=32, val_split=0.34)
    # no test.txt: val.txt is the test set, and validation is carved from trainval
    assert [Path(f).stem for f in data.test.files] == ["va000", "va001"]
    assert len(data.train) == 4 and data.val is not None and len(data.val) == 2
    assert "trainval" in data.split_rule and "validation split is the test set" in data.split_rule


def test_voc_without_imagesets_carves_a_fixed_test_set(tmp_path: Path):
    write_voc(tmp_path, {"all": scenes(8, "im")}, CLASSES)
    (tmp_path / "ImageSets" / "Main" / "all.txt").unlink()
    a = load_detection(f"voc:{tmp_path}", image_size=32, test_split=0.25, split_seed=0)
    b = load_detection(f"voc:{tmp_path}", image_size=32, test_split=0.25, split_seed=7)
    assert len(a.test) == 2 and len(a.train) == 6
    assert a.test.files == b.test.files  # split_seed moves validation, never the test set
    assert "every Annotations" in a.split_rule and "test = seeded 0.25" in a.split_rule


def test_coco_dir_maps_category_ids_and_keeps_image_ids(tmp_path: Path):
    written = three_splits()
    ids = [12, 3, 7]  # fox, cat, dog in the file: training order follows the ids
    paths = write_coco(tmp_path, written, ["fox", "cat", "dog"], category_ids=ids)
    data = load_detection(f"coco:{tmp_path}", image_size=48)
    assert data.classes == ["cat", "dog", "fox"] and data.category_ids == [3, 7, 12]
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        doc = json.loads(paths[name].read_text())
        assert split.image_ids == [im["id"] for im in doc["images"]]
        mapped_back = [data.category_ids[c] for labels in split.labels for c in labels.tolist()]
        assert mapped_back == [a["category_id"] for a in doc["annotations"]]
        for s in written[name]:  # the loaded index is the rank of the written category id
            s.labels = np.array([sorted(ids).index(ids[c]) for c in s.labels])
        check_split(split, written[name], 48)
    assert data.train.image_ids[:2] == [100, 107]
    assert data.split_rule.startswith("COCO instances_train.json")


def test_coco_two_files_form_with_images_folder(tmp_path: Path):
    written = {"train": scenes(4, "tr"), "test": scenes(2, "te")}
    paths = write_coco(tmp_path, written, CLASSES, layout="images")
    data = load_detection(f"coco:{paths['train']},{paths['test']}", image_size=32, val_split=0.5)
    assert len(data.train) == 2 and data.val is not None and len(data.val) == 2
    check_split(data.test, written["test"], 32)
    assert data.split_rule.startswith("COCO files train=instances_train.json")


def test_coco_nested_file_name_and_val_as_test(tmp_path: Path):
    written = {"train": scenes(3, "tr"), "val": scenes(2, "va")}
    write_coco(tmp_path, written, CLASSES, layout="nested", ext=".jpg")
    data = load_detection(f"coco:{tmp_path}", image_size=32)
    assert data.val is None and [Path(f).stem for f in data.test.files] == ["va000", "va001"]
    assert "pics/val" in data.test.files[0]


def test_coco_crowd_regions_are_left_out_of_training_kept_for_evaluation_and_counted(
    tmp_path: Path,
):
    paths = write_coco(tmp_path, {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    doc = json.loads(paths["train"].read_text())
    doc["annotations"][0]["iscrowd"] = 1
    paths["train"].write_text(json.dumps(doc))
    data = load_detection(f"coco:{tmp_path}", image_size=32)
    assert data.notes == [
        "left 1 crowd (iscrowd) regions out of training (evaluation ignores them)"
    ]
    assert sum(len(b) for b in data.train.boxes) == len(doc["annotations"]) - 1
    assert sum(len(t.boxes) for t in data.train.truth) == len(doc["annotations"])
    assert data.train.truth[0].iscrowd.tolist()[0] is True


@pytest.mark.parametrize("area", ["12", -1.0, None])
def test_coco_area_must_be_a_number_or_absent(tmp_path: Path, area):
    paths = write_coco(tmp_path, {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    doc = json.loads(paths["train"].read_text())
    doc["annotations"][0]["area"] = area
    if area is None:
        del doc["annotations"][0]["area"]  # absent: the box's w x h, as COCO does
    paths["train"].write_text(json.dumps(doc))
    if area is None:
        data = load_detection(f"coco:{tmp_path}", image_size=32)
        _, _, w, h = doc["annotations"][0]["bbox"]
        assert data.train.truth[0].areas.tolist()[0] == w * h
    else:
        one_line_error(
            r"annotations\[0\] has 'area'.*a number >= 0",
            lambda: load_detection(f"coco:{tmp_path}", image_size=32),
        )


@pytest.mark.parametrize("names", ["list", "dict"])
def test_yolo_ultralytics_layout_with_yaml(tmp_path: Path, names: str):
    written = three_splits()
    write_yolo(tmp_path, written, CLASSES, layout="ultralytics", names=names)
    spec = f"yolo:{tmp_path}" if names == "list" else f"yolo:{tmp_path / 'data.yaml'}"
    data = load_detection(spec, image_size=40)
    for name in ("train", "val", "test"):
        check_split(getattr(data, name), written[name], 40)
    assert data.classes == CLASSES and data.category_ids == [1, 2, 3]
    assert data.split_rule == "YOLO data.yaml train/val/test"


def test_yolo_darknet_subfolders_and_names_file(tmp_path: Path):
    written = {"train": scenes(4, "tr"), "test": scenes(2, "te")}
    write_yolo(tmp_path, written, CLASSES, layout="darknet", names="file")
    data = load_detection(f"yolo:{tmp_path}", image_size=32)
    check_split(data.train, written["train"], 32)
    check_split(data.test, written["test"], 32)
    assert data.classes == CLASSES and data.split_rule == "YOLO subfolders train/test"


def test_yolo_yaml_image_list_entry(tmp_path: Path):
    written = {"train": scenes(3, "tr"), "test": scenes(2, "te")}
    write_yolo(tmp_path, written, CLASSES)
    listed = "".join(f"./images/train/{s.name}.png\n" for s in written["train"][::-1])
    (tmp_path / "train.txt").write_text(listed)
    (tmp_path / "data.yaml").write_text(f"names: {CLASSES}\ntrain: train.txt\ntest: images/test\n")
    data = load_detection(f"yolo:{tmp_path}", image_size=32)
    check_split(data.train, written["train"][::-1], 32)


def test_yolo_flat_folder_gets_seeded_splits(tmp_path: Path):
    written = scenes(10, "im")
    write_yolo(tmp_path, {"all": written}, CLASSES, layout="flat", names="file")
    kw = dict(image_size=32, test_split=0.3, val_split=0.25)
    a = load_detection(f"yolo:{tmp_path}", split_seed=0, **kw)
    b = load_detection(f"yolo:{tmp_path}", split_seed=0, **kw)
    c = load_detection(f"yolo:{tmp_path}", split_seed=3, **kw)
    assert (len(a.train), len(a.val), len(a.test)) == (5, 2, 3)
    assert a.train.files == b.train.files and a.val.files == b.val.files
    assert a.test.files == c.test.files and a.val.files != c.val.files
    everything = sorted(a.train.files + a.val.files + a.test.files)
    assert everything == sorted(str(tmp_path / "images" / f"{s.name}.png") for s in written)
    assert a.train.files == sorted(a.train.files)  # carving keeps the original order
    assert a.split_rule.startswith("YOLO flat folder") and "split_seed 0" in a.split_rule


def test_yolo_image_without_label_file_is_a_negative(tmp_path: Path):
    write_yolo(tmp_path, {"train": scenes(3, "tr"), "test": scenes(1, "te")}, CLASSES)
    (tmp_path / "labels" / "train" / "tr001.txt").unlink()
    data = load_detection(f"yolo:{tmp_path}", image_size=32)
    assert data.train.boxes[1].shape == (0, 4) and data.train.labels[1].shape == (0,)
    assert data.train.orig_boxes[1].shape == (0, 4)
    assert data.notes == ["1 images have no label file (kept as negatives)"]


def test_val_split_carves_seeded_disjoint_validation(tmp_path: Path):
    write_voc(tmp_path, {"train": scenes(10, "tr"), "test": scenes(2, "te")}, CLASSES)
    a = load_detection(f"voc:{tmp_path}", image_size=32, val_split=0.3, split_seed=1)
    b = load_detection(f"voc:{tmp_path}", image_size=32, val_split=0.3, split_seed=1)
    c = load_detection(f"voc:{tmp_path}", image_size=32, val_split=0.3, split_seed=2)
    assert a.val is not None and len(a.val) == 3 and len(a.train) == 7
    assert a.val.files == b.val.files and a.val.files != c.val.files
    assert not set(a.val.files) & set(a.train.files)
    assert a.val.image_ids == [0, 1, 2]
    assert a.fingerprint == b.fingerprint != c.fingerprint
    no_val = load_detection(f"voc:{tmp_path}", image_size=32)
    assert no_val.val is None and len(no_val.train) == 10


def test_limits_and_subset(tmp_path: Path):
    written = three_splits()
    write_voc(tmp_path, written, CLASSES)
    data = load_detection(f"voc:{tmp_path}", image_size=32, limit_train=2, limit_test=1)
    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 1)
    full = load_detection(f"voc:{tmp_path}", image_size=32)
    sub = full.train.subset([3, 0])
    assert [Path(f).stem for f in sub.files] == ["tr003", "tr000"] and sub.image_ids == [3, 0]
    assert torch.equal(sub.images[0], full.train.images[3])
    assert torch.equal(sub.boxes[1], full.train.boxes[0]) and sub.scales.shape == (2, 4)


# --------------------------------------------------------------------------------------------
# Letterbox


@pytest.mark.parametrize(
    "h, w, size", [(97, 61, 64), (61, 97, 64), (48, 64, 416), (100, 100, 50), (5, 300, 64)]
)
def test_letterbox_rule_and_exact_mapping_back(h: int, w: int, size: int):
    image = torch.randint(1, 256, (3, h, w), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, w, h], [w * 0.31, h * 0.17, w * 0.77, h * 0.93]])
    canvas, out, scale = letterbox(image, boxes, size)
    s = size / max(h, w)
    new_h, new_w = max(1, math.floor(h * s + 0.5)), max(1, math.floor(w * s + 0.5))
    assert max(new_h, new_w) == size
    assert canvas.shape == (3, size, size) and canvas.dtype == torch.uint8
    assert canvas[:, :new_h, :new_w].min() > 0  # the image fills the top-left ...
    assert canvas[:, new_h:].sum() == 0 and canvas[:, :, new_w:].sum() == 0  # ... zeros after
    assert scale.tolist() == [new_w / w, new_h / h, new_w / w, new_h / h]
    assert out.dtype == boxes.dtype
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0, new_w, new_h]))  # the whole image
    torch.testing.assert_close(to_original(out, scale), boxes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("h, w", [(97, 61), (61, 97)])
def test_letterboxed_boxes_cover_the_same_pixels(h: int, w: int):
    x1, y1, x2, y2 = 10, 20, 50, 55  # inside both orientations
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    image[:, y1:y2, x1:x2] = 255
    canvas, out, _ = letterbox(image, torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64), 64)
    a, b, c, d = out[0].tolist()
    ys, xs = torch.nonzero(canvas[0] > 127, as_tuple=True)
    # the bright block spans the mapped box, to the pixel (antialiasing blurs only its edge)
    assert abs(xs.min().item() - a) <= 1 and abs(xs.max().item() + 1 - c) <= 1
    assert abs(ys.min().item() - b) <= 1 and abs(ys.max().item() + 1 - d) <= 1
    mass = canvas[0].double().sum().item() / 255
    assert mass == pytest.approx((c - a) * (d - b), rel=0.03)


def test_to_original_clips_predictions_to_the_image():
    scale = torch.tensor([0.5, 0.25, 0.5, 0.25], dtype=torch.float64)
    boxes = torch.tensor([[-2.0, 1.0, 60.0, 30.0]])
    back = to_original(boxes, scale, (100, 100))
    assert back.tolist() == [[0.0, 4.0, 100.0, 100.0]]


def test_letterboxed_split_of_a_loose_image():
    split = letterboxed_split(torch.zeros((3, 30, 60), dtype=torch.uint8), 32, "a.png")
    assert len(split) == 1 and split.images.shape == (1, 3, 32, 32)
    assert split.sizes.tolist() == [[30, 60]] and split.boxes[0].shape == (0, 4)


@pytest.mark.parametrize(
    "h, w, size, shape",
    [(480, 640, 416, (320, 416)), (640, 480, 416, (416, 320)), (450, 600, 300, (256, 300)),
     (100, 100, 64, (64, 64)), (5, 300, 64, (32, 64))],
)  # fmt: skip
def test_rect_letterbox_keeps_the_aspect_ratio_padded_to_32(h, w, size, shape):
    image = torch.randint(1, 256, (3, h, w), dtype=torch.uint8)
    boxes = torch.tensor([[w * 0.31, h * 0.17, w * 0.77, h * 0.93]])
    square, square_boxes, square_scale = letterbox(image, boxes, size)
    canvas, out, scale = letterbox(image, boxes, size, rect=True)
    assert canvas.shape == (3, *shape)
    assert pad_shape(canvas.shape[-2:], size, True) == shape  # its own pad shape
    # the same pixels and boxes as the square letterbox, less padding
    assert torch.equal(canvas, square[:, : shape[0], : shape[1]])
    assert torch.equal(out, square_boxes) and torch.equal(scale, square_scale)
    assert pad_shape((h, w), size, False) == (size, size)


def test_rect_splits_share_one_canvas_and_batch_by_orientation(tmp_path: Path):
    sizes = ((48, 64), (96, 40))  # landscape -> 96 x 128 at 128 px, portrait -> 128 x 53
    written = {k: make_scenes(4, prefix=k, sizes=sizes) for k in ("train", "test")}
    write_coco(tmp_path, written, CLASSES)
    data = load_detection(f"coco:{tmp_path}", image_size=128)
    squares = load_detection(f"coco:{tmp_path}", image_size=128, rect=False)
    split = data.train
    assert split.images.shape[-2:] == (128, 128)  # one canvas that covers both orientations
    assert split.shapes.tolist() == [[96, 128], [128, 64]] * 2
    assert shape_groups(split.shapes).tolist() == [0, 1, 0, 1]
    assert torch.equal(split.images, squares.train.images)  # the same pixels, at the top-left
    assert squares.train.shapes.tolist() == [[128, 128]] * 4
    assert batch_shape(split.shapes[[0, 2]]) == (96, 128)
    assert batch_shape(split.shapes) == (128, 128)
    assert split.subset([1]).shapes.tolist() == [[128, 64]]


def test_image_stats_leave_out_the_padding():
    flat = letterboxed_split(torch.full((3, 48, 80), 200, dtype=torch.uint8), 64)
    mean, std = image_stats(flat)
    assert mean.tolist() == [200.0] * 3 and std.tolist() == [0.0] * 3
    assert channel_stats(flat.images)[0][0] < 150  # the canvas's stats count the padding
    # against the resized image's own statistics
    image = torch.randint(0, 256, (3, 61, 97), dtype=torch.uint8)
    split = letterboxed_split(image, 64, rect=True)
    from torchvision.transforms.v2 import functional as F

    own = F.resize(image, [40, 64], antialias=True)
    ref_mean, ref_std = channel_stats(own[None])
    got_mean, got_std = image_stats(split)
    torch.testing.assert_close(got_mean, ref_mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_std, ref_std, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Cleaning: clip, drop, count; negatives


def test_voc_boxes_are_clipped_dropped_and_counted(tmp_path: Path):
    train = scenes(3, "tr")
    train[0].boxes = np.array([[-3.0, 2, 10, 12], [20, 30, 70, 48], [5, 5, 5, 9], [80, 1, 90, 9]])
    train[0].labels = np.array([0, 1, 2, 0])  # 64x48: crosses left, crosses right+bottom, ...
    train[1].boxes, train[1].labels = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)  # negative
    write_voc(tmp_path, {"train": train, "test": scenes(1, "te")}, CLASSES, ext=".png")
    data = load_detection(f"voc:{tmp_path}", image_size=32)
    first = tmp_path / "Annotations" / "tr000.xml"
    assert data.notes == [
        f"clipped 2 boxes to the image ({first}); dropped 2 boxes: 1 zero-area ({first}); "
        f"1 outside the image ({first})"
    ]
    assert data.train.orig_boxes[0].tolist() == [[0, 2, 10, 12], [20, 30, 64, 48]]
    assert data.train.labels[0].tolist() == [0, 1]
    assert data.train.boxes[1].shape == (0, 4) and data.train.labels[1].shape == (0,)


def test_coco_and_yolo_boxes_past_the_edge_are_clipped(tmp_path: Path):
    written = {"train": scenes(2, "tr"), "test": scenes(1, "te")}
    paths = write_coco(tmp_path / "coco", written, CLASSES)
    doc = json.loads(paths["train"].read_text())
    doc["annotations"][0]["bbox"] = [60.0, 40.0, 10.0, 10.0]  # the image is 64x48
    paths["train"].write_text(json.dumps(doc))
    data = load_detection(f"coco:{tmp_path / 'coco'}", image_size=32)
    assert data.train.orig_boxes[0][0].tolist() == [60, 40, 64, 48]
    assert data.notes[0].startswith("clipped 1 boxes to the image")

    write_yolo(tmp_path / "yolo", written, CLASSES)
    (tmp_path / "yolo" / "labels" / "train" / "tr000.txt").write_text("1 0.5 0.5 1.005 0.5\n")
    data = load_detection(f"yolo:{tmp_path / 'yolo'}", image_size=32)
    assert data.train.orig_boxes[0].tolist() == [[0, 12, 64, 36]]
    assert data.notes[0].startswith("clipped 1 boxes to the image")


# --------------------------------------------------------------------------------------------
# Hard errors: one line naming the file and the fix


def test_unknown_spec_and_bad_options():
    one_line_error(
        r"unknown detection dataset 'vco:x' \(did you mean 'voc'\?\)",
        lambda: load_detection("vco:x"),
    )
    one_line_error("valid forms: coco:DIR", lambda: load_detection("/some/folder"))
    one_line_error("has nothing after ':'", lambda: load_detection("coco:"))
    one_line_error("data.image_size must be", lambda: load_detection("voc:x", image_size=0))
    one_line_error("data.val_split must be", lambda: load_detection("voc:x", val_split=1.0))


def test_missing_and_unreadable_images(tmp_path: Path):
    paths = write_coco(tmp_path / "c", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    (tmp_path / "c" / "tr001.png").unlink()
    msg = one_line_error(
        r"image 'tr001.png' \(id 107\) is missing", lambda: load_detection(f"coco:{tmp_path / 'c'}")
    )
    assert str(paths["train"]) in msg

    write_voc(tmp_path / "v", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    (tmp_path / "v" / "JPEGImages" / "tr001.jpg").write_bytes(b"not a jpeg at all")
    one_line_error(
        r"cannot read image .*tr001.jpg", lambda: load_detection(f"voc:{tmp_path / 'v'}")
    )


def test_malformed_annotation_files(tmp_path: Path):
    paths = write_coco(tmp_path / "c", {"train": scenes(2, "tr")}, CLASSES)
    paths["train"].write_text('{"images": [')
    one_line_error(
        r"instances_train.json is not valid JSON", lambda: load_detection(f"coco:{tmp_path / 'c'}")
    )
    paths["train"].write_text('{"images": [{"id": 1}], "annotations": [], "categories": []}')
    one_line_error(
        r"images\[0\] needs 'file_name'", lambda: load_detection(f"coco:{tmp_path / 'c'}")
    )

    write_voc(tmp_path / "v", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    xml = tmp_path / "v" / "Annotations" / "tr001.xml"
    xml.write_text("<annotation><object>")
    one_line_error(r"tr001.xml is not valid XML", lambda: load_detection(f"voc:{tmp_path / 'v'}"))
    xml.write_text(voc_xml(scenes(2, "tr")[1], CLASSES, "tr001.jpg").replace("<xmin>", "<xmin>x"))
    one_line_error(
        r"tr001.xml: <object> 1 needs a <name> and a <bndbox>",
        lambda: load_detection(f"voc:{tmp_path / 'v'}"),
    )

    write_yolo(tmp_path / "y", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    txt = tmp_path / "y" / "labels" / "train" / "tr000.txt"
    for bad in ("0 0.5 0.5 0.2\n", "0 0.5 0.5 0.2 abc\n", "0.5 0.5 0.5 0.2 0.2\n"):
        txt.write_text(bad)
        one_line_error(
            r"tr000.txt:1: expected 'class cx cy w h'",
            lambda: load_detection(f"yolo:{tmp_path / 'y'}"),
        )
    (tmp_path / "y" / "data.yaml").write_text("names: [a, b\n")
    one_line_error(r"data.yaml is not valid YAML", lambda: load_detection(f"yolo:{tmp_path / 'y'}"))


def test_unknown_category_ids_and_class_names(tmp_path: Path):
    paths = write_coco(tmp_path / "c", {"train": scenes(2, "tr")}, CLASSES, category_ids=[3, 7, 12])
    doc = json.loads(paths["train"].read_text())
    doc["annotations"][1]["category_id"] = 99
    paths["train"].write_text(json.dumps(doc))
    one_line_error(
        r"annotations\[1\] has unknown category_id 99 \(.* are 3, 7, 12\)",
        lambda: load_detection(f"coco:{tmp_path / 'c'}"),
    )

    test = scenes(1, "te")
    write_voc(tmp_path / "v", {"train": scenes(3, "tr"), "test": test}, CLASSES)
    xml = tmp_path / "v" / "Annotations" / "te000.xml"
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>dgo</name>"))
    one_line_error(
        r"te000.xml: class 'dgo' is in no training annotation \(did you mean 'dog'\?\)",
        lambda: load_detection(f"voc:{tmp_path / 'v'}"),
    )

    write_yolo(tmp_path / "y", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    (tmp_path / "y" / "labels" / "test" / "te000.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    one_line_error(
        r"te000.txt:1: class 3 is unknown: .*data.yaml names 3 classes \(0..2\)",
        lambda: load_detection(f"yolo:{tmp_path / 'y'}"),
    )


def test_yolo_values_far_outside_unit_range(tmp_path: Path):
    write_yolo(tmp_path, {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    txt = tmp_path / "labels" / "train" / "tr001.txt"
    txt.write_text("0 0.5 0.5 0.2 0.2\n1 32 24 10 10\n")
    one_line_error(
        r"tr001.txt:2: value 32 is far outside \[0, 1\]", lambda: load_detection(f"yolo:{tmp_path}")
    )
    txt.write_text("0 0.5 -0.02 0.2 0.2\n")
    one_line_error(r"value -0.02 is far outside", lambda: load_detection(f"yolo:{tmp_path}"))


def test_split_files_naming_missing_images(tmp_path: Path):
    write_voc(tmp_path / "v", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    listing = tmp_path / "v" / "ImageSets" / "Main" / "test.txt"
    listing.write_text("te000\nghost\n")
    one_line_error(
        r"test.txt names 'ghost' but .*ghost.xml does not exist",
        lambda: load_detection(f"voc:{tmp_path / 'v'}"),
    )
    ghost = Scene("ghost", 48, 64, np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    (tmp_path / "v" / "Annotations" / "ghost.xml").write_text(voc_xml(ghost, CLASSES, "ghost.jpg"))
    one_line_error(
        r"test.txt names 'ghost' but its image .*ghost.jpg does not exist",
        lambda: load_detection(f"voc:{tmp_path / 'v'}"),
    )

    write_yolo(tmp_path / "y", {"train": scenes(2, "tr"), "test": scenes(1, "te")}, CLASSES)
    (tmp_path / "y" / "train.txt").write_text("images/train/tr000.png\nimages/train/nope.png\n")
    (tmp_path / "y" / "data.yaml").write_text("names: [a, b, c]\ntrain: train.txt\n")
    one_line_error(
        r"train.txt:2 names image 'images/train/nope.png', which does not exist",
        lambda: load_detection(f"yolo:{tmp_path / 'y'}"),
    )


def test_no_training_images_and_declared_size_mismatch(tmp_path: Path):
    write_voc(tmp_path / "v", {"train": [], "test": scenes(1, "te")}, CLASSES)
    one_line_error(
        r"no training images \(VOC ImageSets/Main train/test\)",
        lambda: load_detection(f"voc:{tmp_path / 'v'}"),
    )

    paths = write_coco(tmp_path / "c", {"train": scenes(2, "tr")}, CLASSES)
    doc = json.loads(paths["train"].read_text())
    doc["images"][0]["width"] = 99
    paths["train"].write_text(json.dumps(doc))
    one_line_error(
        r"instances_train.json says tr000.png is 99x48 \(WxH\) but the image is 64x48",
        lambda: load_detection(f"coco:{tmp_path / 'c'}"),
    )


def test_missing_dataset_folders(tmp_path: Path):
    one_line_error(r"has no Annotations/ folder", lambda: load_detection(f"voc:{tmp_path}"))
    one_line_error(r"has no instances_train\*.json", lambda: load_detection(f"coco:{tmp_path}"))
    save_image(tmp_path / "images" / "a.png", make_scenes(1)[0])
    one_line_error(r"has no class-name files", lambda: load_detection(f"yolo:{tmp_path}"))


# --------------------------------------------------------------------------------------------
# BCCD (real data)


def bccd_dir() -> Path | None:
    env = os.environ.get("FREEBIES_BCCD")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "bccd"
    return path if path.is_dir() else None


@pytest.mark.skipif(
    bccd_dir() is None, reason="BCCD not found: set FREEBIES_BCCD or put it at ../shared/data/bccd"
)
def test_bccd_counts():
    start = time.perf_counter()
    data = load_detection(f"voc:{bccd_dir()}", image_size=320)
    seconds = time.perf_counter() - start
    print(f"BCCD loaded in {seconds:.2f} s")
    splits = (data.train, data.val, data.test)
    assert [len(s) for s in splits] == [205, 87, 72]
    assert data.classes == ["Platelets", "RBC", "WBC"]
    kept = sum(len(b) for s in splits for b in s.boxes)
    assert kept == 4886  # 4,888 in the files, less the two zero-area boxes
    assert len(data.notes) == 1 and data.notes[0].startswith("dropped 2 boxes: 2 zero-area")
    assert all(s.sizes.tolist() == [[480, 640]] * len(s) for s in splits)
    assert torch.equal(data.train.scales[0], torch.tensor([0.5] * 4, dtype=torch.float64))


def test_the_cleaning_note_says_why_each_box_was_dropped_and_names_the_files(tmp_path: Path):
    """An inverted box and one outside the image are not "zero-area"; every file is named,
    the first three of each kind, then how many more."""
    train = scenes(6, "tr")
    for s in train:  # 64x48 or 36x60 images
        s.boxes, s.labels = np.array([[10.0, 10, 5, 20], [2, 2, 8, 8]]), np.array([0, 1])
    train[0].boxes = np.array([[100.0, 1, 120, 9], [4, 4, 4, 9], [2, 2, 8, 8]])
    train[0].labels = np.array([0, 1, 2])
    write_voc(tmp_path, {"train": train, "test": scenes(1, "te")}, CLASSES, ext=".png")
    note = load_detection(f"voc:{tmp_path}", image_size=32).notes[0]
    ann = tmp_path / "Annotations"
    assert note.startswith(f"dropped 7 boxes: 1 zero-area ({ann / 'tr000.xml'}); ")
    named = ", ".join(str(ann / f"tr00{i}.xml") for i in (1, 2, 3))
    assert f"5 inverted ({named} and 2 more files)" in note
    assert note.endswith(f"1 outside the image ({ann / 'tr000.xml'})")
