"""Fashion scenes: the generated COCO detection set (deterministic, tight boxes, many small).

The scenes are made from the real Fashion-MNIST; these tests skip where it is not installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freebies.data import scenes
from freebies.data.idx import FASHION_MNIST_CLASSES
from freebies.data.scenes import default_scenes_dir, ensure_scenes, make_scenes
from freebies.errors import UsageError

SMALL = {"n_train": 20, "n_val": 5, "n_test": 10}  # 35 scenes at the default 256 px: ~1 s


@pytest.fixture(scope="module")
def pools():
    """The item pools, loaded once and reused by every make_scenes call in this module."""
    try:
        loaded = scenes._load_pools()
    except UsageError as e:
        pytest.skip(f"Fashion-MNIST not available ({str(e)[:80]}...); `make data` installs it")
    patch = pytest.MonkeyPatch()
    patch.setattr(scenes, "_load_pools", lambda: loaded)
    yield loaded
    patch.undo()


@pytest.fixture(scope="module")
def made(pools, tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes") / "set", **SMALL)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        return np.asarray(png)


def coco(folder: Path, split: str) -> dict:
    return json.loads((folder / f"instances_{split}.json").read_text())


def all_boxes(folder: Path) -> list[dict]:
    return [a for s in scenes.SPLITS for a in coco(folder, s)["annotations"]]


def test_layout_categories_and_images(made: Path) -> None:
    for split, n in (("train", 20), ("val", 5), ("test", 10)):
        doc = coco(made, split)
        assert [c["id"] for c in doc["categories"]] == list(range(1, 11))
        assert [c["name"] for c in doc["categories"]] == FASHION_MNIST_CLASSES
        assert [im["file_name"] for im in doc["images"]] == [
            f"images/{split}/{i:06d}.png" for i in range(n)
        ]
        for im in doc["images"]:
            with Image.open(made / im["file_name"]) as png:
                assert png.mode == "L" and png.size == (im["width"], im["height"]) == (256, 256)
        per_image = np.bincount([a["image_id"] for a in doc["annotations"]], minlength=n + 1)
        assert per_image[0] == 0 and 1 <= per_image[1:].min() and per_image.max() <= 8
    manifest = json.loads((made / "scenes.json").read_text())
    assert manifest["version"] == scenes.VERSION and manifest["complete"] is True
    assert manifest["args"]["n_train"] == 20


def test_boxes_lie_inside_the_canvas_and_never_overlap(made: Path) -> None:
    for split in scenes.SPLITS:
        by_image: dict[int, list[list[int]]] = {}
        for a in coco(made, split)["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["area"] == w * h and a["iscrowd"] == 0
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 256 and y + h <= 256
            by_image.setdefault(a["image_id"], []).append(a["bbox"])
        for boxes in by_image.values():
            for i, (x0, y0, w0, h0) in enumerate(boxes):
                for x1, y1, w1, h1 in boxes[i + 1 :]:
                    apart_x = x0 + w0 + scenes.GAP <= x1 or x1 + w1 + scenes.GAP <= x0
                    apart_y = y0 + h0 + scenes.GAP <= y1 or y1 + h1 + scenes.GAP <= y0
                    assert apart_x or apart_y


def test_at_least_a_third_of_the_boxes_are_small(made: Path) -> None:
    area = np.array([a["area"] for a in all_boxes(made)])
    small, medium = (area < 32**2).mean(), ((area >= 32**2) & (area < 96**2)).mean()
    large = (area >= 96**2).mean()
    assert small >= 1 / 3, (small, medium, large)
    assert medium >= 0.25 and large >= 0.03, (small, medium, large)


def test_every_box_is_tight_around_its_pasted_item(made: Path, pools) -> None:
    """Redraw the written scenes: the PNG pixels and boxes match, each box's border rows and
    columns hold item pixels, no item pixel lies outside its box, and every pixel outside the
    items is the untouched background while every item pixel is brighter than it."""
    doc = coco(made, "train")
    for i in range(5):
        key = [0, 0, i]  # seed 0, split 0 (train), scene i
        scene = scenes._draw_scene(
            np.random.default_rng(key), pools["train"], 256, (1, 8), (12.0, 160.0)
        )
        assert np.array_equal(pixels(made / doc["images"][i]["file_name"]), scene.image)
        written = [a["bbox"] for a in doc["annotations"] if a["image_id"] == i + 1]
        assert written == [list(b) for b in scene.boxes]
        for k, (x, y, w, h) in enumerate(scene.boxes):
            ys, xs = np.nonzero(scene.instances == k + 1)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        background = np.rint(scenes._background(np.random.default_rng(key), 256))
        items = scene.instances > 0
        assert np.array_equal(scene.image[~items], background[~items].astype(np.uint8))
        assert (scene.image[items] > background[items]).all()


def test_test_scenes_use_only_test_items_and_val_items_are_unseen(made: Path, pools) -> None:
    labels = {
        "train": np.concatenate([pools["train"].labels, pools["val"].labels]),
        "test": pools["test"].labels,
    }
    for split in scenes.SPLITS:
        for a in coco(made, split)["annotations"]:
            source = a["source"]
            assert source["split"] == ("test" if split == "test" else "train")
            assert a["category_id"] - 1 == labels[source["split"]][source["index"]]
            if split == "train":
                assert source["index"] < scenes._VAL_FROM
            if split == "val":
                assert source["index"] >= scenes._VAL_FROM


def test_same_seed_same_bytes_and_test_scenes_do_not_depend_on_n_train(
    made: Path, pools, tmp_path: Path
) -> None:
    again = make_scenes(tmp_path / "again", **SMALL)
    for name in ("instances_train.json", "instances_val.json", "instances_test.json"):
        assert (again / name).read_bytes() == (made / name).read_bytes()
    for png in sorted((made / "images").rglob("*.png")):
        assert (again / png.relative_to(made)).read_bytes() == png.read_bytes()

    fewer = make_scenes(tmp_path / "fewer", n_train=3, n_val=5, n_test=10)
    assert coco(fewer, "test")["annotations"] == coco(made, "test")["annotations"]
    other = make_scenes(tmp_path / "other", **SMALL, seed=1)
    assert coco(other, "test")["annotations"] != coco(made, "test")["annotations"]


def test_a_second_call_returns_the_cached_set(made: Path, pools, monkeypatch) -> None:
    stamp = (made / "scenes.json").stat().st_mtime_ns
    monkeypatch.setattr(scenes, "_write_split", lambda *a: pytest.fail("regenerated"))
    assert make_scenes(made, **SMALL) == made
    assert (made / "scenes.json").stat().st_mtime_ns == stamp


def test_other_arguments_regenerate_a_scenes_folder_in_place(pools, tmp_path: Path) -> None:
    out = make_scenes(tmp_path / "set", n_train=6, n_val=2, n_test=2)
    make_scenes(out, n_train=3, n_val=2, n_test=2)
    assert len(list((out / "images" / "train").glob("*.png"))) == 3  # stale ones removed
    assert len(coco(out, "train")["images"]) == 3
    # An interrupted run (manifest not complete) is remade, not trusted.
    manifest = json.loads((out / "scenes.json").read_text())
    (out / "scenes.json").write_text(json.dumps({**manifest, "complete": False}))
    make_scenes(out, n_train=3, n_val=2, n_test=2)
    assert json.loads((out / "scenes.json").read_text())["complete"] is True


def test_a_folder_holding_anything_else_is_refused(pools, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match=r"^scenes: .*mine is not empty and holds no Fashion"):
        make_scenes(mine, n_train=2, n_val=1, n_test=1)
    out = make_scenes(tmp_path / "set", n_train=2, n_val=1, n_test=1)
    (out / "images" / "train" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match=r"also images/train/notes\.txt, which is not part"):
        make_scenes(out, n_train=3, n_val=1, n_test=1)
    assert (out / "images" / "train" / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="is a file, not a folder"):
        make_scenes(mine / "notes.txt", n_train=2, n_val=1, n_test=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": -1}, r"n_train must be a whole number >= 0, got -1"),
        ({"size": 8}, r"size must be a whole number of pixels >= 16"),
        ({"items": (3, 1)}, r"items must be \(min, max\) counts with 0 <= min <= max"),
        ({"items": 3}, r"items and item_px are \(min, max\) pairs"),
        ({"size": 128}, r"item_px must be .* size - 4 = 124, got \(12\.0, 160\.0\)"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(kwargs, message, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        make_scenes(tmp_path / "set", **kwargs)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "set").exists()  # checked before anything is written


def test_default_dir_follows_freebies_data(pools, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FREEBIES_DATA", str(tmp_path))
    assert default_scenes_dir() == tmp_path / "scenes"
    assert ensure_scenes(n_train=2, n_val=1, n_test=1) == tmp_path / "scenes"
    assert (tmp_path / "scenes" / "instances_test.json").is_file()
    monkeypatch.delenv("FREEBIES_DATA")
    assert default_scenes_dir() == Path(os.path.expanduser("~")) / ".cache" / "freebies" / "scenes"


def test_make_data_without_out_writes_where_detect_train_reads(
    pools, tmp_path: Path, monkeypatch, capsys
) -> None:
    from freebies import detect
    from freebies.cli import main
    from freebies.config import DetectConfig

    monkeypatch.setenv("FREEBIES_DATA", str(tmp_path))
    full = scenes.make_scenes  # the default set is 2,700 scenes: a small one stands in for it
    monkeypatch.setattr(scenes, "make_scenes", lambda out, **kw: full(out, **{**SMALL, **kw}))
    assert main(["detect", "make-data"]) == 0
    where = tmp_path / "scenes"
    assert capsys.readouterr().out == (
        f"Fashion scenes in {where}, where `freebies detect train` reads them (--data scenes)\n"
    )
    monkeypatch.setattr(scenes, "_write_split", lambda *a: pytest.fail("made a second copy"))
    cfg = DetectConfig()
    cfg.data.image_size = 32
    assert cfg.data.spec == "scenes" and len(detect.load_data(cfg).train) == SMALL["n_train"]


def test_make_data_with_out_prints_the_data_option_to_train_on(
    pools, tmp_path: Path, monkeypatch, capsys
) -> None:
    from freebies.cli import main
    from freebies.data.detection import load_detection

    monkeypatch.chdir(tmp_path)
    argv = ["detect", "make-data", "--out", "my scenes", "--train", "4", "--val", "2"]
    assert main([*argv, "--test", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("train on them with: freebies detect train --data 'coco:my scenes'")
    assert len(load_detection("coco:my scenes", image_size=32).train) == 4
    monkeypatch.setenv("FREEBIES_DATA", str(tmp_path / "cache"))
    assert main(["detect", "make-data", "--train", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --out DIR too, then train with --data coco:DIR" in err
    assert not (tmp_path / "cache").exists()
