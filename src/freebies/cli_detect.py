"""`freebies detect`: train | eval | predict | make-data, for object detectors.

`detect train` shares every flag, the run folder and the engine with `freebies train`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freebies.errors import UsageError

DATA_HELP = (
    "scenes (default: Fashion scenes, made on first use), coco:DIR (instances_{train,val,test}"
    "*.json), coco:TRAIN.json,TEST.json, voc:DIR (Annotations/, JPEGImages/, ImageSets/Main/), "
    "or yolo:DIR (images/ + labels/, or .txt beside each image; names from a data YAML or "
    ".names file)"
)


def add_detect(sub: Any, add_train: Callable[..., None]) -> None:
    """The `detect` command group."""
    d = sub.add_parser("detect", help="object detection: train | eval | predict | make-data")
    dsub = d.add_subparsers(dest="detect_command", required=True)
    add_train(dsub, "a detector", "detect", DATA_HELP, "fcos_mobilenet_v3_small, fcos_resnet18")

    e = dsub.add_parser("eval", help="COCO AP of a checkpoint; prints one JSON line")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data", help=DATA_HELP + " (default: the data it was trained on)")
    e.add_argument("--limit-test", type=int, metavar="N")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    p = dsub.add_parser("predict", help="draw a checkpoint's detections on images")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for PNGs and JSON")
    p.add_argument("--score-thr", type=float, default=0.3, help="draw boxes above this score")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    m = dsub.add_parser("make-data", help="write the Fashion scenes dataset (COCO format)")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--train", type=int, default=None, help="training scenes")
    m.add_argument("--val", type=int, default=None, help="validation scenes")
    m.add_argument("--test", type=int, default=None, help="test scenes")
    m.add_argument("--seed", type=int, default=0)


def _eval(args: argparse.Namespace) -> None:
    from freebies import checkpoint, config, detect
    from freebies.distributed import pick_device

    ckpt = checkpoint.load(args.checkpoint, "detect")
    cfg = config.from_dict(ckpt.config)
    cfg.data.val_split, cfg.data.limit_train, cfg.data.limit_test = 0.0, None, args.limit_test
    cfg.data.image_size = ckpt.data["image_size"]
    if args.data is not None:
        cfg.data.spec = args.data
    data = detect.load_data(cfg)
    if data.classes != ckpt.data["classes"]:
        raise UsageError(
            f"{cfg.data.spec} has classes {data.classes}, the model predicts "
            f"{ckpt.data['classes']}; evaluate on data with the same classes"
        )
    model = detect.load_detector(ckpt).to(pick_device(args.device))
    result = detect.evaluate_split(
        model, data.test, data.classes, data.category_ids, batch_size=cfg.train.eval_batch_size
    )
    print(json.dumps(result))


def _predict(args: argparse.Namespace) -> None:
    from freebies import checkpoint, detect
    from freebies.distributed import pick_device

    if not 0 <= args.score_thr < 1:
        raise UsageError(f"--score-thr must be in [0, 1), got {args.score_thr}")
    ckpt = checkpoint.load(args.checkpoint, "detect")
    model = detect.load_detector(ckpt).to(pick_device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        found = detect.predict_image(model, path, ckpt.data, args.score_thr)
        png, js = args.out / f"{path.stem}.png", args.out / f"{path.stem}.json"
        detect.draw(path, found, png)
        js.write_text(json.dumps({"image": str(path), "detections": found}, indent=1) + "\n")
        print(f"{path}: {len(found)} boxes -> {png}")


def _make_data(args: argparse.Namespace) -> None:
    from freebies.detection.scenes import make_scenes

    counts = {k: getattr(args, k) for k in ("train", "val", "test") if getattr(args, k) is not None}
    if any(n < 1 for n in counts.values()):
        raise UsageError("--train, --val and --test must be >= 1")
    kw = {f"n_{k}": n for k, n in counts.items()}
    out = make_scenes(args.out, seed=args.seed, **kw)
    print(f"Fashion scenes in {out}; train with: freebies detect train --data coco:{out}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "eval": _eval,
    "predict": _predict,
    "make-data": _make_data,
}
