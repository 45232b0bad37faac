"""The `freebies` command: train | eval | fuse | detect {train,eval,predict,export,make-data}
| ablate | report | tricks | schedule | bench.

The CLI parses flags and dispatches: each task module (`freebies.classify`, `freebies.detect`)
holds its train, eval and predict entry points. Mistakes a person can fix end in one line on
stderr and exit code 2; Ctrl-C saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from freebies import __version__, config
from freebies.errors import UsageError

DATA_HELP = (
    "fashion-mnist[:DIR] (default; DIR holds the four IDX .gz files, else standard places are "
    "searched), mnist[:DIR], cifar10:DIR, cifar100:DIR (python pickle batches), or folder:DIR "
    "(train/ and test/ or val/, one subfolder per class)"
)
DETECT_DATA_HELP = (
    "scenes (default: Fashion scenes, made on first use), coco:DIR (instances_{train,val,test}"
    "*.json), coco:TRAIN.json,TEST.json, voc:DIR (Annotations/, JPEGImages/, ImageSets/Main/), "
    "or yolo:DIR (images/ + labels/, or .txt beside each image; names from a data YAML or "
    ".names file)"
)
MULTISCALE_FLAGS = (
    "pyramid",
    "tiles",
    "tile_size",
    "auto_tiles",
    "snip",
    "overlap",
    "merge",
    "merge_thr",
)

# CLI flag -> recipe key; these are shorthands for --set.
FLAG_KEYS = {
    "data": "data.spec",
    "model": "model.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "compile": "train.compile",
    "limit_train": "data.limit_train",
    "limit_test": "data.limit_test",
}


def _add_train(
    sub: Any,
    what: str = "a classifier",
    recipe: str = "default",
    data_help: str = DATA_HELP,
    models: str = "resnet20, preact_resnet18, wrn-16-4",
) -> None:
    """`freebies train` (and `freebies detect train`: the same flags, run folder and engine)."""
    t = sub.add_parser("train", help=f"train {what} from a recipe")
    t.add_argument("--recipe", default=None, help=f"recipe name or PATH.yaml (default: {recipe})")
    t.add_argument("--data", help=data_help)
    t.add_argument("--model", help=f"model name, e.g. {models}")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="global batch (split across torchrun ranks)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--out", type=Path, help="run folder (default: runs/RECIPE-MODEL-seedN)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", type=Path, metavar="DIR", help="continue an earlier run")
    t.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    t.add_argument("--limit-train", type=int, metavar="N", help="train on the first N images")
    t.add_argument("--limit-test", type=int, metavar="N", help="test on the first N images")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set optim.lr=0.2 (repeatable)",
    )


def _add_ablate(sub: Any) -> None:
    """`freebies ablate`."""
    a = sub.add_parser("ablate", help="train the baseline and each trick on the same seeds")
    a.add_argument(
        "--task",
        choices=["classify", "detect"],
        default="classify",
        help="detect: the detection trainer, recipe `detect` and --metric map by default",
    )
    a.add_argument("--recipe", default=None, help="the baseline recipe (default: the task's)")
    a.add_argument(
        "--tricks",
        required=True,
        help="comma-separated trick names from `freebies tricks`; name=key=value replaces a "
        "trick's documented setting",
    )
    a.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    a.add_argument(
        "--mode",
        choices=["single", "cumulative", "both", "stack"],
        default="single",
        help="single: each trick alone; cumulative: added one by one; both; stack: each alone "
        "and all at once",
    )
    a.add_argument(
        "--also",
        default="",
        metavar="TRICKS",
        help="more variants, as in --tricks, each run alone against the baseline but never "
        "stacked or bagged (e.g. a second setting of a trick); appending some to a finished "
        "grid's command trains only theirs",
    )
    a.add_argument(
        "--bag",
        action="store_true",
        help="then stack every trick that beat the baseline on the metric's validation "
        "counterpart, test_X -> val_X (needs data.val_split)",
    )
    a.add_argument(
        "--metric",
        default=None,
        metavar="KEY[:min|:max]",
        help="the summary.json key to compare on (default test_acc, map for detect); keys "
        "ending in nll, ece, "
        "loss, _s, mem_mb or macs are lower-is-better unless :max says otherwise",
    )
    a.add_argument(
        "--trainer",
        default=None,
        metavar="CMD",
        help="the command that trains one run (default 'freebies train', or 'freebies detect "
        "train' for --task detect); any command that "
        "honours the run-folder contract (see freebies.experiments.ablate)",
    )
    a.add_argument("--out", type=Path, required=True, help="grid folder (rerun to resume)")
    a.add_argument("--data", help=DATA_HELP)
    a.add_argument("--model")
    a.add_argument("--epochs", type=int)
    a.add_argument("--batch-size", type=int)
    a.add_argument("--device", choices=["auto", "cpu", "cuda"])
    a.add_argument("--limit-train", type=int, metavar="N")
    a.add_argument("--limit-test", type=int, metavar="N")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument(
        "--shard",
        metavar="I/N",
        help="train only the I-th of N slices of the runs; shards share --out (locks/, results/)",
    )
    a.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="local: run --shards N shard processes here and wait; slurm: write "
        "OUT/slurm/ablate.sbatch, an array job whose task I runs shard I/N",
    )
    a.add_argument("--shards", type=int, metavar="N", help="how many shards --launcher starts")
    a.add_argument(
        "--sbatch",
        default="",
        metavar="OPTIONS",
        help='#SBATCH options for --launcher slurm, e.g. "--partition=gpu --gres=gpu:1"',
    )
    a.add_argument("--submit", action="store_true", help="submit the array job with sbatch")
    a.set_defaults(ablate_parser=a)  # a launcher rebuilds each shard's command from it


def _add_detect(sub: Any) -> None:
    """The `detect` command group."""
    d = sub.add_parser(
        "detect", help="object detection: train | eval | predict | export | make-data"
    )
    dsub = d.add_subparsers(dest="detect_command", required=True)
    _add_train(
        dsub, "a detector", "detect", DETECT_DATA_HELP, "fcos_mobilenet_v3_small, fcos_resnet18"
    )

    e = dsub.add_parser("eval", help="COCO AP of a checkpoint; prints one JSON line")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data", help=DETECT_DATA_HELP + " (default: the data it was trained on)")
    e.add_argument("--limit-test", type=int, metavar="N")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="val: the validation split as the run made it, to choose --tiles or --pyramid on",
    )
    _add_multiscale(e)

    p = dsub.add_parser("predict", help="draw a checkpoint's detections on images")
    p.add_argument("checkpoint", type=Path, help="last.pt or best.pt of a detection run")
    p.add_argument("images", nargs="+", help="image files, folders (every image below), globs")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for PNGs and JSON")
    p.add_argument("--score-thr", type=float, default=0.3, help="draw boxes above this score")
    p.add_argument(
        "--save-json", action="store_true", help="also OUT/predictions.json, COCO results format"
    )
    _add_multiscale(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    x = dsub.add_parser("export", help="write a detector as ONNX, checked on test images")
    x.add_argument("checkpoint", type=Path, help="last.pt or best.pt of a detection run")
    x.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    x.add_argument("--data", help="data for the check images (default: the run's test split)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output")

    m = dsub.add_parser("make-data", help="write the Fashion scenes dataset (COCO format)")
    m.add_argument(
        "--out",
        type=Path,
        help="folder to write (default: where `freebies detect train` reads its default data)",
    )
    m.add_argument("--train", type=int, default=None, help="training scenes (2000)")
    m.add_argument("--val", type=int, default=None, help="validation scenes (200)")
    m.add_argument("--test", type=int, default=None, help="test scenes (500)")
    m.add_argument("--seed", type=int, default=None, help="the set's seed (0)")


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
    g.add_argument("--overlap", type=float, help="tile overlap share, with tiles (0.2)")
    g.add_argument(
        "--merge",
        choices=["ios", "nms"],
        help="ios: join boxes by intersection over the smaller (default with tiles); nms: "
        "IoU suppression (default for the pyramid alone)",
    )
    g.add_argument("--merge-thr", type=float, help="IoS / IoU threshold of --merge (0.5)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freebies", description="Train with the bag of freebies.")
    p.add_argument("--version", action="version", version=f"freebies {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _add_train(sub)

    e = sub.add_parser("eval", help="evaluate a checkpoint; prints one JSON line")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data", help=DATA_HELP + " (default: the data it was trained on)")
    e.add_argument(
        "--tta",
        action="store_true",
        help="average the image and its flip (and the recipe's train.tta_shift views)",
    )
    e.add_argument("--limit-test", type=int, metavar="N")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    _add_ablate(sub)
    _add_detect(sub)

    r = sub.add_parser("report", help="rebuild an ablation's report.md and plots")
    r.add_argument("dir", type=Path, help="the folder `freebies ablate --out` wrote")
    r.add_argument(
        "--metric",
        metavar="KEY[:min|:max]",
        help="report the same runs on another summary key (writes report-KEY.md beside)",
    )

    k = sub.add_parser("tricks", help="list every trick: keys, the setting that turns it on, paper")
    k.add_argument("--json", action="store_true", help="one JSON document, for machines")
    k.add_argument("--markdown", action="store_true", help="the table in docs/tricks.md")

    c = sub.add_parser("schedule", help="print (and plot) the LR curve a recipe will use")
    c.add_argument("--recipe", default="default")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--steps-per-epoch", type=int, help="default: from the recipe's data")
    c.add_argument("--plot", type=Path, help="write the curve as a PNG")

    b = sub.add_parser("bench", help="speed benchmarks")
    b.add_argument("what", choices=["tricks"], help="tricks: cost of each batch trick")
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--out", type=Path, help="also write OUT.md and OUT.json")

    f = sub.add_parser("fuse", help="fold ACNet blocks and conv+BN pairs into plain convs")
    f.add_argument("checkpoint", type=Path)
    f.add_argument("-o", "--output", type=Path, required=True, help="deploy checkpoint to write")
    f.add_argument(
        "--export",
        choices=["onnx", "torch"],
        help="also write OUTPUT.onnx (ONNX) or OUTPUT.pt2 (torch.export), checked on test images",
    )
    f.add_argument("--data", help="data for the check batch (default: the run's test split)")
    f.add_argument("--batch", type=int, default=256, help="check and timing batch size")
    f.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    f.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags the user actually gave, as recipe keys, then --set (which wins)."""
    out = {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag, None) is not None
    }
    out.update(config.parse_set(args.set))
    return out


