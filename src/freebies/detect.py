"""Object detection on the run engine: `build` makes the task, `detect_step` is its step;
`train`, `evaluate_checkpoint`, `predict_files` and `make_data` are what `freebies detect
train | eval | predict | make-data` run.

The step, in order: box-aware augmentation -> forward (FCOS: classification, box and
centre-ness losses); the engine then does backward, the optimizer step, the LR schedule step
and EMA. Evaluation is COCO AP by a maintained evaluator, on boxes mapped back to each image's
original pixels. The run folder, checkpoints, resume and Ctrl-C belong to `freebies.engine`,
as for classification.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from freebies import catalog, checkpoint, config, engine
from freebies.build import make_training, recipe_errors, shuffled_batches
from freebies.config import DetectConfig
from freebies.data.detection import (
    DetData,
    DetSplit,
    StreamedImages,
    image_stats,
    letterboxed_split,
    load_detection,
    shape_groups,
    to_original,
)
from freebies.data.io import decode, image_paths, output_stems, write_text
from freebies.data.loader import group_steps, to_device
from freebies.deploy import count_macs
from freebies.detection.coco import coco_metrics, require_evaluator
from freebies.detection.draw import draw_detections
from freebies.detection.mixup import mixup_until
from freebies.detection.model import BACKBONES, build_detector
from freebies.detection.multiscale import native_size, small_box_side
from freebies.detection.transforms import resize_boxes, shape_like
from freebies.distributed import Dist, pick_device
from freebies.errors import UsageError, nearest, warn
from freebies.runtime import autocast_for
from freebies.tricks.ema import ema_weights

MODELS = tuple(f"fcos_{b}" for b in BACKBONES)
LOSS_PARTS = ("classification", "bbox_regression", "bbox_ctrness")  # FCOS's, logged per epoch


@dataclass
class DetStep:
    """Everything the detection step reads; `build` makes it once per run."""

    cfg: DetectConfig
    net: nn.Module  # the unwrapped detector (the EMA averages it)
    model: nn.Module  # what runs forward: `net`, or its DDP / compiled wrapper
    gen: torch.Generator  # this rank's augmentation stream
    fitted: torch.Tensor  # int64 (N, 2): each training image's own (h, w) on the canvas, CPU
    boxes: list[torch.Tensor]  # training boxes per image, xyxy letterboxed pixels, on device
    labels: list[torch.Tensor]  # training labels per image, on device
    steps_per_epoch: int
    fill: list[float]  # the expand canvas: the training set's channel means, pixel units
    ema: Any = None  # AveragedModel, when ema.decay > 0: evaluation scores it
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    # The det.* tricks that are on, built by their records (freebies.catalog); None when off.
    mixup: Callable | None = None  # (x, boxes, labels, generator) -> mixed, box weights
    jitter: Callable | None = None  # (x, generator) -> x
    expand: Callable | None = None  # (x, boxes, generator, fill) -> x, boxes
    crop: Callable | None = None  # (x, boxes, generator) -> x, boxes, kept
    hflip: Callable | None = None  # (x, boxes, generator) -> x, boxes
    shape: Callable | None = None  # (global step) -> training size
    slice: Callable | None = None  # (uint8 x, fitted, boxes, generator) -> x, boxes, kept


def detect_step(
    s: DetStep, batch: tuple[torch.Tensor, ...], epoch: int, step: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training step on batch (indices (N,), uint8 images, indices (N,)): the images are
    (N, 3, h, w) cut to the batch's shape, or for sliced training N views of each image's own
    pixels (`batch_reader`).

    Returns the loss, classification (sigmoid focal) + box (GIoU) + centre-ness, each
    normalised by the global batch's foreground locations (their weights under mixup), and
    those three parts (detached, in LOSS_PARTS order).
    """
    idx, xb, _ = batch
    ids = idx.tolist()
    boxes, labels = [s.boxes[i] for i in ids], [s.labels[i] for i in ids]
    # 1. a window of each image (sliced training), or the batch as the loader cut it
    if s.slice:
        x, boxes, keeps = s.slice(xb, s.fitted[ids], boxes, s.gen)
        labels = [lab[k] for lab, k in zip(labels, keeps, strict=True)]
    else:
        x = xb.float()
    # 2. box-aware augmentation and random shapes (float pixels, batched, per-image draws)
    x, targets = augment(s, x, boxes, labels, epoch)
    if s.shape:
        size = shape_like(s.shape(epoch * s.steps_per_epoch + step), *x.shape[-2:])
        x, scaled = resize_boxes(x, [t["boxes"] for t in targets], size)
        targets = [{**t, "boxes": b} for t, b in zip(targets, scaled, strict=True)]
    # 3. forward and loss: the detector normalises, batches and matches locations to boxes
    images = list((x / 255).unbind(0))
    with s.autocast, native_size(s.net, *x.shape[-2:]):
        losses = s.model(images, targets)
    loss = sum(v.float() for v in losses.values())
    return loss, [losses[k].detach().float() for k in LOSS_PARTS]


