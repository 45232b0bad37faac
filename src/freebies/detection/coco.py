"""COCO box metrics from a maintained evaluator (faster-coco-eval, the C++ port of
pycocotools' COCOeval; the two agree to 1e-6), never from a formula of our own.

Lin et al. 2014, "Microsoft COCO: Common Objects in Context", https://arxiv.org/abs/1405.0312:
AP averaged over IoU 0.50:0.05:0.95, up to 100 detections per image, size bins by area
(small < 32², medium < 96², large). Ground truth goes in as the file has it: each box's own
``area`` (a segmentation's area on real COCO files) decides its size bin, and crowd regions
(``iscrowd``) are ignore regions: a detection matched to one is neither a true nor a false
positive. With both, the figures are pycocotools' on the original annotation file.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch

from freebies.errors import UsageError

KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def require_evaluator() -> None:
    """One line with the fix when faster-coco-eval (the COCO evaluator) is missing: a detection
    run checks it before training, not at its first evaluation."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        raise UsageError(
            "faster-coco-eval is not installed, and detection is evaluated with it: "
            "pip install faster-coco-eval (or reinstall freebies)"
        ) from None


def coco_metrics(
    preds: list[dict[str, torch.Tensor]],
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    sizes: torch.Tensor,
    classes: list[str],
    category_ids: list[int],
    *,
    areas: list[torch.Tensor] | None = None,
    iscrowd: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """COCO AP of `preds` against the ground truth, in percent.

    Args:
        preds: per image {"boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,) in 0..K-1}.
        gt_boxes, gt_labels: per image (m, 4) xyxy and (m,) class indices.
        sizes: (N, 2) image heights and widths; all boxes in those images' pixels.
        classes, category_ids: class names and the file's own category id of each index.
        areas: per image (m,) COCO areas of the ground truth (default: each box's w x h).
        iscrowd: per image (m,) bool, the crowd regions among gt_boxes (default: none).

    Returns:
        map, map_50, map_75, map_small, map_medium, map_large (None where a size bin has no
        ground-truth box) and ap_per_class {name: AP or None}.
    """
    require_evaluator()
    from faster_coco_eval import COCO, COCOeval_faster

    images, annotations, results = [], [], []
    for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        h, w = sizes[i].tolist()
        images.append({"id": i, "height": h, "width": w})
        boxes = _xywh(b)
        area = areas[i].tolist() if areas is not None else [x[2] * x[3] for x in boxes]
        crowd = iscrowd[i].int().tolist() if iscrowd is not None else [0] * len(boxes)
        for box, c, a, k in zip(boxes, lab.tolist(), area, crowd, strict=True):
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": category_ids[c]}
            annotations.append({**ann, "bbox": box, "area": a, "iscrowd": k})
    for i, p in enumerate(preds):
        for box, s, c in zip(
            _xywh(p["boxes"]), p["scores"].tolist(), p["labels"].tolist(), strict=True
        ):
            results.append({"image_id": i, "category_id": category_ids[c], "bbox": box, "score": s})
    cats = [{"id": cid, "name": name} for cid, name in zip(category_ids, classes, strict=True)]
    gt = COCO({"images": images, "annotations": annotations, "categories": cats})
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its table; we return numbers
        ev = COCOeval_faster(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [None if v < 0 else 100 * float(v) for v in ev.stats[:6]]
    # precision: (IoU thresholds, recall points, classes, area ranges, max dets); -1 = no data
    prec = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(classes):  # the evaluator orders classes by category id
        p = prec[:, :, ev.params.catIds.index(category_ids[k])]
        per_class[name] = 100 * float(p[p > -1].mean()) if (p > -1).any() else None
    return {**dict(zip(KEYS, stats, strict=True)), "ap_per_class": per_class}


def _xywh(b: torch.Tensor) -> list[list[float]]:
    b = b.double()
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()
