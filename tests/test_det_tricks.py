"""The detection bag of freebies (Zhang et al. 2019): the FCOS head's per-box weights and
foreground label smoothing against torchvision's own loss, visually coherent mixup, random
shapes, and the recipe switches end to end (one-line errors, a smoke run with every CPU trick).
"""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detfake import cycled_scenes, write_coco
from freebies import config
from freebies.cli import main
from freebies.detection import model as det_model
from freebies.detection.mixup import mix_detection, mixup_until
from freebies.detection.model import build_detector
from freebies.detection.transforms import DET_RANDOM_SHAPES, random_shape
from freebies.errors import UsageError
from helpers import usage_error

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def head_inputs(weights=None, smoothing=0.0):
    """(head, the arguments the detector hands compute_loss) on 2 images, 3 boxes."""
    torch.manual_seed(0)
    model = build_detector(3, image_size=64, fpn_width=32, head_convs=1, label_smoothing=smoothing)
    targets = [
        {
            "boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 20.0, 26.0, 34.0]]), "labels": torch.tensor([1])},
    ]
    if weights is not None:
        for t, w in zip(targets, weights, strict=True):
            t["weights"] = torch.tensor(w)
    seen = {}

    def spy(*args):
        seen["args"] = args
        return FCOSHead.compute_loss(model.head, *args)

    model.head.compute_loss = spy
    model.train()(list(torch.rand(2, 3, 64, 64).unbind(0)), targets)
    del model.head.compute_loss
    return model.head, seen["args"]


def test_unit_weights_and_no_smoothing_equal_torchvision_exactly():
    head, args = head_inputs(weights=[[1.0, 1.0], [1.0]])
    ours, theirs = head.compute_loss(*args), FCOSHead.compute_loss(head, *args)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k


def test_weighted_loss_is_the_weighted_sum_of_per_location_losses():
    """Box weights (0.7, 0.3) and 0.25: every location matched to box k counts w_k times in
    each of the three losses; background counts once; the normaliser is the weighted count."""
    w = [[0.7, 0.3], [0.25]]
    head, (targets, outputs, anchors, matched) = head_inputs(weights=w)
    ours = head.compute_loss(targets, outputs, anchors, matched)
    loc_w, cls_sum, box_sum, ctr_sum = [], 0.0, 0.0, 0.0
    for i, (t, m) in enumerate(zip(targets, matched, strict=True)):
        fg = m >= 0
        wl = torch.ones(len(m))
        wl[fg] = torch.tensor(w[i])[m[fg]]
        loc_w.append(wl[fg])
        onehot = torch.zeros_like(outputs["cls_logits"][i])
        onehot[fg, t["labels"][m[fg]]] = 1.0
        focal = sigmoid_focal_loss(outputs["cls_logits"][i], onehot, reduction="none")
        cls_sum += (focal.sum(1) * wl).sum()
        pred = head.box_coder.decode(outputs["bbox_regression"][i : i + 1], anchors[i][None])[0]
        gt = t["boxes"][m[fg]]
        box_sum += (generalized_box_iou_loss(pred[fg], gt, reduction="none") * wl[fg]).sum()
        enc = head.box_coder.encode(anchors[i][fg], gt)
        lr, tb = enc[:, [0, 2]], enc[:, [1, 3]]
        centre = ((lr.min(1)[0] / lr.max(1)[0]) * (tb.min(1)[0] / tb.max(1)[0])).sqrt()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            outputs["bbox_ctrness"][i, fg, 0], centre, reduction="none"
        )
        ctr_sum += (bce * wl[fg]).sum()
    norm = torch.cat(loc_w).sum()
    assert 0 < norm < sum(len(x) for x in loc_w)  # the weights really are below 1
    torch.testing.assert_close(ours["classification"], cls_sum / norm, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["bbox_regression"], box_sum / norm, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["bbox_ctrness"], ctr_sum / norm, rtol=1e-5, atol=0)


