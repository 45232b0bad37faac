"""Object detection on the run engine: `build` makes the task, `detect_step` is its step.

The step, in order: box-aware augmentation -> forward (FCOS: classification, box and
centre-ness losses) -> backward and optimizer step -> LR schedule step and EMA. Evaluation is
COCO AP by a maintained evaluator, on boxes mapped back to each image's original pixels. The
run folder, checkpoints, resume and Ctrl-C belong to `freebies.engine`, as for classification.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from freebies import config, engine
from freebies.build import (
    base_lr,
    make_lookahead,
    make_optimizer,
    make_scheduler,
    recipe_errors,
)
from freebies.config import Config, DetCfg
from freebies.data.detection import (
    DetData,
    DetSplit,
    letterboxed_split,
    load_detection,
    to_original,
)
from freebies.data.io import decode
from freebies.data.loader import channel_stats, eval_batches, train_batches
from freebies.deploy import count_macs
from freebies.detection.coco import coco_metrics
from freebies.detection.mixup import mix_detection
from freebies.detection.model import BACKBONES, build_detector
from freebies.detection.multiscale import native_size, small_box_side
from freebies.detection.transforms import crop_boxes, expand_boxes, hflip_boxes, resize_boxes
from freebies.distributed import Dist
from freebies.errors import UsageError, nearest
from freebies.runtime import autocast_for
from freebies.tricks import ema_model
from freebies.tricks.photometric import color_jitter

MODELS = tuple(f"fcos_{b}" for b in BACKBONES)
# Classification settings a detection run does not use (yet), at their "off" values.
CLASSIFICATION_ONLY = {
    "aug.crop_padding": 0,
    "aug.hflip": False,  # detection flips with det.hflip, boxes and all
    "aug.vflip": False,
    "aug.flip_mode": "random",
    "aug.rotate": 0.0,
    "aug.color_jitter": 0.0,
    "aug.pca_lighting": 0.0,
    "aug.autoaugment": "none",
    "aug.cutout": 0,
    "aug.random_erasing": 0.0,
    "aug.mixup": 0.0,
    "aug.cutmix": 0.0,
    "aug.ricap": 0.0,
    "model.acnet": False,
    "model.dropout": 0.0,
    "model.zero_init_residual": False,
    "model.init": "kaiming",
    "loss.label_smoothing": 0.0,
    "distill.teacher": None,
    "train.tta": False,
    "train.precision": ("auto", "fp32", "bf16"),  # fp64 is classification's exactness check
    "model.norm": "bn",
}
IMAGE_SIZE = 416  # letterbox size when the recipe sets no data.image_size


@dataclass
class DetStep:
    """Everything the detection step reads; `build` makes it once per run."""

    cfg: Config
    net: nn.Module  # the unwrapped detector (the EMA averages it)
    model: nn.Module  # what runs forward: `net`, or its DDP / compiled wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # this rank's augmentation stream
    boxes: list[torch.Tensor]  # training boxes per image, xyxy letterboxed pixels, on device
    labels: list[torch.Tensor]  # training labels per image, on device
    steps_per_epoch: int
    fill: list[float]  # the expand canvas: the training set's channel means, pixel units
    ema: Any = None
    lookahead: Any = None  # (optimizer, step) -> None, when optim.lookahead_every > 0
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)


def detect_step(s: DetStep, batch: tuple[torch.Tensor, ...], epoch: int, step: int) -> torch.Tensor:
    """One training step on batch (indices (N,), uint8 images (N, 3, S, S), indices (N,)).

    Returns the detached loss: classification (sigmoid focal) + box (GIoU) + centre-ness, each
    normalised by the global batch's foreground locations (their weights under mixup).
    """
    idx, xb, _ = batch
    ids = idx.tolist()
    boxes, labels = [s.boxes[i] for i in ids], [s.labels[i] for i in ids]
    # 1. box-aware augmentation and random shapes (float pixels, batched, per-image draws)
    x, targets = augment(s, xb.float(), boxes, labels, epoch)
    size = random_shape(s.cfg.det, s.cfg.train.seed, epoch * s.steps_per_epoch + step)
    if size is not None:
        x, scaled = resize_boxes(x, [t["boxes"] for t in targets], size)
        targets = [{**t, "boxes": b} for t, b in zip(targets, scaled, strict=True)]
    # 2. forward and loss: the detector normalises, batches and matches locations to boxes
    images = list((x / 255).unbind(0))
    with s.autocast, native_size(s.net, size, size) if size else contextlib.nullcontext():
        losses = s.model(images, targets)
    loss = sum(v.float() for v in losses.values())
    # 3. backward, optimizer step, LR schedule step, lookahead, EMA
    engine.update(loss, s.opt, s.sched, s.ema, s.net, s.lookahead)
    return loss.detach()


def augment(
    s: DetStep, x: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor], epoch: int
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The recipe's detection tricks in GluonCV's order (Zhang et al. 2019): mixup, colour
    jitter, expand, crop, flip. x: float pixels (N, C, S, S). Returns the images and the
    detector's targets; "weights" (per box) only under mixup."""
    det, g = s.cfg.det, s.gen
    weights = None
    if det.mixup > 0 and epoch < s.cfg.train.epochs - det.mixup_off_epochs:
        x, boxes, labels, weights = mix_detection(x, boxes, labels, det.mixup, g)
    if det.color_jitter:
        x = color_jitter(x, det.jitter_strength, g)
    if det.expand:
        x, boxes = expand_boxes(x, boxes, g, max_ratio=det.expand_ratio, fill=s.fill)
    if det.crop:
        x, boxes, keeps = crop_boxes(x, boxes, g, min_scale=det.crop_min_scale)
        labels = [lab[k] for lab, k in zip(labels, keeps, strict=True)]
        if weights is not None:
            weights = [w[k] for w, k in zip(weights, keeps, strict=True)]
    if det.hflip:
        x, boxes = hflip_boxes(x, boxes, g)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    if weights is not None:
        for t, w in zip(targets, weights, strict=True):
            t["weights"] = w
    return x, targets