def _task(args: argparse.Namespace) -> Any:
    """The task module a command runs."""
    return _task_module("detect" if args.command == "detect" else "classify")


def _task_module(task: str) -> Any:
    """The module of a task: its train, eval, predict entry points and its data size."""
    if task == "detect":
        from freebies import detect

        return detect
    from freebies import classify

    return classify


def _train(args: argparse.Namespace) -> None:
    summary, out = _task(args).train(
        args.recipe, _overrides(args), args.out, resume=args.resume, overwrite=args.overwrite
    )
    line = f"{_task(args).headline(summary)} after {summary['epochs_run']} epochs"
    if os.environ.get("RANK", "0") == "0":  # once under torchrun, not once per process
        print(f"final {line} ({summary['wall_s']:.0f} s); run folder {out}")


def _eval(args: argparse.Namespace) -> None:
    from freebies import classify

    result = classify.evaluate_checkpoint(
        args.checkpoint, args.data, tta=args.tta, limit=args.limit_test, device=args.device
    )
    print(json.dumps(result))


def _fuse(args: argparse.Namespace) -> None:
    from freebies import classify

    written = classify.fuse_checkpoint(
        args.checkpoint,
        args.output,
        spec=args.data,
        batch=args.batch,
        device=args.device,
        export=args.export,
        overwrite=args.overwrite,
    )
    for path in written:
        print(f"wrote {path}")