def test_label_smoothing_moves_only_the_foreground_targets(monkeypatch):
    eps = 0.2
    head, args = head_inputs(smoothing=eps)
    seen = {}

    def spy(logits, target, **kw):
        seen["target"] = target.clone()
        return sigmoid_focal_loss(logits, target, **kw)

    monkeypatch.setattr(det_model, "sigmoid_focal_loss", spy)
    head.compute_loss(*args)
    target = seen["target"]  # (N, HWA, K)
    targets, matched = args[0], torch.stack(args[3])
    fg = matched >= 0
    assert fg.any() and (~fg).any()
    assert torch.equal(target[~fg], torch.zeros_like(target[~fg]))  # background stays at 0
    labels = torch.stack(
        [t["labels"][m.clip(min=0)] for t, m in zip(targets, args[3], strict=True)]
    )[fg]
    rows = target[fg]
    true = rows.gather(1, labels[:, None])[:, 0]
    assert torch.allclose(true, torch.full_like(true, 1 - eps))
    others = rows.sum(1) - true
    assert torch.allclose(others, torch.full_like(others, eps))  # eps / (K - 1) each, K = 3
    assert torch.allclose(rows.min(1)[0], torch.full_like(true, eps / 2))


def test_no_smoothing_and_no_weights_is_torchvision_for_a_negative_image():
    head, args = head_inputs()
    targets, outputs, anchors, matched = args
    targets = [targets[0], {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}]
    matched = [matched[0], torch.full_like(matched[1], -1)]
    ours = head.compute_loss(targets, outputs, anchors, matched)
    theirs = FCOSHead.compute_loss(head, targets, outputs, anchors, matched)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k


# --------------------------------------------------------------------------------------------
# mixup


def batch_of_three():
    x = torch.rand(3, 3, 16, 20) * 255
    boxes = [torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.zeros(0, 4), torch.rand(2, 4) * 8]
    labels = [torch.tensor([0]), torch.zeros(0).long(), torch.tensor([1, 2])]
    return x, boxes, labels


def test_mixup_keeps_every_box_of_both_images_with_its_weight():
    x, boxes, labels = batch_of_three()
    g = torch.Generator().manual_seed(3)
    mixed, mb, ml, mw = mix_detection(x, boxes, labels, 1.5, g)
    used = set()
    for i in range(3):
        # recover lam_i and the partner from the pixels: x_i lam + x_j (1 - lam)
        fits = []
        for j in set(range(3)) - {i}:
            lam = ((mixed[i] - x[j]) * (x[i] - x[j])).sum() / ((x[i] - x[j]) ** 2).sum()
            err = (torch.lerp(x[j], x[i], lam) - mixed[i]).abs().max()
            fits.append((err.item(), j, lam.item()))
        err, j, lam = min(fits)
        assert err < 1e-3 and 0 < lam < 1
        used.add(j)
        assert torch.equal(mb[i], torch.cat([boxes[i], boxes[j]]))
        assert torch.equal(ml[i], torch.cat([labels[i], labels[j]]))
        want = torch.tensor([lam] * len(boxes[i]) + [1 - lam] * len(boxes[j]))
        torch.testing.assert_close(mw[i], want, rtol=0, atol=1e-4)
    assert used == {0, 1, 2}  # a permutation without fixed points


def test_mixup_with_lambda_one_is_the_unmixed_batch(monkeypatch):
    x, boxes, labels = batch_of_three()
    monkeypatch.setattr(
        torch, "_sample_dirichlet", lambda c, generator=None: c * 0 + c.new_tensor([1.0, 0.0])
    )
    mixed, mb, ml, mw = mix_detection(x, boxes, labels, 1.5, torch.Generator().manual_seed(0))
    assert torch.equal(mixed, x)
    for i in range(3):  # the partner's boxes have weight 0: dropped before matching
        assert torch.equal(mb[i], boxes[i]) and torch.equal(ml[i], labels[i])
        assert torch.equal(mw[i], torch.ones(len(boxes[i])))


