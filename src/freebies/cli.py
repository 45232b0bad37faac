"""The `freebies` command: train | eval | ablate | report | fuse | tricks | schedule | bench.

Mistakes a person can fix end in one line on stderr and exit code 2; Ctrl-C saves a
checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
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
    a.add_argument("--mode", choices=["single", "cumulative", "both"], default="single")
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
    from freebies.cli_detect import add_detect

    add_detect(sub, _add_train)

    r = sub.add_parser("report", help="rebuild an ablation's report.md and plots")
    r.add_argument("dir", type=Path, help="the folder `freebies ablate --out` wrote")
    r.add_argument(
        "--metric",
        metavar="KEY[:min|:max]",
        help="report the same runs on another summary key (writes report-KEY.md beside)",
    )

    k = sub.add_parser("tricks", help="list every trick: keys, the setting that turns it on, paper")
    k.add_argument("--json", action="store_true", help="one JSON document, for machines")

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
    f.add_argument("--export", choices=["torchscript", "onnx"], help="also write an export")
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


def _train(args: argparse.Namespace) -> None:
    from freebies import engine

    if args.command == "detect":
        from freebies import detect as task
    else:
        from freebies import train as task
    name = "detect" if args.command == "detect" else "classify"
    overrides = _overrides(args)
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise UsageError("--resume continues the run in its own folder; drop --out")
        cfg = engine.resumed_config(args.resume, args.recipe, overrides, name)
        engine.run(cfg, args.resume, task.build, resume=True)
        return
    recipe = args.recipe or ("detect" if args.command == "detect" else "default")
    cfg = config.load(recipe, overrides)
    for note in config.advice(cfg) if args.command == "train" else []:
        print(f"freebies: warning: {note}", file=sys.stderr)
    out = args.out or Path("runs") / f"{Path(recipe).stem}-{cfg.model.name}-seed{cfg.train.seed}"
    summary = engine.run(cfg, out, task.build, recipe=Path(recipe).stem, overwrite=args.overwrite)
    line = f"{_headline(summary)} after {summary['epochs_run']} epochs"
    print(f"final {line} ({summary['wall_s']:.0f} s); run folder {out}")


def _headline(summary: dict[str, Any]) -> str:
    """The final figure of a run, for its last line."""
    if "test_acc" in summary:
        return f"test accuracy {summary['test_acc']:.2f}%"
    m = summary["map"]  # None when the test set has no boxes
    return f"test map {m:.2f}" if m is not None else "test map n/a (no boxes in the test set)"


def _test_data(ckpt: Any, spec: str | None, limit: int | None) -> Any:
    """The checkpoint's test set (or `spec`'s), checked against what the model expects."""
    from freebies.data.splits import prepare

    cfg = config.from_dict(ckpt.config)
    cfg.data.val_split, cfg.data.limit_train, cfg.data.limit_test = 0.0, None, limit
    if spec is not None:
        cfg.data.spec = spec
    data = prepare(cfg.data)
    classes, shape = ckpt.data["classes"], ckpt.data["shape"]
    if len(data.classes) != len(classes) or list(data.test_x.shape[1:]) != shape:
        raise UsageError(
            f"{cfg.data.spec} does not match the checkpoint: it has {len(data.classes)} classes "
            f"of {list(data.test_x.shape[1:])} images, the model expects {len(classes)} of {shape}"
        )
    return data


def _eval(args: argparse.Namespace) -> None:
    import contextlib

    from freebies import checkpoint
    from freebies.data.loader import to_device
    from freebies.deploy import load_model
    from freebies.distributed import pick_device
    from freebies.evaluate import evaluate
    from freebies.runtime import autocast_for

    ckpt = checkpoint.load(args.checkpoint, "classify")
    cfg = config.from_dict(ckpt.config)
    data = _test_data(ckpt, args.data, args.limit_test)
    device = pick_device(args.device)
    model = load_model(ckpt).to(device)
    # A deploy checkpoint is evaluated in fp32 so its predictions match the unfused model's;
    # a trained one in the precision it trained in.
    precision = ckpt.precision[0] if ckpt.precision else cfg.train.precision
    autocast = contextlib.nullcontext() if ckpt.deploy else autocast_for(precision, device)
    result = evaluate(
        model,
        to_device(data.test_x, device),
        data.test_y.to(device),
        ckpt.data["mean"].to(device),
        ckpt.data["std"].to(device),
        batch_size=cfg.train.eval_batch_size,
        tta=args.tta,
        tta_shift=cfg.train.tta_shift if args.tta else 0,
        autocast=autocast,
        workers=cfg.data.workers,
    )
    print(
        json.dumps(
            {"test_acc": result["acc"], "test_nll": result["nll"], "test_ece": result["ece"]}
        )
    )


def _fuse(args: argparse.Namespace) -> None:
    import torch

    from freebies import checkpoint, deploy
    from freebies.data.loader import eval_batches, normalize
    from freebies.distributed import pick_device

    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.output.exists() and not args.overwrite:
        raise UsageError(f"{args.output} already exists; pass --overwrite or choose another -o")
    ckpt = checkpoint.load(args.checkpoint, "classify")
    if ckpt.deploy:
        raise UsageError(f"{args.checkpoint} is already a fused deploy checkpoint")
    cfg = config.from_dict(ckpt.config)
    device = pick_device(args.device)
    data = _test_data(ckpt, args.data, args.batch)
    xb, _ = next(eval_batches(data.test_x, data.test_y, args.batch))
    x = normalize(xb, ckpt.data["mean"], ckpt.data["std"]).to(device)
    model = deploy.load_model(ckpt).to(device)
    fused, report = deploy.fuse_and_check(model, cfg, x, ckpt.num_classes)
    print(deploy.report_table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if report["acb"] == 0:
        print("no ACNet block found (model.acnet was off); folded the conv+BN pairs only")
    deployed = checkpoint.Checkpoint(
        model={k: v.cpu() for k, v in fused.state_dict().items()},
        config=ckpt.config,
        data=ckpt.data,
        recipe=ckpt.recipe,
        task=ckpt.task,
        deploy=True,
        fuse_report=report,
    )
    checkpoint.save(deployed, args.output)
    print(f"wrote {args.output}")
    if args.export:
        path = args.output.with_suffix(".ts" if args.export == "torchscript" else ".onnx")
        deploy.export(fused.to(torch.device("cpu")), x.cpu(), args.export, path)
        print(f"wrote {path}")


def _ablate(args: argparse.Namespace) -> None:
    import shlex

    from freebies.experiments import ablate
    from freebies.report.table import Metric

    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    recipe, trainer, metric = ablate.TASKS[args.task]
    args.recipe, args.trainer = args.recipe or recipe, args.trainer or trainer
    args.metric = args.metric or metric
    overrides = _overrides(args)
    seeds = ablate.grid_seeds(args.recipe, overrides, args.trainer, args.seeds)
    entries = ablate.run_grid(
        args.recipe,
        ablate.parse_tricks(args.tricks),
        seeds,
        args.mode,
        args.out,
        overrides,
        bag=args.bag,
        command=shlex.join(["freebies", *sys.argv[1:]]),
        trainer=args.trainer,
        metric=Metric.parse(args.metric),
    )
    print(f"{len(entries)} variants x {len(seeds)} seeds; wrote {args.out / 'report.md'}")


def _report(args: argparse.Namespace) -> None:
    from freebies.report.table import Metric, write_report

    metric = Metric.parse(args.metric) if args.metric else None
    write_report(args.dir, metric)
    print((args.dir / f"report{f'-{metric.key}' if metric else ''}.md").read_text(), end="")


def _tricks(args: argparse.Namespace) -> None:
    import dataclasses

    from freebies.tricks.catalog import TRICKS

    if args.json:
        print(json.dumps([dataclasses.asdict(t) for t in TRICKS], indent=2))
        return
    for t in TRICKS:
        on = " ".join(f"--set {k}={v}" for k, v in t.on.items()) or "(see keys)"
        print(
            f"{t.name:20s} {t.what}\n{'':20s} keys: {', '.join(t.keys)}\n"
            f"{'':20s} on:   {on}\n{'':20s} for:  {', '.join(t.tasks)}\n"
            f"{'':20s} {t.paper} {t.link}".rstrip()
        )


def _schedule(args: argparse.Namespace) -> None:
    import torch

    from freebies.build import base_lr, make_scheduler

    cfg = config.load(args.recipe, config.parse_set(args.set))
    spe = args.steps_per_epoch
    if spe is None:
        from freebies.data.splits import prepare

        spe = len(prepare(cfg.data).train_x) // cfg.train.batch_size
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
            from freebies.cli_detect import COMMANDS

            commands["detect"] = (
                _train if args.detect_command == "train" else COMMANDS[args.detect_command]
            )
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