def augment(
    s: DetStep, x: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor], epoch: int
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The recipe's detection tricks in GluonCV's order (Zhang et al. 2019): mixup, colour
    jitter, expand, crop, flip. x: float pixels (N, C, H, W). Returns the images and the
    detector's targets; "weights" (per box) only under mixup."""
    g, weights = s.gen, None
    if s.mixup and epoch < mixup_until(s.cfg.train.epochs, s.cfg.det.mixup_off_epochs):
        x, boxes, labels, weights = s.mixup(x, boxes, labels, generator=g)
    if s.jitter:
        x = s.jitter(x, generator=g)
    if s.expand:
        x, boxes = s.expand(x, boxes, g, fill=s.fill)
    if s.crop:
        x, boxes, keeps = s.crop(x, boxes, g)
        labels = [lab[k] for lab, k in zip(labels, keeps, strict=True)]
        if weights is not None:
            weights = [w[k] for w, k in zip(weights, keeps, strict=True)]
    if s.hflip:
        x, boxes = s.hflip(x, boxes, g)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    if weights is not None:
        for t, w in zip(targets, weights, strict=True):
            t["weights"] = w
    return x, targets


STEP_FIELDS = {  # trick -> the DetStep field its built callable goes in
    "det_mixup": "mixup",
    "det_color_jitter": "jitter",
    "det_expand": "expand",
    "det_crop": "crop",
    "det_hflip": "hflip",
    "det_random_shapes": "shape",
    "det_slice": "slice",
}


def make_detector(cfg: DetectConfig, data_info: dict[str, Any]) -> nn.Module:
    """The recipe's detector for data described by `data_info` (classes, image_size, mean, std)."""
    name = cfg.model.name
    if name not in MODELS:
        raise UsageError(
            f"model.name={name!r} is not a detector{nearest(name, list(MODELS))}; choose one of "
            f"{', '.join(MODELS)}"
        )
    with recipe_errors("model"):
        return build_detector(
            len(data_info["classes"]),
            image_size=data_info["image_size"],
            backbone=name.removeprefix("fcos_"),
            fpn_width=cfg.det.fpn_width,
            head_convs=cfg.det.head_convs,
            image_mean=data_info["mean"],
            image_std=data_info["std"],
            score_thresh=cfg.det.score_thresh,
            detections_per_img=cfg.det.detections,
            backbone_weights=cfg.model.backbone_weights,
            label_smoothing=cfg.det.label_smoothing,
        )


def load_data(cfg: DetectConfig, native: bool = False) -> DetData:
    """The recipe's detection data, letterboxed to data.image_size (sliced training: at
    det.slice_scale x their own resolution; `native`: at their own resolution); prints its
    cleaning note. `scenes` is the default Fashion scenes set, made on first use."""
    spec = cfg.data.spec
    if spec == "scenes":  # rank 0 makes the set while the other ranks wait, then they read it
        from freebies.data.scenes import ensure_scenes

        others = dist.is_initialized() and dist.get_rank() > 0
        if others:
            dist.barrier()
        spec = f"coco:{ensure_scenes()}"
        if dist.is_initialized() and not others:
            dist.barrier()
    data = load_detection(
        spec,
        image_size=cfg.data.image_size or config.DETECT_IMAGE_SIZE,
        val_split=cfg.data.val_split,
        test_split=cfg.data.test_split,
        split_seed=cfg.data.split_seed,
        limit_train=cfg.data.limit_train,
        limit_test=cfg.data.limit_test,
        rect=cfg.data.rect,
        scale=1.0 if native else cfg.det.slice_scale if cfg.det.slice_size else None,
        stream=cfg.data.stream,
        memory_mb=cfg.data.memory_mb,
    )
    for note in data.notes:
        warn(note)
    return data


def train_size(cfg: DetectConfig) -> int:
    """How many training images the recipe's data hold (after its split and limits)."""
    return len(load_data(cfg).train)


def train_groups(cfg: DetectConfig, data: DetData) -> torch.Tensor:
    """The shape group of each training image: one per orientation, or one for all when
    every sample is a window of one size (sliced training)."""
    if cfg.det.slice_size:
        return torch.zeros(len(data.train), dtype=torch.int64)
    return shape_groups(data.train.shapes)


def check_training(cfg: DetectConfig, data: DetData) -> int:
    """What training needs of the data: a full batch, and a validation set to stop early on.
    Returns the steps per epoch: the full batches of each shape group (`train_groups`)."""
    batch = cfg.train.batch_size
    if batch > len(data.train):
        raise UsageError(
            f"train.batch_size={batch} is larger than the training set "
            f"({len(data.train)} images); lower --batch-size"
        )
    steps = group_steps(train_groups(cfg, data), batch)
    if steps == 0:
        raise UsageError(
            f"train.batch_size={batch}: neither the landscape nor the portrait images fill a "
            "batch; lower --batch-size or set data.rect=false"
        )
    engine.check_early_stop(cfg.train.early_stop_patience, data.val is not None)
    return steps