def _detect_eval(args: argparse.Namespace) -> None:
    from freebies import detect

    multiscale = {k: getattr(args, k) for k in MULTISCALE_FLAGS}
    result = detect.evaluate_checkpoint(
        args.checkpoint,
        args.data,
        limit=args.limit_test,
        device=args.device,
        multiscale=multiscale,
        split=args.split,
    )
    print(json.dumps(result))


def _detect_predict(args: argparse.Namespace) -> None:
    from freebies import detect

    multiscale = {k: getattr(args, k) for k in MULTISCALE_FLAGS}
    detect.predict_files(
        args.checkpoint,
        args.images,
        args.out,
        score_thr=args.score_thr,
        device=args.device,
        multiscale=multiscale,
        save_json=args.save_json,
    )


def _detect_export(args: argparse.Namespace) -> None:
    from freebies import detect

    raw, share = detect.export_checkpoint(
        args.checkpoint, args.output, spec=args.data, overwrite=args.overwrite
    )
    print(
        f"wrote {args.output}: raw outputs within {raw:.2g} of PyTorch's; {share:.0%} of the "
        "model's detections found by the reference post-processing (README: Export)"
    )


def _make_data(args: argparse.Namespace) -> None:
    import shlex

    from freebies import detect

    out = detect.make_data(args.out, args.seed, train=args.train, val=args.val, test=args.test)
    if args.out is None:
        print(f"Fashion scenes in {out}, where `freebies detect train` reads them (--data scenes)")
    else:
        data = shlex.quote(f"coco:{out}")
        print(f"Fashion scenes in {out}; train on them with: freebies detect train --data {data}")


