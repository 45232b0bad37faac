"""Detection on the engine: hflip_boxes, COCO metrics through the maintained evaluator, the
FCOS head's loss normalisation, build_detector, and `freebies detect train | eval | predict |
make-data` end to end (run folder, one-line errors, Ctrl-C then a bit-exact resume, BCCD).

Datasets are written by tests/detfake.py in the real COCO format; BCCD (real VOC data) is read
from FREEBIES_BCCD or ../shared/data/bccd when present. Every training run is tiny (128 px,
16 images, 1 thread) so the file stays cheap on 2 shared cores.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from torch import nn
from torchvision.models.detection.fcos import FCOSHead

from detfake import Scene, cycled_scenes, pycocotools_eval, save_image, write_coco
from freebies import checkpoint, config, detect, engine
from freebies.checkpoint import Checkpoint
from freebies.cli import main
from freebies.data.detection import letterboxed_split, load_detection
from freebies.data.io import decode
from freebies.detection import model as det_model
from freebies.detection.coco import coco_metrics
from freebies.detection.model import BACKBONES, Head, build_detector
from freebies.detection.transforms import hflip_boxes
from helpers import run_cli, usage_error

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]
CAT_IDS = [3, 7, 12]  # the file's own ids, not 1..K: they must survive the round trip
SUMMARY_KEYS = {"map", "map_50", "map_75", "map_small", "map_medium", "map_large", "ap_per_class"}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def scenes(n: int, prefix: str, seed: int = 0) -> list[Scene]:
    return cycled_scenes(n, prefix, len(CLASSES), seed)


def coco_set(root: Path) -> Path:
    """A tiny COCO set (16 train, 4 val, 8 test, non-square images) with ids 3, 7, 12."""
    splits = {"train": scenes(16, "tr"), "val": scenes(4, "va", 1), "test": scenes(8, "te", 2)}
    write_coco(root, splits, CLASSES, category_ids=CAT_IDS)
    return root


def tiny(data: str, out: Path, *extra: str, batch: int = 8) -> list[str]:
    """`freebies detect train` for a few steps: 128 px, narrow head, 2 epochs."""
    return [
        "detect",
        "train",
        "--data",
        data,
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        str(batch),
        "--limit-train",
        "16",
        "--limit-test",
        "8",
        "--set",
        "data.image_size=128",
        "--set",
        "sched.warmup_epochs=0.5",
        "--set",
        "det.fpn_width=64",
        "--set",
        "det.head_convs=1",
        "--set",
        "train.eval_batch_size=8",
        "--set",
        "train.threads=1",
        *extra,
    ]


def bccd_dir() -> Path | None:
    env = os.environ.get("FREEBIES_BCCD")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "bccd"
    return path if path.is_dir() else None


needs_bccd = pytest.mark.skipif(
    bccd_dir() is None, reason="BCCD not found: set FREEBIES_BCCD or put it at ../shared/data/bccd"
)


# --------------------------------------------------------------------------------------------
# hflip_boxes


def flipped_mask(x: torch.Tensor, out: torch.Tensor) -> list[bool]:
    """Which images came out mirrored (x holds random pixels, so it is never ambiguous)."""
    flips = []
    for a, b in zip(x, out, strict=True):
        mirrored, same = torch.equal(b, a.flip(-1)), torch.equal(b, a)
        assert mirrored != same
        flips.append(mirrored)
    return flips


def test_hflip_boxes_matches_the_formula_on_non_square_images():
    g = torch.Generator().manual_seed(0)
    n, h, w = 9, 7, 10  # odd batch, non-square
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    boxes = []
    for i in range(n):
        xy = torch.rand(i % 3 + 1, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = torch.rand(i % 3 + 1, 2, generator=g) * torch.tensor([w / 2, h / 2])
        boxes.append(torch.cat([xy, xy + wh], 1))
    boxes[4] = torch.zeros(0, 4)  # an image with no boxes is a valid negative
    out, out_boxes = hflip_boxes(x, boxes, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    flips = flipped_mask(x, out)
    assert any(flips) and not all(flips)
    for b, o, f in zip(boxes, out_boxes, flips, strict=True):
        assert o.shape == b.shape and o.dtype == b.dtype
        if f:
            x1, y1, x2, y2 = b.unbind(1)
            torch.testing.assert_close(o, torch.stack([w - x2, y1, w - x1, y2], 1))
        else:
            assert torch.equal(o, b)  # unflipped: the identity
    assert all(bool((o[:, 2] >= o[:, 0]).all()) for o in out_boxes)


def test_hflip_boxes_is_seeded_and_flips_half():
    x = torch.arange(4000, dtype=torch.float32).reshape(2000, 1, 1, 2)
    boxes = [torch.tensor([[0.0, 0.0, 1.0, 1.0]])] * 2000
    a, ab = hflip_boxes(x, boxes, torch.Generator().manual_seed(5))
    b, bb = hflip_boxes(x, boxes, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(ab, bb, strict=True))
    flips = sum(flipped_mask(x, a))
    assert 900 < flips < 1100  # p = 1/2; 4.5 sigma either side


def test_image_pixels_flip_with_their_boxes():
    n, h, w = 8, 20, 30
    box = torch.tensor([[3.0, 4.0, 11.0, 15.0]])
    x = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    x[:, :, 4:15, 3:11] = 255  # the rectangle's pixels, rows y1:y2, columns x1:x2
    out, out_boxes = hflip_boxes(x, [box] * n, torch.Generator().manual_seed(2))
    moved = 0
    for img, b in zip(out, out_boxes, strict=True):
        x1, y1, x2, y2 = (int(v) for v in b[0])
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert bool((img[:, inside] == 255).all()) and bool((img[:, ~inside] == 0).all())
        moved += x1 != 3
    assert 0 < moved < n  # both outcomes were checked


@pytest.mark.parametrize(
    ("x", "n_boxes", "match"),
    [
        (torch.zeros(3, 8, 8), 3, r"x must be \(N, C, H, W\).*got shape \(3, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8), 3, r"one box tensor per image.*and 3 box tensors"),
    ],
)
def test_hflip_boxes_shape_errors(x, n_boxes, match):
    with pytest.raises(ValueError, match=match):
        hflip_boxes(x, [torch.zeros(0, 4)] * n_boxes)


# --------------------------------------------------------------------------------------------
# COCO metrics (faster-coco-eval), checked against pycocotools


def gt_fixture():
    """4 images of different sizes, classes 0..2 (ids 3, 7, 12) plus class 3 (id 20) that has
    no ground truth; boxes small (< 32^2) and medium, none large."""
    boxes = [
        torch.tensor([[10.0, 10.0, 30.0, 28.0], [50.0, 60.0, 110.0, 100.0]]),
        torch.tensor([[5.0, 5.0, 20.0, 15.0]]),
        torch.tensor(
            [[100.0, 40.0, 140.0, 90.0], [0.0, 0.0, 12.0, 12.0], [60.0, 70.0, 80.0, 95.0]]
        ),
        torch.zeros(0, 4),  # a negative image
    ]
    labels = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([1, 0, 2]), torch.zeros(0)]
    labels = [lab.long() for lab in labels]
    sizes = torch.tensor([[120, 160], [40, 50], [100, 150], [64, 64]])
    return boxes, labels, sizes, [*CLASSES, "owl"], [*CAT_IDS, 20]


def test_coco_metrics_of_the_ground_truth_is_100_with_none_for_empty_bins_and_classes():
    boxes, labels, sizes, classes, ids = gt_fixture()
    preds = [
        {"boxes": b, "scores": torch.linspace(1.0, 0.5, len(b)), "labels": lab}
        for b, lab in zip(boxes, labels, strict=True)
    ]
    m = coco_metrics(preds, boxes, labels, sizes, classes, ids)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium"):
        assert m[key] == pytest.approx(100.0, abs=1e-9), key
    assert m["map_large"] is None  # no ground-truth box is large
    assert m["ap_per_class"] == {
        "cat": pytest.approx(100.0),
        "dog": pytest.approx(100.0),
        "fox": pytest.approx(100.0),
        "owl": None,  # no ground truth
    }


def test_coco_metrics_without_predictions_is_0():
    boxes, labels, sizes, classes, ids = gt_fixture()
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
    m = coco_metrics([empty] * len(boxes), boxes, labels, sizes, classes, ids)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium"):
        assert m[key] == 0.0, key
    assert m["map_large"] is None
    assert m["ap_per_class"] == {"cat": 0.0, "dog": 0.0, "fox": 0.0, "owl": None}


def half_right(boxes, labels):
    """Per GT box: exact, shifted (IoU about 0.5-0.8), wrong class or missed; plus false
    positives with high scores. Seeded."""
    g = torch.Generator().manual_seed(3)
    preds = []
    for b, lab in zip(boxes, labels, strict=True):
        pb, ps, pl = [], [], []
        for box, c in zip(b, lab.tolist(), strict=True):
            kind = int(torch.randint(0, 4, (1,), generator=g))
            wh = box[2:] - box[:2]
            if kind == 0:
                pb.append(box.clone()), pl.append(c)
            elif kind == 1:
                shift = wh * (0.05 + 0.2 * torch.rand(2, generator=g))
                pb.append(box + torch.cat([shift, shift])), pl.append(c)
            elif kind == 2:
                pb.append(box.clone()), pl.append((c + 1) % 3)
            else:
                continue
            ps.append(float(torch.rand(1, generator=g)))
        pb.append(torch.tensor([1.0, 1.0, 9.0, 9.0])), pl.append(0), ps.append(0.95)  # a FP
        preds.append(
            {"boxes": torch.stack(pb), "scores": torch.tensor(ps), "labels": torch.tensor(pl)}
        )
    return preds


def pycocotools_metrics(preds, boxes, labels, sizes, classes, ids):
    """The same numbers from pycocotools' COCOeval, the reference implementation."""
    images, anns, results = [], [], []
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        h, w = sizes[i].tolist()
        images.append({"id": i + 1, "height": h, "width": w})
        for (x1, y1, x2, y2), c in zip(b.tolist(), lab.tolist(), strict=True):
            box = [x1, y1, x2 - x1, y2 - y1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": ids[c],
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    for i, p in enumerate(preds):
        for (x1, y1, x2, y2), s, c in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
        ):
            results.append(
                {"image_id": i + 1, "category_id": ids[c], "bbox": [x1, y1, x2 - x1, y2 - y1]}
                | {"score": s}
            )
    categories = [{"id": c, "name": n} for c, n in zip(ids, classes, strict=True)]
    doc = {"images": images, "annotations": anns, "categories": categories}
    ref = pycocotools_eval(doc, results, classes, ids)
    return {k: v for k, v in ref.items() if k != "ap_per_class"}, ref["ap_per_class"]