def data_info(data: DetData, cfg: DetectConfig) -> dict[str, Any]:
    """What a detection checkpoint records about its data: its classes, the scale the model
    learned at (the letterbox side, or the sliced training's window and scale), its pixel
    statistics."""
    mean, std = image_stats(data.train)  # float64, pixel units, padding left out
    sliced = cfg.det.slice_size
    return {
        "fingerprint": data.fingerprint,
        "classes": data.classes,
        "category_ids": data.category_ids,
        "image_size": sliced or cfg.data.image_size or config.DETECT_IMAGE_SIZE,
        "rect": cfg.data.rect,
        "slice": {"size": sliced, "scale": cfg.det.slice_scale} if sliced else None,
        "mean": (mean / 255).tolist(),
        "std": (std / 255).clamp(min=1e-3).tolist(),
        "split_rule": data.split_rule,
        "small_box_side": small_box_side(data.train.boxes),  # for --auto-tiles
    }


def batch_reader(
    x: torch.Tensor | StreamedImages, split: DetSplit, sliced: bool
) -> Callable[[torch.Tensor], Any] | None:
    """How the loader reads a batch of the in-memory images `x` (the split's canvas, perhaps on
    the device), from host indices: cut to the batch's shape before the copy, or for sliced
    training each image's own region as a view, from which the step copies its window."""
    if not isinstance(x, torch.Tensor):
        return None  # streamed: decoded and padded to the batch's shape in the workers
    if sliced:
        return lambda ids: [split.image(i, x) for i in ids.tolist()]
    return lambda ids: split.batch(ids, x)


def build(cfg: DetectConfig, d: Dist, recorded_precision: list[str] | None = None) -> engine.Task:
    """The detection task for the engine: data, detector and what trains it, the step."""
    require_evaluator()
    data, dev = load_data(cfg), d.device
    steps_per_epoch = check_training(cfg, data)
    info = data_info(data, cfg)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    net = make_detector(cfg, info).to(dev)
    batch = cfg.train.batch_size
    train_x, groups = to_device(data.train.images, dev), train_groups(cfg, data)
    precision = engine.decide_precision(cfg, d, recorded_precision)
    t = make_training(cfg, net, d, steps_per_epoch)
    s = DetStep(
        cfg=cfg,
        net=t.net,
        model=t.model,
        gen=t.gen,
        fitted=data.train.fitted,
        boxes=[b.to(dev) for b in data.train.boxes],
        labels=[lab.to(dev) for lab in data.train.labels],
        steps_per_epoch=steps_per_epoch,
        fill=[255 * m for m in info["mean"]],
        ema=t.ema,
        autocast=autocast_for(precision[0], dev),
        **catalog.built("detect", config.flatten(config.to_dict(cfg)), STEP_FIELDS),
    )
    size = info["image_size"]
    return engine.Task(
        name="detect",
        training=t,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch,
        batches=shuffled_batches(
            train_x,
            torch.arange(len(train_x), device=dev),
            cfg,
            d,
            cfg.data.workers,
            groups,
            take=batch_reader(train_x, data.train, bool(cfg.det.slice_size)),
        ),
        step=lambda b, epoch, i: detect_step(s, b, epoch, i),
        evaluate=lambda final: eval_row(s, data, d, info),
        summary=summary_keys,
        infer_macs=lambda: count_macs(t.net.eval(), torch.zeros(1, 3, size, size, device=dev)),
        data=info,
        precision=precision,
        shown=("map", "val_map"),
        select="val_map",
        parts=LOSS_PARTS,
        check=dead_box_head,
    )


