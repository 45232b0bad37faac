"""COCO AP is the official number: on COCO files with crowd regions and segmentation areas,
`freebies detect eval`'s path (load -> predict -> evaluate_split) gives pycocotools' figures on
the original annotation file, and crowd regions never reach training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detfake import Scene, pycocotools_eval, write_coco
from freebies.data.detection import DetSplit, load_detection
from freebies.detect import evaluate_split, predict
from freebies.detection.coco import KEYS

CLASSES = ["cat", "dog", "fox"]
IDS = [3, 7, 12]  # the file's own category ids


def crowded_scenes(n: int, prefix: str, seed: int) -> list[Scene]:
    """Scenes of 2-7 objects from 4 to 120 px (quarter-pixel corners), a third of them
    crowd regions; areas like a segmentation's (0.3-1 of the box), some not written."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = [(160, 200), (240, 180), (128, 128)][i % 3]
        k = int(rng.integers(2, 8))
        side = np.exp(rng.uniform(np.log(4), np.log(120), size=(k, 2)))
        side = np.minimum(side, [w - 1, h - 1])
        x1 = np.floor(rng.uniform(0, w - side[:, 0]) * 4) / 4
        y1 = np.floor(rng.uniform(0, h - side[:, 1]) * 4) / 4
        x2, y2 = np.floor((x1 + side[:, 0]) * 4) / 4, np.floor((y1 + side[:, 1]) * 4) / 4
        boxes = np.stack([x1, y1, x2, y2], 1)
        areas = (x2 - x1) * (y2 - y1) * rng.uniform(0.3, 1.0, size=k)
        areas[rng.random(k) < 0.2] = np.nan
        labels = rng.integers(0, len(CLASSES), size=k)
        crowd = rng.random(k) < 0.3
        out.append(Scene(f"{prefix}{i:03d}", h, w, boxes, labels, crowd, areas))
    return out