def test_coco_metrics_agree_with_pycocotools_on_a_half_right_case():
    boxes, labels, sizes, classes, ids = gt_fixture()
    preds = half_right(boxes, labels)
    m = coco_metrics(preds, boxes, labels, sizes, classes, ids)
    ref, ref_per_class = pycocotools_metrics(preds, boxes, labels, sizes, classes, ids)
    assert 10 < m["map"] < 90  # really half right, not a degenerate case
    for key, value in ref.items():
        if value is None:
            assert m[key] is None, key
        else:
            assert m[key] == pytest.approx(value, abs=1e-6), key
    assert m["ap_per_class"].keys() == ref_per_class.keys()
    for name, value in ref_per_class.items():
        if value is None:
            assert m["ap_per_class"][name] is None, name
        else:
            assert m["ap_per_class"][name] == pytest.approx(value, abs=1e-6), name
    assert len({v for v in ref_per_class.values() if v is not None}) > 1  # classes differ


def test_coco_metrics_per_class_with_category_ids_out_of_order():
    gt = [torch.tensor([[10.0, 10.0, 50.0, 60.0], [100.0, 100.0, 200.0, 220.0]])]
    labels = [torch.tensor([0, 1])]
    preds = [{"boxes": gt[0][:1], "scores": torch.ones(1), "labels": labels[0][:1]}]
    m = coco_metrics(preds, gt, labels, torch.tensor([[240, 320]]), CLASSES, [12, 3, 7])
    assert m["ap_per_class"] == {"cat": 100.0, "dog": 0.0, "fox": None}