def _ablate(args: argparse.Namespace) -> None:
    import functools
    import shlex

    from freebies.experiments import ablate, shards
    from freebies.report.table import Metric

    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    shard = shards.check_launch(args.shard, args.launcher, args.shards, args.sbatch, args.submit)
    recipe, trainer, metric = ablate.TASKS[args.task]
    args.recipe, args.trainer = args.recipe or recipe, args.trainer or trainer
    args.metric = args.metric or metric
    overrides = _overrides(args)
    seeds = ablate.grid_seeds(args.recipe, overrides, args.trainer, args.seeds)
    tricks = ablate.parse_tricks(args.tricks)
    also = ablate.parse_tricks(args.also) if args.also.strip(" ,") else []
    grid, variants = ablate.prepare(
        args.recipe,
        tricks,
        seeds,
        args.mode,
        args.out,
        overrides,
        bag=args.bag,
        command=shlex.join(["freebies", *sys.argv[1:]]),
        trainer=args.trainer,
        metric=Metric.parse(args.metric),
        also=also,
    )
    if args.launcher:
        argv_of = functools.partial(shards.shard_argv, args.ablate_parser, args)
        kind, count = args.launcher, args.shards
        print(ablate.launch(kind, count, grid, argv_of, sbatch=args.sbatch, submit=args.submit))
        return
    entries, missing = ablate.run_grid(tricks, grid, variants, bag=args.bag, shard=shard)
    if missing:
        print(
            f"shard {shard[0]}/{shard[1]}: done; {len(missing)} runs are with other shards; "
            f"`freebies report {args.out}` once they finish"
        )
        return
    print(f"{len(entries)} variants x {len(seeds)} seeds; wrote {args.out / 'report.md'}")


def _report(args: argparse.Namespace) -> None:
    from freebies.experiments.shards import report
    from freebies.report.table import Metric

    metric = Metric.parse(args.metric) if args.metric else None
    report(args.dir, metric)
    print((args.dir / f"report{f'-{metric.key}' if metric else ''}.md").read_text(), end="")


def _tricks(args: argparse.Namespace) -> None:
    from freebies.catalog import TRICKS, markdown_table

    if args.json:
        print(json.dumps([t.plain() for t in TRICKS], indent=2))
        return
    if args.markdown:
        print(markdown_table(), end="")
        return
    for t in TRICKS:
        on = " ".join(f"--set {k}={v}" for k, v in t.on.items()) or "(see keys)"
        keys = ", ".join(k.name + (f" {k.range}" if k.range else "") for k in t.keys)
        when = f"{'':20s} when: {t.advice}\n" if t.advice else ""
        print(
            f"{t.name:20s} {t.card}\n{'':20s} keys: {keys}\n"
            f"{'':20s} on:   {on}\n{'':20s} for:  {', '.join(t.tasks)}\n{when}"
            f"{'':20s} {t.paper} {t.link}".rstrip()
        )


def _schedule(args: argparse.Namespace) -> None:
    import torch

    from freebies.build import base_lr, make_scheduler

    cfg = config.load(args.recipe, config.parse_set(args.set))
    spe = args.steps_per_epoch
    if spe is None:
        spe = _task_module(cfg.task).train_size(cfg) // cfg.train.batch_size
    if spe < 1:
        raise UsageError(
            "no full batch per epoch: lower train.batch_size or pass --steps-per-epoch N (N >= 1)"
        )
    base = base_lr(cfg)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = make_scheduler(opt, cfg, base, spe)
    lrs = []
    for _ in range(cfg.train.epochs * spe):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    print(f"{args.recipe}: {cfg.train.epochs} epochs x {spe} steps, base LR {base:g}")
    print("epoch  step    lr")
    for epoch in range(cfg.train.epochs):
        print(f"{epoch:5d}  {epoch * spe:6d}  {lrs[epoch * spe]:.6g}")
    print(f"{'end':>5s}  {len(lrs) - 1:6d}  {lrs[-1]:.6g}")
    if args.plot:
        from freebies.report.plots import plot_lr

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_lr(lrs, spe, args.plot, title=f"{args.recipe}: LR per iteration")
        print(f"wrote {args.plot}")


def _bench(args: argparse.Namespace) -> None:
    from freebies.report import bench_tricks

    if args.batch < 1 or args.repeats < 1:
        raise UsageError("--batch and --repeats must be >= 1")
    bench_tricks.main(args.batch, args.repeats, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {
            "train": _train,
            "eval": _eval,
            "ablate": _ablate,
            "report": _report,
            "fuse": _fuse,
            "tricks": _tricks,
            "schedule": _schedule,
            "bench": _bench,
        }
        if args.command == "detect":
            commands["detect"] = {
                "train": _train,
                "eval": _detect_eval,
                "predict": _detect_predict,
                "export": _detect_export,
                "make-data": _make_data,
            }[args.detect_command]
        commands[args.command](args)
    except UsageError as e:
        print(f"freebies: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from freebies.engine import Interrupted
        from freebies.experiments.ablate import GridInterrupted

        if isinstance(e, GridInterrupted):
            print(
                f"freebies: interrupted; the current run saved a checkpoint. Run the same "
                f"command again to finish the grid in {e}",
                file=sys.stderr,
            )
        elif isinstance(e, Interrupted):
            print(
                f"freebies: interrupted, checkpoint saved; continue with: {e.resume_command}",
                file=sys.stderr,
            )
        else:
            print("freebies: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