def test_mixup_is_seeded_and_off_at_alpha_zero():
    x, boxes, labels = batch_of_three()
    a = mix_detection(x, boxes, labels, 1.5, torch.Generator().manual_seed(5))
    b = mix_detection(x, boxes, labels, 1.5, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and all(
        torch.equal(p, q) for p, q in zip(a[3], b[3], strict=True)
    )
    off = mix_detection(x, boxes, labels, 0.0)
    assert off[0] is x and all(
        torch.equal(w, torch.ones(len(b))) for w, b in zip(off[3], boxes, strict=True)
    )


def test_mixup_is_off_for_the_last_tenth_by_default():
    # GluonCV's YOLOv3 (the paper's recipe): 200 epochs, the last 20 without mixup
    assert [mixup_until(e, None) for e in (200, 30, 10, 9, 1)] == [180, 27, 9, 9, 1]
    assert mixup_until(30, 0) == 30 and mixup_until(30, 5) == 25
    assert config.load("detect").det.mixup_off_epochs is None


@pytest.mark.parametrize(
    ("alpha", "n_boxes", "match"), [(-1.0, 3, "alpha must be >= 0"), (1.5, 2, "one box")]
)
def test_mixup_bad_arguments(alpha, n_boxes, match):
    x, boxes, labels = batch_of_three()
    with pytest.raises(ValueError, match=f"mix_detection: .*{match}"):
        mix_detection(x, boxes[:n_boxes], labels, alpha)


def test_mixup_loss_with_lambda_one_equals_the_unmixed_loss(monkeypatch):
    """Through the detector: the mixed batch at lam = 1 gives exactly the plain loss."""
    x = batch_of_three()[0]
    boxes = [
        torch.tensor([[2.0, 2.0, 12.0, 10.0]]),
        torch.zeros(0, 4),
        torch.tensor([[4.0, 3.0, 18.0, 15.0]]),
    ]
    labels = [torch.tensor([0]), torch.zeros(0).long(), torch.tensor([2])]
    torch.manual_seed(0)
    model = build_detector(3, image_size=32, fpn_width=16, head_convs=1).train()
    images = torch.nn.functional.interpolate(x, size=(32, 32)) / 255
    boxes = [b * 1.6 for b in boxes]
    plain = model(
        list(images.unbind(0)),
        [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)],
    )
    monkeypatch.setattr(
        torch, "_sample_dirichlet", lambda c, generator=None: c * 0 + c.new_tensor([1.0, 0.0])
    )
    mixed, mb, ml, mw = mix_detection(images, boxes, labels, 1.5)
    targets = [
        {"boxes": b, "labels": lab, "weights": w} for b, lab, w in zip(mb, ml, mw, strict=True)
    ]
    ours = model(list(mixed.unbind(0)), targets)
    for k in plain:
        assert torch.equal(ours[k], plain[k]), k


# --------------------------------------------------------------------------------------------
# random shapes


def test_random_shape_is_drawn_every_k_steps_from_the_list_and_reproducible():
    sizes = [random_shape([64, 96, 128], 4, 0, step) for step in range(40)]
    assert set(sizes) == {64, 96, 128}
    for step in range(40):  # one size per block of 4 steps
        assert sizes[step] == sizes[step - step % 4]
    assert sizes == [random_shape([64, 96, 128], 4, 0, step) for step in range(40)]
    # the record builds it only when the recipe lists sizes
    on = config.flatten(config.to_dict(config.load("detect", {"det.random_shapes": [64, 96]})))
    assert DET_RANDOM_SHAPES.build(on)(5) in (64, 96)
    assert DET_RANDOM_SHAPES.build(config.flatten(config.to_dict(config.load("detect")))) is None


def test_random_shapes_default_spans_a_quarter_either_side_of_each_recipes_size():
    """The catalog's setting is relative: 192-320 for the 256 px scenes recipe and 320-512
    for BCCD's 416 px (the lists measured at convergence), resolved into the run's config."""

    def shapes(recipe: str, **extra) -> list[int]:
        cfg = config.load(recipe, {**DET_RANDOM_SHAPES.on, **extra})
        assert cfg.det.random_shapes_scale is None  # the config names the sizes it trains at
        return cfg.det.random_shapes

    assert shapes("detect") == [192, 224, 256, 288, 320]
    assert shapes("detect-bccd") == [320, 352, 384, 416, 448, 480, 512]
    assert shapes("detect", **{"data.image_size": 40}) == [32]  # none in range: the nearest
    with pytest.raises(UsageError, match="use one"):
        config.load("detect", {**DET_RANDOM_SHAPES.on, "det.random_shapes": [64]})
    with pytest.raises(UsageError, match="0 < lo <= hi"):
        config.load("detect", {"det.random_shapes_scale": [1.25, 0.75]})