# --------------------------------------------------------------------------------------------
# Predictions through evaluate_split / predict_image, with a model that knows the answer


class Oracle(nn.Module):
    """Returns the given detections (letterboxed pixels), one per image, in call order."""

    def __init__(self, dets: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.dets, self.seen = dets, []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        assert not self.training
        out = []
        for im in images:
            self.seen.append(tuple(im.shape))
            out.append(self.dets[len(self.seen) - 1])
        return out


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    return coco_set(tmp_path_factory.mktemp("coco"))


def test_evaluate_split_of_a_perfect_model_is_100_and_of_an_empty_one_0(coco_dir):
    data = load_detection(f"coco:{coco_dir}", image_size=64)
    test = data.test
    assert data.category_ids == CAT_IDS
    dets = [
        {"boxes": b, "scores": torch.ones(len(b)), "labels": lab}
        for b, lab in zip(test.boxes, test.labels, strict=True)
    ]
    oracle = Oracle(dets)
    # the model's letterboxed boxes come back in the original pixels
    preds = detect.predict(oracle, test, batch_size=3)
    assert [p["index"] for p in preds] == list(range(len(test)))
    for p, orig in zip(preds, test.orig_boxes, strict=True):
        torch.testing.assert_close(p["boxes"], orig, atol=1e-4, rtol=0)
    m = detect.evaluate_split(Oracle(dets), test, data.classes, data.category_ids, batch_size=3)
    assert m["map"] == pytest.approx(100.0) and m["map_50"] == pytest.approx(100.0)
    assert m["img_per_s"] > 0
    assert oracle.seen == [(3, 64, 64)] * len(test)
    none = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}]
    m = detect.evaluate_split(
        Oracle(none * len(test)), test, data.classes, data.category_ids, batch_size=3
    )
    assert m["map"] == 0.0 and m["map_50"] == 0.0