def dead_box_head(rows: list[dict[str, Any]], epochs: int = 3) -> str | None:
    """A warning, at the epoch it becomes true, when the box loss has been exactly the GIoU
    loss of point boxes (1.0) for `epochs` epochs: FCOS's box head ends in a ReLU, and once
    tiny or hard boxes have pulled every output below 0 it predicts points and no gradient
    reaches it again (seen from scratch on aerial-drone with half the samples whole images).
    Steps without a foreground box add a box loss of 0, so a dead head on data where such
    steps are common can sit below the tolerance and go unnamed."""
    dead = [abs(r.get("train_bbox_regression", 0.0) - 1.0) < 2e-4 for r in rows[-epochs - 1 :]]
    if len(dead) < epochs or not all(dead[-epochs:]) or (len(dead) > epochs and dead[0]):
        return None
    return (
        f"the box loss has been 1.0000 for {epochs} epochs: the box head's ReLU outputs are all "
        "0 (every box a point) and cannot recover, so this run will not learn boxes; restart it "
        "with another train.seed or a lower optim.lr, or with fewer tiny boxes"
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    split: DetSplit,
    *,
    batch_size: int,
    autocast: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world: int = 1,
    infer: Callable[[torch.Tensor], list[dict[str, torch.Tensor]]] | None = None,
    progress: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Detections on this rank's shard of `split`, in each image's original pixels (CPU).

    Batches hold images of one batch shape, cut to it; with `infer`, of one size, cut to the
    images themselves (no padding), since its scales and tiles are taken from that size.
    `infer` maps a float batch (N, 3, h, w) in [0, 1] to the detections in its pixels
    (e.g. `freebies.detection.multiscale.multiscale_detect`); default: one plain pass.
    `progress` shows a bar with its ETA (`freebies detect eval`).
    Returns one {"index", "boxes" (n, 4) xyxy, "scores", "labels"} per image of the shard.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    shapes = split.shapes if infer is None else split.fitted
    index = shape_batches(shapes[rank::world], batch_size, list(range(rank, len(split), world)))
    for ib in tqdm(index, unit="batch", disable=not progress, leave=False):
        x = split.batch(ib).to(dev).float() / 255
        h, w = shapes[ib[0]].tolist()
        x = x[..., :h, :w]
        with autocast or contextlib.nullcontext(), native_size(model, h, w):
            dets = infer(x) if infer is not None else model(list(x.unbind(0)))
        out += [in_original(det, split, i) for i, det in zip(ib, dets, strict=True)]
    model.train(was_training)
    return out


def shape_batches(shapes: torch.Tensor, batch_size: int, ids: list[int]) -> list[list[int]]:
    """`ids` (with their batch `shapes` (n, 2)) in batches of at most `batch_size` that share
    one shape, so that no batch carries padding."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, shape in zip(ids, shapes.tolist(), strict=True):
        by_shape.setdefault(tuple(shape), []).append(i)
    return [b[k : k + batch_size] for b in by_shape.values() for k in range(0, len(b), batch_size)]


def sliced_infer(
    model: nn.Module,
    size: int,
    overlap: float = 0.2,
    merge: str = "ios",
    factors: Sequence[float] = (1.0,),
    snip: float | None = None,
    threshold: float = 0.5,
) -> Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """predict()'s `infer` for a model trained on slices of `size` px: each image, held at the
    trained scale, cut into overlapping `size` x `size` tiles (none larger than the image, none
    enlarged) plus one pass of the whole image shrunk into `size`, as sliced training showed
    it, merged by `merge` at `threshold` (SAHI's sliced inference, Akyon et al. 2022). Each
    factor f > 1 of `factors` (its pyramid, when asked for) adds tiles of size / f px enlarged
    to `size`, which keep only boxes below `snip` px when given (SNIP, Singh and Davis 2018);
    without 1 in `factors`, no tiles at the trained scale."""
    from freebies.detection import multiscale as ms

    def infer(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        h, w = x.shape[-2:]
        parts = ms.pyramid_parts(model, x, [min(1.0, size / max(h, w))], None, 8)
        for f in factors:
            windows = ms.tile_windows(h, w, tile_size=round(size / f), overlap=overlap)
            if f == 1 and len(windows) < 2:
                continue  # the image fits one tile: the whole pass is that tile
            side = min(size, max(h, w)) if f == 1 else size
            more = ms.tile_parts(model, x, windows, side, 8, snip if f > 1 else None)
            for mine, extra in zip(parts, more, strict=True):
                mine += extra
        detections = getattr(model, "detections_per_img", 100)
        return [ms.merge_parts(p, merge, threshold, detections) for p in parts]

    return infer


def in_original(det: dict[str, torch.Tensor], split: DetSplit, i: int) -> dict[str, Any]:
    """Detections on image i's letterboxed input as {"index", "boxes", "scores", "labels"} in
    its own pixels (CPU); a box that lay in the letterbox padding has no area left: dropped."""
    boxes = to_original(det["boxes"].float().cpu(), split.scales[i], split.sizes[i])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    scores, labels = det["scores"].float().cpu()[keep], det["labels"].cpu()[keep]
    return {"index": i, "boxes": boxes[keep], "scores": scores, "labels": labels}


def evaluate_split(
    model: nn.Module, split: DetSplit, data_classes: list[str], category_ids: list[int], **kw: Any
) -> dict[str, Any]:
    """COCO metrics of `model` on `split` (all ranks take part; every rank gets the result)."""
    t0 = time.perf_counter()
    preds = predict(model, split, **kw)
    if dist.is_initialized():
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, preds)
        preds = [p for shard in shards for p in shard]
    seconds = time.perf_counter() - t0
    preds.sort(key=lambda p: p["index"])
    truth = split.truth  # crowd regions and the files' areas too: pycocotools' figures
    metrics = coco_metrics(
        preds,
        [t.boxes for t in truth],
        [t.labels for t in truth],
        split.sizes,
        data_classes,
        category_ids,
        areas=[t.areas for t in truth],
        iscrowd=[t.iscrowd for t in truth],
    )
    return {**metrics, "img_per_s": len(split) / max(seconds, 1e-9)}


def eval_row(s: DetStep, data: DetData, d: Dist, info: dict[str, Any]) -> dict[str, Any]:
    """Test (and validation) COCO metrics for a metrics row; the EMA weights when EMA is on;
    a slice-trained model tiled at its trained scale. In fp32 whatever the training's precision:
    under bf16 autocast FCOS decodes its boxes in bf16 (benchmarks/eval_precision.py)."""
    model = s.ema.module if s.ema is not None else s.net
    kw = dict(
        batch_size=s.cfg.train.eval_batch_size,
        rank=d.rank,
        world=d.world,
        infer=sliced_infer(model, info["slice"]["size"]) if info.get("slice") else None,
    )
    row = {}
    if data.val is not None:
        val = evaluate_split(model, data.val, data.classes, data.category_ids, **kw)
        row.update(val_map=val["map"], val_map_50=val["map_50"])
    test = evaluate_split(model, data.test, data.classes, data.category_ids, **kw)
    return {**row, **{k: v for k, v in test.items() if k != "img_per_s"}}


def load_detector(ckpt: Any) -> nn.Module:
    """The detector of a detection checkpoint, its EMA weights when it has them, eval mode."""
    cfg = config.from_dict(ckpt.config, "detect")
    cfg.model.backbone_weights = None  # the checkpoint holds every weight
    model = make_detector(cfg, ckpt.data)
    state = ckpt.model
    if ckpt.ema is not None:
        state = ema_weights(ckpt.ema)
    model.load_state_dict(state)
    return model.eval()


def predict_image(
    model: nn.Module, image: torch.Tensor, info: dict[str, Any], score_thr: float, **kw: Any
) -> list[dict[str, Any]]:
    """Detections above `score_thr` on one uint8 image (3, H, W), in its own pixels, with
    class names and the file's category ids."""
    # a pyramid and tiles read the image's own pixels; a slice-trained model its scale
    sliced = info.get("slice")
    factor = sliced["scale"] if sliced else 1.0 if kw.get("infer") else None
    split = letterboxed_split(
        image, info["image_size"], rect=info.get("rect", False), factor=factor
    )
    det = predict(model, split, batch_size=1, **kw)[0]
    keep = det["scores"] >= score_thr
    return [
        {
            "box_xyxy": [round(v, 2) for v in b.tolist()],
            "score": round(float(s), 4),
            "class": info["classes"][int(c)],
            "category_id": info["category_ids"][int(c)],
        }
        for b, s, c in zip(
            det["boxes"][keep], det["scores"][keep], det["labels"][keep], strict=True
        )
    ]


def draw(image: torch.Tensor, found: list[dict[str, Any]], out: Path) -> None:
    """The uint8 image (3, H, W) with its detections drawn, saved as a PNG."""
    from PIL import Image

    boxes = torch.tensor([f["box_xyxy"] for f in found], dtype=torch.float32).reshape(-1, 4)
    labels = [f"{f['class']} {f['score']:.2f}" for f in found]
    drawn = draw_detections(image, boxes, labels, [f["category_id"] for f in found])
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out)  # torchvision.io's is deprecated


def summary_keys(final: dict[str, Any]) -> dict[str, Any]:
    """The headline keys of summary.json, from the last metrics row."""
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "ap_per_class")
    return {
        **{k: final[k] for k in keys},
        **{k: final[k] for k in ("val_map", "val_map_50") if k in final},
    }