def random_shape(det: DetCfg, seed: int, step: int) -> int | None:
    """Random shapes (YOLOv3; Zhang et al. 2019, section 3.5): the training size for global
    `step`, drawn from det.random_shapes every det.random_shapes_every steps. Every rank and a
    resumed run draw the same size: it depends only on the seed and the step."""
    if not det.random_shapes:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + step // det.random_shapes_every)
    return det.random_shapes[int(torch.randint(len(det.random_shapes), (), generator=g))]


def check_settings(cfg: Config) -> None:
    """Refuse classification-only settings: detection would train without them, and an
    ablation of one would compare the baseline with itself."""
    flat = config.flatten(config.to_dict(cfg))
    on = [
        k
        for k, off in CLASSIFICATION_ONLY.items()
        if (flat[k] not in off if isinstance(off, tuple) else flat[k] != off)
    ]
    if on:
        fix = " ".join(f"{k}={CLASSIFICATION_ONLY[k]}" for k in on if k != "train.precision")
        raise UsageError(
            f"{', '.join(on)}: classification settings that detection does not use; set "
            + (fix or "train.precision=auto")
        )


def make_detector(cfg: Config, data_info: dict[str, Any]) -> nn.Module:
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


def load_data(cfg: Config) -> DetData:
    """The recipe's detection data, letterboxed to data.image_size; prints its cleaning note.
    `scenes` is the default Fashion scenes set, made on first use."""
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
        image_size=cfg.data.image_size or IMAGE_SIZE,
        val_split=cfg.data.val_split,
        test_split=cfg.data.test_split,
        split_seed=cfg.data.split_seed,
        limit_train=cfg.data.limit_train,
        limit_test=cfg.data.limit_test,
    )
    for note in data.notes:
        print(f"freebies: warning: {note}", file=sys.stderr, flush=True)
    return data


def check_training(cfg: Config, data: DetData) -> None:
    """What training needs of the data: a full batch, and a validation set to stop early on."""
    if cfg.train.batch_size > len(data.train):
        raise UsageError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({len(data.train)} images); lower --batch-size"
        )
    engine.check_early_stop(cfg.train.early_stop_patience, data.val is not None)


def data_info(data: DetData, image_size: int) -> dict[str, Any]:
    """What a detection checkpoint records about its data."""
    mean, std = channel_stats(data.train.images[:512])  # float64, pixel units
    return {
        "fingerprint": data.fingerprint,
        "classes": data.classes,
        "category_ids": data.category_ids,
        "image_size": image_size,
        "mean": (mean / 255).tolist(),
        "std": (std / 255).clamp(min=1e-3).tolist(),
        "split_rule": data.split_rule,
        "small_box_side": small_box_side(data.train.boxes),  # for --auto-tiles
    }