# --------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    splits = {
        "train": cycled_scenes(16, "tr", 3, 0),
        "val": cycled_scenes(4, "va", 3, 1),
        "test": cycled_scenes(4, "te", 3, 2),
    }
    write_coco(root, splits, ["cat", "dog", "fox"])
    return root


def small(coco_dir, out, *sets):
    return [
        "detect", "train", "--data", f"coco:{coco_dir}", "--out", str(out), "--epochs", "1",
        "--batch-size", "8", "--limit-train", "16",
        *("--set", "data.image_size=128", "--set", "det.fpn_width=16", "--set", "det.head_convs=1"),
        *("--set", "sched.warmup_epochs=0.5", "--set", "train.threads=1"),
        *(a for s in sets for a in ("--set", s)),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("det.mixup=-1", "det.mixup=-1.0 must be >= 0 (the Beta alpha"),
        ("det.label_smoothing=1", "det.label_smoothing=1.0 must be in [0, 1)"),
        ("det.random_shapes=[100]", "multiple of 32"),
        ("det.random_shapes=[]", "det.random_shapes is empty"),
        ("det.expand_ratio=0.5", "det.expand_ratio"),
        ("det.crop_min_scale=0", "det.crop_min_scale"),
        ("aug.hflip=true", "aug.hflip"),
    ],
)
def test_bad_detection_trick_values_are_one_line_errors(coco_dir, tmp_path, capsys, setting, match):
    line = usage_error(capsys, *small(coco_dir, tmp_path / "run", setting))
    assert match in line
    assert not (tmp_path / "run").exists()


def test_every_cpu_detection_trick_at_once_trains_two_steps(coco_dir, tmp_path):
    out = tmp_path / "all"
    tricks = (
        "det.mixup=1.5", "det.label_smoothing=0.1", "det.hflip=true", "det.expand=true",
        "det.crop=true", "det.color_jitter=true", "det.random_shapes=[96,128,160]",
        "det.random_shapes_every=1", "det.mixup_off_epochs=0",
    )  # fmt: skip
    assert main(small(coco_dir, out, *tricks)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["map"] is not None
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_loss"] > 0


def test_classification_refuses_detection_tricks(tmp_path, capsys):
    line = usage_error(
        capsys, "train", "--recipe", "baseline", "--out", str(tmp_path / "run"),
        "--set", "det.mixup=1.5",
    )  # fmt: skip
    assert "unknown key 'det.mixup'" in line and "did you mean 'aug.mixup'" in line
    assert not (tmp_path / "run").exists()


def test_ablate_task_detect_runs_the_detection_trainer_on_map(coco_dir, tmp_path, capsys):
    """`freebies ablate --task detect`: the detect recipe and trainer, compared on map."""
    import yaml

    out = tmp_path / "grid"
    sets = (
        f"data.spec=coco:{coco_dir}", "data.limit_train=16", "train.epochs=1",
        "data.image_size=128", "det.fpn_width=16", "det.head_convs=1",
        "sched.warmup_epochs=0.5", "train.threads=1",
    )  # fmt: skip
    argv = ["ablate", "--task", "detect", "--tricks", "det_label_smoothing", "--seeds", "1"]
    assert main([*argv, "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    grid = json.loads((out / "grid.json").read_text())
    assert (grid["recipe"], grid["trainer"], grid["metric"]) == (
        "detect", "freebies detect train", "map"
    )  # fmt: skip
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["baseline", "det_label_smoothing"]
    assert all(r["map"] is not None for r in rows)
    saved = out / "runs" / "det_label_smoothing-s0" / "config.yaml"
    assert yaml.safe_load(saved.read_text())["det"]["label_smoothing"] == 0.1