# Train a detector (`freebies detect train`): train(recipe, overrides, out, *, resume=None,
# overwrite=False, progress=None) -> (summary, run folder); see engine.train.
train = partial(engine.train, "detect", build, "detect")


def headline(summary: dict[str, Any]) -> str:
    """The final figure of a run, for its last line."""
    m = summary["map"]  # None when the test set has no boxes
    return f"test map {m:.2f}%" if m is not None else "test map n/a (no boxes in the test set)"


def check_multiscale(
    *,
    pyramid: str | None = None,
    tiles: str | None = None,
    tile_size: int | None = None,
    auto_tiles: bool = False,
    snip: float | None = None,
    overlap: float | None = None,
    merge: str | None = None,
    merge_thr: float | None = None,
) -> dict[str, Any]:
    """The small-object options of `detect eval | predict`, checked before anything loads (one
    line UsageErrors) and parsed: pyramid factors "1,1.5,2" -> scales, a tile grid "RxC" ->
    grid, a tile size in input pixels or --auto-tiles, SNIP's size filter, the tiles' overlap
    (0.2 when not given) and the merge rule and threshold (0.5)."""
    from freebies.detection import multiscale as ms

    try:
        scales = [float(v) for v in pyramid.split(",")] if pyramid else []
    except ValueError:
        raise UsageError(f"--pyramid takes factors such as 1,1.5,2, got {pyramid!r}") from None
    try:
        ms.check_scales(scales)
    except ValueError as e:
        raise UsageError(str(e)) from None
    grid = None
    if tiles:
        rows, x, cols = tiles.lower().partition("x")
        if not (x and rows.isdigit() and cols.isdigit() and int(rows) * int(cols) > 0):
            raise UsageError(f"--tiles takes ROWSxCOLS such as 2x2, got {tiles!r}")
        grid = (int(rows), int(cols))
    if sum((grid is not None, tile_size is not None, auto_tiles)) > 1:
        raise UsageError("--tiles, --tile-size and --auto-tiles each choose the tiles; give one")
    if tile_size is not None and tile_size < 1:
        raise UsageError(f"--tile-size is a tile side in pixels >= 1, got {tile_size}")
    if merge is not None and merge not in ms.MERGES:
        raise UsageError(f"--merge is one of {', '.join(ms.MERGES)}, got {merge!r}")
    if snip is not None and not 0 < snip < float("inf"):
        raise UsageError(f"--snip is a box side in pixels > 0, got {snip}")
    tiled = bool(grid or tile_size or auto_tiles)
    for flag, given, needs in (
        ("--snip", snip, "filters the passes of --pyramid and the tiles"),
        ("--merge", merge, "joins the passes of --pyramid and the tiles"),
        ("--merge-thr", merge_thr, "is the threshold that joins the passes of --pyramid and tiles"),
    ):
        if given is not None and not (scales or tiled):
            raise UsageError(f"{flag} {needs}; give one of them (or drop {flag})")
    if overlap is not None and not tiled:
        raise UsageError(
            "--overlap is the tiles' overlap; give --tiles, --tile-size or --auto-tiles (or drop"
            " --overlap)"
        )
    if overlap is not None and not 0 <= overlap < 1:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")
    if merge_thr is not None and not 0 < merge_thr <= 1:
        raise UsageError(f"--merge-thr must be in (0, 1], got {merge_thr}")
    given = {"overlap": overlap, "snip": snip, "merge": merge, "merge_thr": merge_thr}
    return {
        "scales": scales,
        "grid": grid,
        "tile_size": tile_size,
        "auto_tiles": auto_tiles,
        "snip": snip,
        "overlap": 0.2 if overlap is None else overlap,
        "merge": merge,
        "merge_thr": 0.5 if merge_thr is None else merge_thr,
        "given": {f"--{k.replace('_', '-')}": v for k, v in given.items() if v is not None},
    }


