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
    _add_multiscale(e)

    p = dsub.add_parser("predict", help="draw a checkpoint's detections on images")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for PNGs and JSON")
    p.add_argument("--score-thr", type=float, default=0.3, help="draw boxes above this score")
    _add_multiscale(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    m = dsub.add_parser("make-data", help="write the Fashion scenes dataset (COCO format)")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--train", type=int, default=None, help="training scenes")
    m.add_argument("--val", type=int, default=None, help="validation scenes")
    m.add_argument("--test", type=int, default=None, help="test scenes")
    m.add_argument("--seed", type=int, default=0)


def _add_multiscale(p: argparse.ArgumentParser) -> None:
    """Small-object inference options (see freebies.detection.multiscale)."""
    g = p.add_argument_group("small objects: image pyramid and tiles")
    g.add_argument("--pyramid", metavar="F,F,...", help="resize factors, e.g. 1,1.5,2")
    g.add_argument(
        "--snip",
        type=float,
        metavar="PX",
        help="passes above scale 1 and tiles keep only boxes smaller than PX (input pixels), "
        "passes below 1 only larger ones",
    )
    tiles = g.add_mutually_exclusive_group()
    tiles.add_argument("--tiles", metavar="RxC", help="a grid of tiles, e.g. 2x2, plus a full pass")
    tiles.add_argument("--tile-size", type=int, metavar="PX", help="square tiles of PX pixels")
    tiles.add_argument(
        "--auto-tiles",
        action="store_true",
        help="tiles sized so the median small training object reaches 32 input pixels",
    )
    g.add_argument("--overlap", type=float, default=0.2, help="tile overlap share (0.2)")
    g.add_argument(
        "--merge",
        choices=["ios", "nms"],
        help="ios: join boxes by intersection over the smaller (default with tiles); nms: "
        "IoU suppression (default for the pyramid alone)",
    )
    g.add_argument("--merge-thr", type=float, default=0.5, help="IoS / IoU threshold (0.5)")


def _multiscale(args: argparse.Namespace, model: Any, info: dict[str, Any]) -> dict[str, Any]:
    """predict()'s `infer` for the options given (empty when none), and its description."""
    from freebies.detection import multiscale as ms

    size = info["image_size"]
    try:
        scales = [float(v) for v in args.pyramid.split(",")] if args.pyramid else []
    except ValueError:
        raise UsageError(f"--pyramid takes factors such as 1,1.5,2, got {args.pyramid!r}") from None
    tile_size, grid = args.tile_size, None
    if args.tiles:
        rows, x, cols = args.tiles.lower().partition("x")
        if not (x and rows.isdigit() and cols.isdigit()):
            raise UsageError(f"--tiles takes ROWSxCOLS such as 2x2, got {args.tiles!r}")
        grid = (int(rows), int(cols))
    if args.auto_tiles:
        tile_size = ms.auto_tile_size(info.get("small_box_side"), size, size)
        if tile_size is None:
            print("freebies: note: --auto-tiles: no tiling pays here (no small training boxes, "
                  "or tiles as large as the image); one full pass")  # fmt: skip
    if args.snip is not None and not (scales or grid or tile_size):
        raise UsageError("--snip filters the passes of --pyramid and the tiles; give one of them")
    try:
        windows = None
        if grid or tile_size:
            windows = ms.tile_windows(
                size, size, grid=grid, tile_size=tile_size, overlap=args.overlap
            )
        ms.check_scales(scales)
        if not (0 < args.merge_thr <= 1):
            raise ValueError(f"--merge-thr must be in (0, 1], got {args.merge_thr}")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not scales and not windows:
        return {}
    kw = dict(scales=scales or [1.0], windows=windows, input_size=size, snip=args.snip,
              merge=args.merge, threshold=args.merge_thr,
              detections=getattr(model, "detections_per_img", 100))  # fmt: skip
    what = (f"pyramid {scales}" if scales else "") + (
        f"{' + ' if scales else ''}{len(windows)} tiles of {windows[0][2] - windows[0][0]} px "
        f"+ full pass, merge {args.merge or 'ios'}"
        if windows
        else ""
    )
    return {"infer": lambda x: ms.multiscale_detect(model, x, **kw), "what": what}


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
    from freebies.detection.multiscale import small_box_side

    info = dict(ckpt.data)  # checkpoints from before --auto-tiles: the data's training boxes
    info.setdefault("small_box_side", small_box_side(data.train.boxes))
    multi = _multiscale(args, model, info)
    kw = dict(batch_size=cfg.train.eval_batch_size)
    result = detect.evaluate_split(model, data.test, data.classes, data.category_ids, **kw)
    if multi:
        single = result
        result = detect.evaluate_split(
            model, data.test, data.classes, data.category_ids, infer=multi["infer"], **kw
        )
        result |= {
            "inference": multi["what"],
            "cost_vs_single": single["img_per_s"] / result["img_per_s"],
            "single": {k: single[k] for k in ("map", "map_50", "map_small", "img_per_s")},
        }
    print(json.dumps(result))


def _predict(args: argparse.Namespace) -> None:
    from freebies import checkpoint, detect
    from freebies.distributed import pick_device

    if not 0 <= args.score_thr < 1:
        raise UsageError(f"--score-thr must be in [0, 1), got {args.score_thr}")
    ckpt = checkpoint.load(args.checkpoint, "detect")
    model = detect.load_detector(ckpt).to(pick_device(args.device))
    multi = _multiscale(args, model, ckpt.data)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        found = detect.predict_image(
            model, path, ckpt.data, args.score_thr, infer=multi.get("infer")
        )
        png, js = args.out / f"{path.stem}.png", args.out / f"{path.stem}.json"
        detect.draw(path, found, png)
        js.write_text(json.dumps({"image": str(path), "detections": found}, indent=1) + "\n")
        print(f"{path}: {len(found)} boxes -> {png}")


def _make_data(args: argparse.Namespace) -> None:
    from freebies.data.scenes import make_scenes

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