def noisy_predictions(split: DetSplit, seed: int) -> list[dict[str, torch.Tensor]]:
    """Per image, in its own pixels: near hits, loose hits, wrong classes and misses of every
    ground-truth box, several detections on each crowd region, and false positives."""
    g = torch.Generator().manual_seed(seed)
    preds = []
    for t, (h, w) in zip(split.truth, split.sizes.tolist(), strict=True):
        boxes, labels = [], []
        for box, c, crowd in zip(t.boxes.double(), t.labels, t.iscrowd, strict=True):
            wh = (box[2:] - box[:2]).repeat(2)
            for _ in range(3 if crowd else 1):
                kind = int(torch.randint(0, 5, (1,), generator=g))
                if kind == 4 and not crowd:
                    continue  # missed
                jitter = (torch.rand(4, generator=g, dtype=torch.float64) - 0.5) * wh
                boxes.append(box + jitter * [0.1, 0.3, 0.5, 0.3][kind % 4] * (0.3 if crowd else 1))
                labels.append(int(c) if kind != 2 else (int(c) + 1) % len(CLASSES))
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            xy = torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([w, h]) * 0.8
            side = 4 + 60 * torch.rand(2, generator=g, dtype=torch.float64)
            boxes.append(torch.cat([xy, xy + side]))
            labels.append(int(torch.randint(0, len(CLASSES), (1,), generator=g)))
        n = len(boxes)
        preds.append(
            {
                "boxes": torch.stack(boxes).float() if n else torch.zeros(0, 4),
                "scores": torch.rand(n, generator=g),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return preds


class Replay(nn.Module):
    """A detector that returns given detections (each image's original pixels) on the
    letterboxed inputs, in split order, as predict() runs it."""

    def __init__(self, preds: list[dict[str, torch.Tensor]], split: DetSplit) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.queue = [
            {**p, "boxes": (p["boxes"].double() * split.scales[i]).float()}
            for i, p in enumerate(preds)
        ]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out, self.queue = self.queue[: len(images)], self.queue[len(images) :]
        return out


def pycocotools_on_file(path: Path, split: DetSplit, preds: list[dict]) -> dict:
    """pycocotools' COCOeval on the annotation file itself (a missing `area` filled with the
    box's w * h, which pycocotools needs and COCO's convention gives)."""
    doc = json.loads(path.read_text())
    for ann in doc["annotations"]:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    results = [
        {"image_id": split.image_ids[p["index"]], "category_id": IDS[int(c)], "score": float(s)}
        | {"bbox": [x1, y1, x2 - x1, y2 - y1]}
        for p in preds
        for (x1, y1, x2, y2), s, c in zip(
            p["boxes"].double().tolist(), p["scores"], p["labels"], strict=True
        )
    ]
    return pycocotools_eval(doc, results, CLASSES, IDS)


def freebies_and_reference(root: Path, test: list[Scene], seed: int = 0) -> tuple[dict, dict]:
    train = crowded_scenes(4, "tr", 99)
    paths = write_coco(root, {"train": train, "test": test}, CLASSES, category_ids=IDS)
    data = load_detection(f"coco:{root}", image_size=96)
    preds = noisy_predictions(data.test, seed)
    model = Replay(preds, data.test)
    shown = predict(Replay(preds, data.test), data.test, batch_size=4)  # what eval scores
    ours = evaluate_split(model, data.test, data.classes, data.category_ids, batch_size=4)
    return ours, pycocotools_on_file(paths["test"], data.test, shown)


def assert_same(ours: dict, ref: dict, tol: float = 1e-12) -> None:
    for key in KEYS:
        if ref[key] is None:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(ref[key], abs=tol, rel=0), key
    for name, value in ref["ap_per_class"].items():
        got = ours["ap_per_class"][name]
        assert (got is None) if value is None else got == pytest.approx(value, abs=tol, rel=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_freebies_map_is_pycocotools_on_files_with_crowds_and_segmentation_areas(tmp_path, seed):
    test = crowded_scenes(24, "te", seed)
    assert sum(int(s.crowd.sum()) for s in test) > 10  # really crowded
    ours, ref = freebies_and_reference(tmp_path, test, seed)
    assert 5 < ref["map"] < 80 and ref["map_small"] is not None
    assert_same(ours, ref)
    # the areas matter here: evaluated as w * h, AP by size is another number
    from freebies.detection.coco import coco_metrics

    data = load_detection(f"coco:{tmp_path}", image_size=96)
    preds = predict(Replay(noisy_predictions(data.test, seed), data.test), data.test, batch_size=4)
    t = data.test.truth
    boxes, labels = [x.boxes for x in t], [x.labels for x in t]
    plain = coco_metrics(preds, boxes, labels, data.test.sizes, CLASSES, IDS)
    assert plain["map_small"] != pytest.approx(ref["map_small"], abs=1e-6)


def test_a_detection_on_a_crowd_region_is_ignored_not_a_false_positive(tmp_path):
    """The issue's 2-image case: one object found exactly, one detection on a crowd region;
    pycocotools scores 1.00 (it was 0.50 when crowd regions were dropped at load)."""
    test = [
        Scene("a", 64, 64, np.array([[8.0, 8.0, 40.0, 40.0]]), np.array([0])),
        Scene("b", 64, 64, np.array([[4.0, 4.0, 60.0, 60.0]]), np.array([0]), np.array([True])),
    ]
    train = crowded_scenes(2, "tr", 5)
    paths = write_coco(tmp_path, {"train": train, "test": test}, CLASSES, category_ids=IDS)
    data = load_detection(f"coco:{tmp_path}", image_size=64)
    preds = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "scores": torch.tensor([0.9])},
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "scores": torch.tensor([0.95])},
    ]
    preds = [{**p, "labels": torch.tensor([0])} for p in preds]
    shown = predict(Replay(preds, data.test), data.test, batch_size=2)
    ours = evaluate_split(Replay(preds, data.test), data.test, CLASSES, IDS, batch_size=2)
    ref = pycocotools_on_file(paths["test"], data.test, shown)
    assert ref["map"] == pytest.approx(100.0) and ours["map"] == pytest.approx(100.0)
    assert_same(ours, ref)


def test_crowd_regions_stay_out_of_training_and_keep_their_areas(tmp_path):
    train, test = crowded_scenes(6, "tr", 3), crowded_scenes(3, "te", 4)
    write_coco(tmp_path, {"train": train, "test": test}, CLASSES)
    data = load_detection(f"coco:{tmp_path}", image_size=96)
    crowds = sum(int(s.crowd.sum()) for s in train + test)
    note = f"left {crowds} crowd (iscrowd) regions out of training (evaluation ignores them)"
    assert data.notes == [note]
    for s, boxes, labels, truth, scale in zip(
        train, data.train.boxes, data.train.labels, data.train.truth, data.train.scales, strict=True
    ):
        plain = ~s.crowd
        assert labels.tolist() == s.labels[plain].tolist()
        back = boxes.double() / scale
        torch.testing.assert_close(back, torch.tensor(s.boxes[plain]), atol=1e-4, rtol=0)
        assert truth.iscrowd.tolist() == s.crowd.tolist()
        wh = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
        assert truth.areas.tolist() == np.where(np.isnan(s.areas), wh, s.areas).tolist()
    for truth, orig in zip(data.train.truth, data.train.orig_boxes, strict=True):
        assert orig.tolist() == truth.boxes[~truth.iscrowd].tolist()