def build(cfg: Config, d: Dist, recorded_precision: list[str] | None = None) -> engine.Task:
    """The detection task for the engine."""
    check_settings(cfg)
    data, dev = load_data(cfg), d.device
    check_training(cfg, data)
    info = data_info(data, cfg.data.image_size or IMAGE_SIZE)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    net = make_detector(cfg, info).to(dev)
    if cfg.train.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    batch, steps_per_epoch, lr = (
        cfg.train.batch_size,
        len(data.train) // cfg.train.batch_size,
        base_lr(cfg),
    )
    opt = make_optimizer(net, cfg, lr)
    train_x = data.train.images.to(dev)
    precision = engine.decide_precision(cfg, d, recorded_precision)
    s = DetStep(
        cfg=cfg,
        net=net,
        model=net,
        opt=opt,
        sched=make_scheduler(opt, cfg, lr, steps_per_epoch),
        lookahead=make_lookahead(cfg, steps_per_epoch),
        gen=torch.Generator(dev).manual_seed(cfg.train.seed + 1_000_003 * d.rank),
        boxes=[b.to(dev) for b in data.train.boxes],
        labels=[lab.to(dev) for lab in data.train.labels],
        steps_per_epoch=steps_per_epoch,
        fill=[255 * m for m in info["mean"]],
        autocast=autocast_for(precision[0], dev),
    )
    torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank + 1)
    s.ema = ema_model(net, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.decay else None
    s.model = engine.wrap(net, d, cfg.train.compile)
    size = info["image_size"]
    return engine.Task(
        name="detect",
        net=net,
        opt=opt,
        sched=s.sched,
        ema=s.ema,
        gen=s.gen,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch,
        batches=lambda epoch, first: train_batches(
            train_x,
            torch.arange(len(train_x), device=dev),
            batch,
            seed=cfg.train.seed,
            epoch=epoch,
            rank=d.rank,
            world=d.world,
            start_step=first,
        ),
        step=lambda b, epoch, i: detect_step(s, b, epoch, i),
        evaluate=lambda final: eval_row(s, data, d),
        summary=summary_keys,
        infer_macs=lambda: count_macs(net.eval(), torch.zeros(1, 3, size, size, device=dev)),
        data=info,
        precision=precision,
        shown=("map", "val_map"),
        select="val_map",
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
) -> list[dict[str, torch.Tensor]]:
    """Detections on this rank's shard of `split`, in each image's original pixels (CPU).

    `infer` maps a float batch (N, 3, S, S) in [0, 1] to the detections in its pixels
    (e.g. `freebies.detection.multiscale.multiscale_detect`); default: one plain pass.
    Returns one {"index", "boxes" (n, 4) xyxy, "scores", "labels"} per image of the shard.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    idx = torch.arange(len(split))
    out = []
    for xb, ib in eval_batches(split.images, idx, batch_size, rank=rank, world=world):
        x = xb.to(dev).float() / 255
        with autocast or contextlib.nullcontext():
            dets = infer(x) if infer is not None else model(list(x.unbind(0)))
        out += [in_original(det, split, i) for i, det in zip(ib.tolist(), dets, strict=True)]
    model.train(was_training)
    return out


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
    metrics = coco_metrics(
        preds, split.orig_boxes, split.labels, split.sizes, data_classes, category_ids
    )
    return {**metrics, "img_per_s": len(split) / max(seconds, 1e-9)}


def eval_row(s: DetStep, data: DetData, d: Dist) -> dict[str, Any]:
    """Test (and validation) COCO metrics for a metrics row; the EMA weights when EMA is on."""
    model = s.ema.module if s.ema is not None else s.net
    kw = dict(
        batch_size=s.cfg.train.eval_batch_size, autocast=s.autocast, rank=d.rank, world=d.world
    )
    row = {}
    if data.val is not None:
        val = evaluate_split(model, data.val, data.classes, data.category_ids, **kw)
        row.update(val_map=val["map"], val_map_50=val["map_50"])
    test = evaluate_split(model, data.test, data.classes, data.category_ids, **kw)
    return {**row, **{k: v for k, v in test.items() if k != "img_per_s"}}


def load_detector(ckpt: Any) -> nn.Module:
    """The detector of a detection checkpoint, its EMA weights when it has them, eval mode."""
    cfg = config.from_dict(ckpt.config)
    cfg.model.backbone_weights = None  # the checkpoint holds every weight
    model = make_detector(cfg, ckpt.data)
    state = ckpt.model
    if ckpt.ema is not None:
        state = {k.removeprefix("module."): v for k, v in ckpt.ema.items() if k != "n_averaged"}
    model.load_state_dict(state)
    return model.eval()


def predict_image(
    model: nn.Module, path: Path, info: dict[str, Any], score_thr: float, **kw: Any
) -> list[dict[str, Any]]:
    """Detections above `score_thr` on one image file, in its own pixels, with class names."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(path) as im:
            image = pil_to_tensor(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"cannot read image {path} ({type(e).__name__}); check the file") from None
    split = letterboxed_split(image, info["image_size"])
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


def draw(path: Path, found: list[dict[str, Any]], out: Path) -> None:
    """The image with its boxes, class names and scores drawn on it, as a PNG."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    image = decode(path)  # uint8 (3, H, W)
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]
    if found:  # draw_bounding_boxes warns on an empty set
        image = draw_bounding_boxes(
            image,
            torch.tensor([f["box_xyxy"] for f in found], dtype=torch.float32),
            labels=[f"{f['class']} {f['score']:.2f}" for f in found],
            colors=[palette[f["category_id"] % len(palette)] for f in found],
            width=2,
        )
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(out)  # torchvision.io's is deprecated


def summary_keys(final: dict[str, Any]) -> dict[str, Any]:
    """The headline keys of summary.json, from the last metrics row."""
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "ap_per_class")
    return {
        **{k: final[k] for k in keys},
        **{k: final[k] for k in ("val_map", "val_map_50") if k in final},
    }