def check_sliced(info: dict[str, Any], o: dict[str, Any]) -> None:
    """Refuse tiles (checked options `o`) on a slice-trained model, which always runs tiled at
    its trained scale, and pyramid factors below 1 (its whole-image pass is one already)."""
    if not info.get("slice"):
        return
    if o["grid"] or o["tile_size"] or o["auto_tiles"]:
        raise UsageError(
            f"this model was trained on {info['image_size']} px slices and is always run tiled "
            "at that scale; drop --tiles, --tile-size and --auto-tiles (--pyramid 1,1.5 adds "
            "tiles at 1.5x that scale)"
        )
    if any(f < 1 for f in o["scales"]):
        raise UsageError(
            f"--pyramid {','.join(f'{f:g}' for f in o['scales'])}: a slice-trained model already "
            "sees the whole image shrunk; give factors of 1 and above"
        )


def _sliced_multi(model: nn.Module, info: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    """`multiscale_infer` for a slice-trained model: tiles at the trained scale, tiles enlarged
    by the pyramid's factors above 1 when asked for, and the whole image shrunk."""
    check_sliced(info, o)
    size, scale = info["image_size"], info["slice"]["scale"]
    factors, snip, merge = o["scales"] or [1.0], o["snip"], o["merge"] or "ios"
    cut = f" (snip {snip:g} px)" if snip else ""
    what = [f"tiles of {size} px at {scale:g}x the image's own pixels"] if 1 in factors else []
    what += [f"tiles enlarged {f:g}x{cut}" for f in factors if f > 1]
    return {
        "infer": sliced_infer(model, size, o["overlap"], merge, factors, snip, o["merge_thr"]),
        "what": " + ".join([*what, "the whole image"]) + f", merge {merge} (the sliced "
        "training's scale)",
    }


def multiscale_infer(model: nn.Module, info: dict[str, Any], **options: Any) -> dict[str, Any]:
    """predict()'s `infer` for the small-object options (`check_multiscale`'s keywords), and
    its description; empty when they leave the single pass (see freebies.detection.multiscale).
    Options that would add nothing (--auto-tiles finding no tiling pays, one tile as large as
    the input, --pyramid 1) are dropped with a warning that names what went with them."""

    o, size = check_multiscale(**options), info["image_size"]
    sliced = info.get("slice")
    if sliced:
        return _sliced_multi(model, info, o)
    windows, why = _tiles(o, size, info.get("small_box_side"))
    scales = o["scales"]
    if not windows and scales == [1.0]:
        scales, why = [], why or "--pyramid 1 is the single pass"
    if why:
        unused = ["--overlap"] + ([] if scales else ["--snip", "--merge", "--merge-thr"])
        dropped = [f"{k} {v}" for k, v in o["given"].items() if k in unused]
        warn(
            f"{why}; {'the pyramid alone' if scales else 'one full pass'}"
            + (f" ({', '.join(dropped)} unused)" if dropped else "")
        )
    if not scales and not windows:
        return {}
    tile = (windows[0][2] - windows[0][0]) if windows else None
    what = (f"pyramid {scales}" if scales else "") + (
        f"{' + ' if scales else ''}{len(windows)} tiles of {tile} px + full pass, merge "
        f"{o['merge'] or 'ios'}"
        if windows
        else ""
    )
    grid = o["grid"] if windows and o["grid"] else None
    infer = native_infer(model, size, scales or [1.0], grid, None if grid else tile, o)
    return {"infer": infer, "what": what + ", cut from the images' own pixels"}


def native_infer(
    model: nn.Module,
    size: int,
    scales: list[float],
    grid: tuple[int, int] | None,
    tile: int | None,
    o: dict[str, Any],
) -> Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """predict()'s `infer` on images at their own resolution for a model trained on images
    letterboxed to `size`: a pyramid level p is the image at p x the letterbox factor, and a
    tile (a `grid`, or `tile` input pixels) is cut from the image's own pixels and resized so
    that its longer side is `size`, so tiling recovers the detail the letterbox threw away.
    `o`: check_multiscale's overlap, snip (input pixels), merge and threshold."""
    from freebies.detection import multiscale as ms

    def infer(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        h, w = x.shape[-2:]
        f = size / max(h, w)  # the letterbox factor: input pixels per pixel of the image
        windows = None
        if grid or tile:
            own = None if grid else max(1, round(tile / f))
            windows = ms.tile_windows(h, w, grid=grid, tile_size=own, overlap=o["overlap"])
        return ms.multiscale_detect(
            model,
            x,
            scales=[p * f for p in scales],
            windows=windows if windows and len(windows) > 1 else None,
            input_size=size,
            snip=o["snip"] / f if o["snip"] else None,
            merge=o["merge"],
            threshold=o["merge_thr"],
            detections=getattr(model, "detections_per_img", 100),
            base=f,
        )

    return infer


def _tiles(
    o: dict[str, Any], size: int, small_side: float | None
) -> tuple[list[tuple[int, int, int, int]] | None, str]:
    """The tile windows of checked options `o` on a `size` input, or None; and, when tiles
    were asked for but would add nothing, why."""
    from freebies.detection import multiscale as ms

    tile_size = o["tile_size"]
    if o["auto_tiles"]:
        tile_size = ms.auto_tile_size(small_side, size, size)
        if tile_size is None:
            return None, (
                "--auto-tiles: no tiling pays here (no small training boxes, or tiles as large"
                " as the image)"
            )
    if not (o["grid"] or tile_size):
        return None, ""
    try:
        windows = ms.tile_windows(
            size, size, grid=o["grid"], tile_size=tile_size, overlap=o["overlap"]
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if len(windows) > 1:
        return windows, ""
    flag = f"--tiles {o['grid'][0]}x{o['grid'][1]}" if o["grid"] else f"--tile-size {tile_size}"
    return None, f"{flag} is one tile as large as the {size} px input: no tiles"


def evaluate_checkpoint(
    path: Path,
    spec: str | None = None,
    *,
    limit: int | None = None,
    device: str = "auto",
    multiscale: dict[str, Any] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """`freebies detect eval`: COCO AP of a checkpoint on the test split of the data it was
    trained on (or `spec`'s; `split="val"`: its validation split, as training made it, for
    choosing inference options); with `multiscale` options (`multiscale_infer`), also the
    single pass's figures and the cost ratio."""
    kw = dict(limit=limit, device=device, split=split)
    return evaluate_options(path, {"": multiscale or {}}, spec, **kw)[""]


def evaluate_options(
    path: Path,
    options: dict[str, dict[str, Any]],
    spec: str | None = None,
    *,
    limit: int | None = None,
    device: str = "auto",
    split: str = "test",
) -> dict[str, dict[str, Any]]:
    """`evaluate_checkpoint` for several sets of `multiscale` options, by name: the data are
    loaded once (and once at their own resolution) and the single pass runs once, so every
    option's cost is against the same single pass."""
    if not options:
        raise UsageError("evaluate_options needs at least one set of options ({} is one pass)")
    checked = [check_multiscale(**o) for o in options.values()]  # a mistyped option costs no load
    ckpt = checkpoint.load(path, "detect")
    for o in checked:
        check_sliced(ckpt.data, o)  # before the data load
    cfg = config.from_dict(ckpt.config, "detect")
    if split not in ("test", "val"):
        raise UsageError(f"split must be test or val, got {split!r}")
    if split == "test":  # else the training's own split rule makes the same validation set
        cfg.data.val_split, cfg.data.limit_train, cfg.data.limit_test = 0.0, None, limit
    elif limit is not None:
        cfg.data.limit_test = limit
    cfg.data.image_size = ckpt.data["image_size"]
    cfg.data.rect = ckpt.data.get("rect", False)
    if spec is not None:
        cfg.data.spec = spec
    data = load_data(cfg)
    part = getattr(data, split)
    if part is None:
        raise UsageError(f"{cfg.data.spec} has no validation split here; use --split test")
    if data.classes != ckpt.data["classes"]:
        raise UsageError(
            f"{cfg.data.spec} has classes {data.classes}, the model predicts "
            f"{ckpt.data['classes']}; evaluate on data with the same classes"
        )
    model = load_detector(ckpt).to(pick_device(device))
    info = dict(ckpt.data)  # checkpoints from before --auto-tiles: the data's training boxes
    info.setdefault("small_box_side", small_box_side(data.train.boxes))
    kw = dict(batch_size=cfg.train.eval_batch_size, progress=sys.stderr.isatty())
    single = evaluate_split(model, part, data.classes, data.category_ids, **kw)
    own, out = None, {}
    for name, given in options.items():
        multi = multiscale_infer(model, info, **given)
        if not multi:
            out[name] = dict(single)
            continue
        if own is None:  # a slice-trained model's data are at its scale; the others' letterboxed
            own = part if ckpt.data.get("slice") else getattr(load_data(cfg, native=True), split)
        result = evaluate_split(
            model, own, data.classes, data.category_ids, infer=multi["infer"], **kw
        )
        out[name] = result | {
            "inference": multi["what"],
            "cost_vs_single": single["img_per_s"] / result["img_per_s"],
            "single": {k: single[k] for k in ("map", "map_50", "map_small", "img_per_s")},
        }
    return out


def predict_files(
    path: Path,
    inputs: list[str],
    out: Path,
    *,
    score_thr: float = 0.3,
    device: str = "auto",
    multiscale: dict[str, Any] | None = None,
    save_json: bool = False,
) -> list[Path]:
    """`freebies detect predict`: for every image named by `inputs` (files, folders, globs),
    its detections drawn (PNG) and listed (JSON) in folder `out` under its path relative to
    the inputs' common folder; with `save_json`, also all of them in COCO's results format
    (out/predictions.json). Nothing is created when the command is refused. Returns the
    images."""
    if not 0 <= score_thr < 1:
        raise UsageError(f"--score-thr must be in [0, 1), got {score_thr}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; give a folder for the PNG and JSON outputs")
    check_multiscale(**(multiscale or {}))
    images = image_paths(inputs)
    ckpt = checkpoint.load(path, "detect")
    model = load_detector(ckpt).to(pick_device(device))
    multi = multiscale_infer(model, ckpt.data, **(multiscale or {}))
    if ckpt.data.get("slice"):
        print(f"freebies: a slice-trained model, run as it was trained: {multi['what']}")
    results, quiet = [], len(images) < 2 or not sys.stderr.isatty()
    named = zip(tqdm(images, unit="image", disable=quiet), output_stems(images), strict=True)
    for i, (image, name) in enumerate(named):
        png, js = out / f"{name}.png", out / f"{name}.json"
        pixels = decode(image)
        found = predict_image(model, pixels, ckpt.data, score_thr, infer=multi.get("infer"))
        png.parent.mkdir(parents=True, exist_ok=True)
        draw(pixels, found, png)
        doc = {"image": str(image), "detections": found}
        write_text(js, json.dumps(doc, indent=1) + "\n")
        results += [coco_result(i, image, f) for f in found]
        tqdm.write(f"{image}: {len(found)} boxes -> {png}")
    if save_json:
        write_text(out / "predictions.json", json.dumps(results) + "\n")
        print(f"wrote {out / 'predictions.json'} ({len(results)} detections, COCO results)")
    return images


def coco_result(image_id: int, image: Path, found: dict[str, Any]) -> dict[str, Any]:
    """One detection in COCO's results format (bbox [x, y, w, h]); image_id is the image's
    position in the run, and file_name says which file it is."""
    x1, y1, x2, y2 = found["box_xyxy"]
    box = [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]
    return {
        "image_id": image_id,
        "file_name": str(image),
        "category_id": found["category_id"],
        "bbox": box,
        "score": found["score"],
    }


def export_checkpoint(
    path: Path, output: Path, *, spec: str | None = None, samples: int = 4, overwrite: bool = False
) -> tuple[float, float]:
    """`freebies detect export`: the detector of a checkpoint as an ONNX graph
    (`freebies.detection.export`), checked before it is kept on the first `samples` test
    images of its data (or `spec`'s): onnxruntime's raw outputs against PyTorch's, and the
    detections that the reference post-processing makes of them against the eager detector's
    (reported, not required: an untrained detector's near-tied scores swap at the top-k
    edge). Returns (largest raw difference, share of the eager detections found)."""
    from freebies.deploy import onnx_runner
    from freebies.detection.export import export_onnx, matched_share, postprocess

    if output.suffix != ".onnx":
        raise UsageError(f"-o {output}: give a file name ending in .onnx")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists; pass --overwrite or choose another -o")
    run = onnx_runner()
    ckpt = checkpoint.load(path, "detect")
    model, size = load_detector(ckpt), ckpt.data["image_size"]
    cfg = config.from_dict(ckpt.config, "detect")
    cfg.data.val_split, cfg.data.limit_train, cfg.data.limit_test = 0.0, 1, samples
    cfg.data.image_size, cfg.data.spec = size, spec or cfg.data.spec
    cfg.data.rect, cfg.data.stream = False, False  # the graph takes size x size inputs
    x = load_data(cfg).test.images[:samples].float() / 255
    output.parent.mkdir(parents=True, exist_ok=True)
    dense = export_onnx(model, size, output)
    got = [torch.from_numpy(a) for a in run(output, {"images": x.numpy()})]
    with torch.no_grad():
        raw = max(float((a - b).abs().max()) for a, b in zip(got, dense(x), strict=True))
        share = matched_share(model(list(x)), postprocess(model, got, dense.level_sizes, size))
    if not raw <= 1e-3:  # detections may swap near-tied scores at the top-k edge: reported
        output.unlink()
        raise UsageError(f"the ONNX graph's outputs differ from the model's by {raw:.3g}")
    return raw, share


def make_data(out: Path | None = None, seed: int | None = None, **counts: int | None) -> Path:
    """`freebies detect make-data`: write the Fashion scenes set (COCO format) to `out`, with
    `train` / `val` / `test` scenes and `seed` when given; without `out`, the default set
    where `detect train` (data.spec=scenes) reads it."""
    from freebies.data.scenes import ensure_scenes

    counts = {k: n for k, n in counts.items() if n is not None}
    if any(n < 1 for n in counts.values()):
        raise UsageError("--train, --val and --test must be >= 1")
    if out is None and (counts or seed is not None):
        raise UsageError(
            "--train, --val, --test and --seed make another set than the default one `detect"
            " train` reads; give --out DIR too, then train with --data coco:DIR"
        )
    kw = {f"n_{k}": n for k, n in counts.items()}
    return ensure_scenes(out, **kw, **({} if seed is None else {"seed": seed}))