def test_predict_image_maps_back_names_classes_and_draw_paints_them(tmp_path):
    scene = Scene("pic", 60, 36, np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    path = tmp_path / "pic.png"
    save_image(path, scene)
    info = {"image_size": 64, "classes": CLASSES, "category_ids": CAT_IDS}
    scale = letterboxed_split(torch.zeros(3, 60, 36, dtype=torch.uint8), 64).scales[0]
    want = torch.tensor([[4.0, 10.0, 30.0, 50.0], [1.0, 1.0, 5.0, 5.0]], dtype=torch.float64)
    dets = {
        "boxes": (want * scale).float(),  # letterboxed pixels
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([2, 0]),
    }
    found = detect.predict_image(Oracle([dets]), decode(path), info, 0.5)
    assert len(found) == 1  # the 0.2 box is under the threshold
    assert found[0]["class"] == "fox" and found[0]["category_id"] == 12
    assert found[0]["score"] == pytest.approx(0.9)
    assert found[0]["box_xyxy"] == pytest.approx([4.0, 10.0, 30.0, 50.0], abs=0.01)
    png = tmp_path / "out.png"
    detect.draw(decode(path), found, png)
    with Image.open(png) as im:
        assert im.size == (36, 60)  # the original image, not the letterbox
        color = (0x42, 0xD4, 0xF4)  # palette[12 % 7]
        assert im.convert("RGB").getpixel((4, 30)) == color  # on the box's left edge
        assert im.convert("RGB").getpixel((17, 30)) != color  # inside, not painted


# --------------------------------------------------------------------------------------------
# The head's loss normalisation


def capture_loss_inputs(model, images, targets):
    """The arguments the detector hands its head's compute_loss, and what it returned."""
    seen = {}
    real = model.head.compute_loss

    def spy(*args):
        seen["args"] = args
        seen["out"] = real(*args)
        return seen["out"]

    model.head.compute_loss = spy
    model.train()
    model(images, targets)
    del model.head.compute_loss
    return seen["args"], seen["out"]


def test_head_loss_equals_torchvision_with_one_process_and_rescales_by_the_global_count(
    monkeypatch,
):
    torch.manual_seed(0)
    model = build_detector(3, image_size=64, fpn_width=32, head_convs=1)
    assert isinstance(model.head, Head)
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 20.0, 26.0, 34.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()},  # a negative image
    ]
    args, ours = capture_loss_inputs(model, images, targets)
    theirs = FCOSHead.compute_loss(model.head, *args)
    assert ours.keys() == theirs.keys() == {"classification", "bbox_regression", "bbox_ctrness"}
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    # Two processes, the other with 3x this one's foreground: divide by the global mean count.
    local = sum(int((m >= 0).sum()) for m in args[3])
    assert local > 0
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(det_model, "all_sum", lambda t: t * 4)
    scaled = Head.compute_loss(model.head, *args)
    for k in ours:
        # torchvision's sum / local  ->  sum / ((local + 3 local) / 2)
        torch.testing.assert_close(scaled[k], theirs[k] * local / (4 * local / 2))


# --------------------------------------------------------------------------------------------
# build_detector


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_layer_trains_with_live_batchnorm(backbone):
    torch.manual_seed(0)
    model = build_detector(2, image_size=64, backbone=backbone, fpn_width=32, head_convs=1)
    params = list(model.parameters())
    assert params and all(p.requires_grad for p in params)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 and m.track_running_stats for m in bns)
    # each backbone's own eps, as torchvision builds it (MobileNetV3: 1e-3, ResNet: 1e-5)
    reference = getattr(torchvision.models, backbone)(weights=None)
    eps = {m.eps for m in reference.modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(eps) == 1 and {m.eps for m in model.backbone.body.modules() if m in bns} == eps
    frozen = torchvision.ops.FrozenBatchNorm2d
    assert not any(isinstance(m, frozen) for m in model.modules())
    before = [m.running_mean.clone() for m in bns]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    model.train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [target, target])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in params)  # no layer is left out of training
    assert all(not torch.equal(m.running_mean, b) for m, b in zip(bns, before, strict=True))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fpn_starts_at_stride_8(backbone):
    model = build_detector(3, image_size=128, backbone=backbone, fpn_width=32).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert [tuple(f.shape) for f in feats.values()] == [
        (1, 32, s, s) for s in (16, 8, 4, 2, 1)
    ]  # strides 8, 16, 32, 64, 128


def test_internal_transform_keeps_the_input_size_and_normalises():
    mean, std = [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]
    model = build_detector(
        3, image_size=128, fpn_width=64, head_convs=1, image_mean=mean, image_std=std
    ).eval()
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    assert model.score_thresh == 0.05 and model.detections_per_img == 100
    seen = []
    model.backbone.body.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.rand(3, 128, 128)
    with torch.no_grad():
        model([x])
    assert len(seen) == 1 and seen[0].shape == (1, 3, 128, 128)  # torchvision would use 800
    expected = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(seen[0][0], expected)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_classes": 0}, r"num_classes >= 1.*got 0, 128, 64"),
        ({"image_size": 16}, r"image_size >= 32.*got 3, 16, 64"),
        ({"backbone": "resnet19"}, r"backbone must be one of .*resnet18.*got 'resnet19'"),
    ],
)
def test_build_detector_bad_arguments(kw, match):
    args = {"num_classes": 3, "image_size": 128, **kw}
    with pytest.raises(ValueError, match=match):
        build_detector(args.pop("num_classes"), **args)


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights (torch.hub, torchvision's copy of it, a socket) fails."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_nothing_downloads(no_downloads, backbone):
    with pytest.raises(AssertionError, match="tried to download"):  # the trap works
        torchvision.models.mobilenet_v3_small(weights="DEFAULT")
    build_detector(3, image_size=64, backbone=backbone, fpn_width=32)


def test_backbone_weights_load_a_local_state_dict(tmp_path, no_downloads):
    torch.manual_seed(0)
    trunk = build_detector(3, image_size=64, fpn_width=32).backbone.body
    saved = {k: v + torch.randn_like(v.float()).to(v.dtype) for k, v in trunk.state_dict().items()}
    path = tmp_path / "trunk.pt"
    torch.save(saved, path)
    body = build_detector(3, image_size=64, fpn_width=32, backbone_weights=path).backbone.body
    loaded = body.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # a whole torchvision classifier's state dict: its `features.` trunk, its head ignored
    clf = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(clf.state_dict(), path)
    body = build_detector(3, image_size=64, fpn_width=32, backbone_weights=path).backbone.body
    features = clf.features.state_dict()
    assert all(torch.equal(body.state_dict()[k], features[k]) for k in features)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (lambda: torch.zeros(3), r"does not hold a state dict"),
        (lambda: torchvision.models.resnet18().state_dict(), r"does not fit.*no key matches"),
        (
            lambda: torchvision.models.mobilenet_v3_large().state_dict(),
            r"does not fit.*tensors of another shape",
        ),
        (
            lambda: dict(list(torchvision.models.mobilenet_v3_small().state_dict().items())[:5]),
            r"lacks \d+ of the backbone's tensors",
        ),
    ],
)
def test_backbone_weights_of_the_wrong_kind_are_refused(tmp_path, content, match):
    path = tmp_path / "w.pt"
    torch.save(content(), path)
    with pytest.raises(ValueError, match=r"backbone_weights: .*w\.pt " + match):
        build_detector(3, image_size=64, fpn_width=32, backbone_weights=path)


@pytest.mark.parametrize("width", [16, 32])
def test_narrow_fpn_at_128_px_predicts_one_image(width):
    """torchvision's GroupNorm(32) on a 1x1 P7 map with 1 channel per group would raise."""
    model = build_detector(3, image_size=128, fpn_width=width, head_convs=1).eval()
    with torch.no_grad():
        model([torch.rand(3, 128, 128)])


# --------------------------------------------------------------------------------------------
# The CLI end to end


@pytest.fixture(scope="module")
def trained(coco_dir, tmp_path_factory) -> Path:
    """One tiny detection run on the COCO set (ids 3, 7, 12, with a val split)."""
    out = tmp_path_factory.mktemp("runs") / "det"
    assert main(tiny(f"coco:{coco_dir}", out)) == 0
    return out


def test_detect_train_writes_the_run_folder(trained, coco_dir):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "last.pt"):
        assert (trained / name).is_file(), name
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    assert cfg["data"]["spec"] == f"coco:{coco_dir}" and cfg["data"]["image_size"] == 128
    assert cfg["model"]["name"] == "fcos_mobilenet_v3_small" and cfg["det"]["head_convs"] == 1
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"map", "val_map", "val_map_50"} <= rows[-1].keys()  # the last epoch is evaluated
    for r in rows:  # the loss's parts, logged per epoch, add up to the loss
        parts = [r[f"train_{p}"] for p in detect.LOSS_PARTS]
        assert all(p > 0 for p in parts) and sum(parts) == pytest.approx(r["train_loss"])
    assert (trained / "results.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert (trained / "best.pt").is_file()  # val_map decides which epoch is kept
    summary = json.loads((trained / "summary.json").read_text())
    assert SUMMARY_KEYS | {"infer_macs", "params", "val_map"} <= summary.keys()
    assert summary["map"] == rows[-1]["map"] and summary["val_map"] == rows[-1]["val_map"]
    assert summary["ap_per_class"].keys() == set(CLASSES)
    assert summary["map_large"] is None  # the fake boxes are all small
    assert summary["infer_macs"] > 0 and summary["epochs_run"] == 2
    ckpt = checkpoint.load(trained / "last.pt")
    assert ckpt.task == "detect" and ckpt.epoch == 2
    assert ckpt.data["classes"] == CLASSES and ckpt.data["category_ids"] == CAT_IDS
    assert ckpt.data["image_size"] == 128
    model = detect.load_detector(ckpt)
    assert summary["params"] == sum(p.numel() for p in model.parameters())


def test_detect_eval_prints_one_json_line(trained, capsys):
    rc, out, err = run_cli(capsys, "detect", "eval", str(trained / "last.pt"))
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert SUMMARY_KEYS | {"img_per_s"} <= result.keys()
    assert result["img_per_s"] > 0
    summary = json.loads((trained / "summary.json").read_text())
    for key in SUMMARY_KEYS:  # the same weights on the same test set
        assert result[key] == pytest.approx(summary[key]), key


def test_detect_eval_on_the_validation_split_gives_the_runs_own_val_map(
    trained, capsys, monkeypatch
):
    seen, evaluate = [], detect.evaluate_split
    monkeypatch.setattr(
        detect,
        "evaluate_split",
        lambda m, split, *a, **k: seen.append(split) or evaluate(m, split, *a, **k),
    )
    rc, out, err = run_cli(capsys, "detect", "eval", str(trained / "last.pt"), "--split", "val")
    assert rc == 0, err
    summary = json.loads((trained / "summary.json").read_text())
    assert json.loads(out)["map"] == pytest.approx(summary["val_map"])
    cfg = config.from_dict(yaml.safe_load((trained / "config.yaml").read_text()), "detect")
    data = detect.load_data(cfg)  # the images the run validated on, not its test images
    assert seen[0].image_ids == data.val.image_ids != data.test.image_ids


def test_detect_predict_writes_a_png_and_json_per_image(trained, coco_dir, tmp_path, capsys):
    image = coco_dir / "te000.png"
    out = tmp_path / "pred"
    rc, stdout, err = run_cli(
        capsys, "detect", "predict", str(trained / "last.pt"), str(image), "-o", str(out),
        "--score-thr", "0",
    )  # fmt: skip
    assert rc == 0, err
    assert (out / "te000.png").is_file() and "te000.png" in stdout
    doc = json.loads((out / "te000.json").read_text())
    assert doc["image"] == str(image) and isinstance(doc["detections"], list)
    with Image.open(image) as a, Image.open(out / "te000.png") as b:
        assert a.size == b.size  # drawn on the original image
    h, w = 48, 64  # detfake's first size
    assert 0 < len(doc["detections"]) <= 100  # det.detections caps them
    for d in doc["detections"]:
        assert d["score"] >= 0.05  # det.score_thresh
        x1, y1, x2, y2 = d["box_xyxy"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h  # original pixels
        assert CAT_IDS[CLASSES.index(d["class"])] == d["category_id"]


def test_detect_predict_takes_folders_and_globs_and_keeps_relative_names(
    trained, coco_dir, tmp_path, capsys
):
    """Two `te000.png` in different folders keep both outputs; one COCO results file."""
    a, b = tmp_path / "in" / "a", tmp_path / "in" / "b"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "te000.png").write_bytes((coco_dir / "te000.png").read_bytes())
    (b / "te001.png").write_bytes((coco_dir / "te001.png").read_bytes())
    (tmp_path / "in" / "c").mkdir()
    for name in ("x.1.png", "x.2.png", "y.png", "y.jpg"):  # dotted names; one stem twice
        (tmp_path / "in" / "c" / name).write_bytes((coco_dir / "te000.png").read_bytes())
    out = tmp_path / "pred"
    rc, stdout, err = run_cli(
        capsys, "detect", "predict", str(trained / "last.pt"), str(a), str(b / "*.png"),
        str(tmp_path / "in" / "c"), "-o", str(out), "--score-thr", "0", "--save-json",
    )  # fmt: skip
    assert rc == 0, err
    assert "predictions.json (" in stdout
    for rel in ("a/te000", "b/te000", "b/te001", "c/x.1", "c/x.2", "c/y.png", "c/y.jpg"):
        assert (out / f"{rel}.png").is_file() and (out / f"{rel}.json").is_file(), rel
    results = json.loads((out / "predictions.json").read_text())
    per_image = [json.loads((out / f"{r}.json").read_text()) for r in ("a/te000", "b/te000")]
    docs = [p for p in out.rglob("*.json") if p.name != "predictions.json"]
    assert len(docs) == 7
    assert len(results) == sum(len(json.loads(p.read_text())["detections"]) for p in docs)
    assert {r["image_id"] for r in results} <= set(range(7))
    first = per_image[0]["detections"][0]
    x1, y1, x2, y2 = first["box_xyxy"]
    assert results[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)


def test_detect_predict_refusals_create_nothing(trained, coco_dir, tmp_path, capsys):
    ckpt, image = str(trained / "last.pt"), str(coco_dir / "te000.png")
    afile = tmp_path / "taken.txt"
    afile.write_text("keep me")
    line = usage_error(capsys, "detect", "predict", ckpt, image, "-o", str(afile))
    assert "is a file; give a folder" in line and afile.read_text() == "keep me"
    out = tmp_path / "never"
    line = usage_error(
        capsys, "detect", "predict", ckpt, str(tmp_path / "no" / "*.jpg"), "-o", str(out)
    )
    assert "no image file there" in line and not out.exists()


def test_detect_eval_refuses_a_classification_checkpoint(tmp_path, capsys):
    cfg = config.to_dict(config.ClassifyConfig())
    ckpt = Checkpoint(model={}, config=cfg, data={"classes": ["a", "b"]}, task="classify")
    path = tmp_path / "clf.pt"
    checkpoint.save(ckpt, path)
    line = usage_error(capsys, "detect", "eval", str(path))
    assert "classify checkpoint" in line and "freebies eval" in line
    line = usage_error(capsys, "detect", "predict", str(path), str(path), "-o", str(tmp_path))
    assert "is a classify checkpoint, not a detect one" in line


def test_unknown_detector_names_the_nearest(coco_dir, tmp_path, capsys):
    line = usage_error(
        capsys, *tiny(f"coco:{coco_dir}", tmp_path / "r", "--model", "fcos_resnet19")
    )
    assert "fcos_resnet19" in line and "did you mean 'fcos_resnet18'" in line
    assert not (tmp_path / "r" / "last.pt").exists()


def test_predict_and_make_data_bad_numbers(trained, coco_dir, tmp_path, capsys):
    line = usage_error(
        capsys, "detect", "predict", str(trained / "last.pt"), str(coco_dir / "te000.png"),
        "-o", str(tmp_path / "p"), "--score-thr", "1.5",
    )  # fmt: skip
    assert "--score-thr must be in [0, 1), got 1.5" in line
    assert not (tmp_path / "p").exists()
    line = usage_error(capsys, "detect", "make-data", "--out", str(tmp_path / "d"), "--train", "0")
    assert "--train" in line and ">= 1" in line
    assert not (tmp_path / "d").exists()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    line = usage_error(
        capsys, "detect", "predict", str(trained / "last.pt"), str(bad), "-o", str(tmp_path / "q")
    )
    assert "cannot read image" in line and "bad.png" in line


def test_an_impossible_fpn_width_names_the_key(coco_dir, tmp_path, capsys):
    line = usage_error(
        capsys, *tiny(f"coco:{coco_dir}", tmp_path / "r", "--set", "det.fpn_width=1")
    )
    assert "det.fpn_width must be >= 2" in line


# --------------------------------------------------------------------------------------------
# Ctrl-C, then resume: bit-exact on the CPU


def test_detect_run_resumes_bit_exactly_after_an_interrupt(coco_dir, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real = engine.any_rank

    def stop_at_step_2(flag: bool, device: torch.device) -> bool:
        calls["n"] += 1
        return real(flag, device) or calls["n"] == 2

    # batch 4: 4 steps per epoch, so the stop falls mid-epoch; EMA on, so it must resume too
    args = ("--set", "ema.decay=0.9")
    out, ref = tmp_path / "run", tmp_path / "ref"
    monkeypatch.setattr(engine, "any_rank", stop_at_step_2)
    rc, _, err = run_cli(capsys, *tiny(f"coco:{coco_dir}", out, *args, batch=4))
    assert rc == 130 and "--resume" in err
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (0, 2)
    monkeypatch.setattr(engine, "any_rank", real)
    rc, _, err = run_cli(capsys, "detect", "train", "--resume", str(out))
    assert rc == 0, err
    rc, _, err = run_cli(capsys, *tiny(f"coco:{coco_dir}", ref, *args, batch=4))
    assert rc == 0, err
    a = torch.load(out / "last.pt", weights_only=True)
    b = torch.load(ref / "last.pt", weights_only=True)
    assert a["task"] == "detect" and a["epoch"] == b["epoch"] == 2
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    # evaluation (and `detect eval`) uses the EMA weights, which differ from the raw ones
    net = detect.load_detector(checkpoint.load(out / "last.pt")).state_dict()
    ema = {k.removeprefix("module."): v for k, v in a["ema"].items() if k != "n_averaged"}
    assert net.keys() == ema.keys() and all(torch.equal(net[k], ema[k]) for k in ema)
    assert not all(torch.equal(a["model"][k], ema[k]) for k in ema)
    drop = ("wall_s", "img_per_s")
    rows_a = [{k: v for k, v in r.items() if k not in drop} for r in a["metrics"]]
    rows_b = [{k: v for k, v in r.items() if k not in drop} for r in b["metrics"]]
    assert rows_a == rows_b  # losses and mAP too


# --------------------------------------------------------------------------------------------
# BCCD (real VOC data): a two-step smoke run with its recipe


@needs_bccd
def test_bccd_two_step_training_smoke_run(tmp_path, capsys):
    out = tmp_path / "bccd"
    argv = tiny(f"voc:{bccd_dir()}", out, "--recipe", "detect-bccd", batch=16)
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "detect-bccd" and summary["epochs_run"] == 2
    assert summary["ap_per_class"].keys() == {"Platelets", "RBC", "WBC"}
    assert summary["train_img_per_s"] > 0 and "val_map" in summary
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt.recipe == "detect-bccd" and ckpt.data["category_ids"] == [1, 2, 3]
    assert (ckpt.epoch, len(ckpt.metrics)) == (2, 2)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["optim"]["name"] == "adamw" and cfg["train"]["epochs"] == 2
    assert cfg["data"]["limit_train"] == 16  # 16 images at batch 16: one step per epoch


def test_classification_settings_are_refused_for_detection(coco_dir, tmp_path, capsys):
    """A detection config has no aug section: a classification key is an unknown key, with the
    nearest detection key as its did-you-mean."""
    line = usage_error(capsys, *tiny(f"coco:{coco_dir}", tmp_path / "r", "--set", "aug.mixup=0.2"))
    assert "unknown key 'aug.mixup'" in line and "did you mean 'det.mixup'" in line
    line = usage_error(capsys, *tiny(f"coco:{coco_dir}", tmp_path / "r", "--set", "train.tta=true"))
    assert "unknown key 'train.tta'" in line
    assert not (tmp_path / "r").exists()
    line = usage_error(capsys, "detect", "train", "--recipe", "baseline", "--out", str(tmp_path))
    assert "baseline is a classify recipe, not a detect one" in line and "`freebies train`" in line


def test_a_detection_run_resumes_only_as_detection(trained, capsys):
    line = usage_error(capsys, "train", "--resume", str(trained))
    assert "is a detect checkpoint, not a classify one" in line
    assert "freebies detect eval" in line
    line = usage_error(capsys, "eval", str(trained / "last.pt"))
    assert "is a detect checkpoint" in line


def test_torchrun_two_processes_train_and_gather_every_test_image(coco_dir, tmp_path):
    """Two processes under torchrun: the ranks keep one set of weights, and the test AP in
    summary.json (predictions gathered from both ranks, 7 images over 2 shards, so one rank
    gets a padded shard) equals a one-process `detect eval` of the same checkpoint."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = tiny(f"coco:{coco_dir}", out, "--epochs", "1", "--limit-test", "7", batch=4)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*torchrun, "-m", "freebies", *args], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("final test map") == 1, res.stdout  # once, not once per rank
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    evaluate = ["detect", "eval", str(out / "last.pt"), "--limit-test", "7"]
    res = subprocess.run(
        [sys.executable, "-m", "freebies", *evaluate], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("map", "map_50", "map_75", "map_small"):
        assert result[key] == pytest.approx(summary[key], abs=1e-9), key


def test_detect_export_writes_a_checked_onnx_graph(trained, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from freebies.detection.export import OUTPUTS

    out = tmp_path / "det.onnx"
    line = usage_error(
        capsys, "detect", "export", str(trained / "last.pt"), "-o", str(tmp_path / "x.pt")
    )
    assert "ending in .onnx" in line
    rc, printed, err = run_cli(capsys, "detect", "export", str(trained / "last.pt"), "-o", str(out))
    assert rc == 0, err
    assert "raw outputs within" in printed and "detections found" in printed
    session = ort.InferenceSession(str(out))
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    x = torch.rand(3, 3, 128, 128).numpy()  # any batch: the batch dimension is dynamic
    cls, reg, ctr, anchors = session.run(None, {"images": x})
    assert cls.shape[:2] == reg.shape[:2] == ctr.shape[:2] == (3, len(anchors))
    assert cls.shape[2] == len(CLASSES)
    line = usage_error(capsys, "detect", "export", str(trained / "last.pt"), "-o", str(out))
    assert "already exists" in line


def test_a_dead_box_head_is_named_once_at_the_third_epoch_of_box_loss_1():
    from freebies.detect import dead_box_head

    rows = [{"train_bbox_regression": x} for x in (1.0013, 1.0001, 1.0, 1.0, 1.0)]
    said = [dead_box_head(rows[:n]) for n in range(1, len(rows) + 1)]
    assert [m is not None for m in said] == [False, False, False, True, False]
    assert "cannot recover" in said[3] and "train.seed" in said[3]
    healthy = [{"train_bbox_regression": x} for x in (1.0013, 0.981, 0.79, 0.72, 0.66)]
    assert all(dead_box_head(healthy[:n]) is None for n in range(1, 6))
    assert dead_box_head([{"train_loss": 1.0}] * 3) is None  # a task without the part


def test_training_with_a_dead_box_head_warns_once_within_three_epochs(
    coco_dir, tmp_path, capsys, monkeypatch
):
    from freebies import detect

    make = detect.make_detector

    def dead(cfg, info):  # every box output below 0 from the start: ReLU passes no gradient
        net = make(cfg, info)
        reg = net.head.regression_head.bbox_reg
        torch.nn.init.zeros_(reg.weight), torch.nn.init.constant_(reg.bias, -10.0)
        return net

    monkeypatch.setattr(detect, "make_detector", dead)
    assert main(tiny(f"coco:{coco_dir}", tmp_path / "dead", "--epochs", "3")) == 0
    err = capsys.readouterr().err
    assert err.count("the box loss has been 1.0000 for 3 epochs") == 1, err
    assert f"{tmp_path / 'dead'}: the box loss" in err, "the warning names the run"


def test_evaluation_during_training_runs_in_fp32_whatever_the_precision(tmp_path, monkeypatch):
    """Under bf16 autocast FCOS decodes its boxes in bf16 (2 px steps from 256 px on): the
    evaluation that picks best.pt and fills the summary sees the fp32 boxes `detect eval` sees."""
    from freebies.distributed import Dist

    root = coco_set(tmp_path / "coco")
    seen, real = {}, detect.coco_metrics
    for precision in ("fp32", "bf16"):
        sets = {
            **{"data.spec": f"coco:{root}", "data.image_size": 128, "data.limit_test": 4},
            **{"det.fpn_width": 16, "det.score_thresh": 0.0, "train.precision": precision},
        }
        task = detect.build(config.load("detect", sets), Dist(0, 1, torch.device("cpu")))
        assert task.precision[0] == precision

        def record(preds, *a, precision=precision, **k):
            seen.setdefault(precision, []).extend(preds)
            return real(preds, *a, **k)

        monkeypatch.setattr(detect, "coco_metrics", record)
        task.evaluate(True)
    assert sum(len(p["boxes"]) for p in seen["fp32"]) > 100  # score 0: every image has boxes
    for a, b in zip(seen["fp32"], seen["bf16"], strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_detect_train_without_the_coco_evaluator_stops_before_training(
    coco_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # `import` now raises ImportError
    line = usage_error(capsys, *tiny(f"coco:{coco_dir}", tmp_path / "run"))
    assert "pip install faster-coco-eval" in line
    assert not (tmp_path / "run" / "last.pt").exists()
