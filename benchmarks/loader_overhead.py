"""How much does the data pipeline cost? Full training step vs the bare model step.

Runs, in one process and interleaved (this machine is shared and noisy):
  * bare: forward + backward + optimizer step on one fixed, already-normalised batch;
  * full: `freebies.classify.run` itself for one epoch of the same number of steps: index the
    uint8 dataset, batched crop + flip, normalise, soft targets, forward, backward, step,
    LR schedule; its img/s excludes evaluation.
Both start from a freshly built model. Prints img/s for each and the ratio full / bare, and
writes the figures with the machine, torch version and seeds to docs/results/.
`--task detect` does the same for a detector: bare is the FCOS forward (with its target
matching and losses), backward and step on one fixed batch; full is `freebies detect train`'s
engine run (index the letterboxed images, box-aware flips, the step).

    python benchmarks/loader_overhead.py [--recipe baseline] [--steps 30] [--repeats 5]
        [--batch 256] [--task classify|detect]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from freebies import config
from freebies.build import build_model, make_optimizer
from freebies.classify import run
from freebies.data.splits import prepare
from freebies.runtime import machine


def bare_img_per_s(cfg: config.Config, steps: int, x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, 10, x.shape[1]).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg, cfg.optim.lr)
    x = x.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def bare_detect_img_per_s(cfg: config.Config, steps: int, data: object) -> float:
    """The detector's step alone on the first training batch, already on the device."""
    from freebies import detect

    torch.manual_seed(cfg.train.seed)
    info = detect.data_info(data, cfg)
    model = detect.make_detector(cfg, info).train()
    opt = make_optimizer(model, cfg, cfg.optim.lr)
    n = cfg.train.batch_size
    images = list((data.train.images[:n].float() / 255).unbind(0))
    targets = [
        {"boxes": b, "labels": c}
        for b, c in zip(data.train.boxes[:n], data.train.labels[:n], strict=True)
    ]
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * n / (time.perf_counter() - t0)


def full_img_per_s(cfg: config.Config, out: Path, task: str = "classify") -> float:
    from freebies import detect, engine

    if task == "detect":
        summary = engine.run(cfg, out, detect.build, recipe="bench", overwrite=True, progress=False)
    else:
        summary = run(cfg, out, recipe="bench", overwrite=True, progress=False)
    return summary["train_img_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--recipe", default=None, help="default: baseline, or detect with --task detect")
    p.add_argument("--task", choices=["classify", "detect"], default="classify")
    p.add_argument("--out", type=Path, default=Path("docs/results/loader_overhead.json"))
    args = p.parse_args()
    args.recipe = args.recipe or ("detect" if args.task == "detect" else "baseline")

    cfg = config.load(
        args.recipe,
        {
            "train.epochs": 1,
            "train.batch_size": args.batch,
            "data.limit_train": args.steps * args.batch,
            "data.limit_test": 256,
            "train.eval_every": 1,
            # detection recipes warm up for an epoch; this one-epoch run measures steps only
            **({"sched.warmup_epochs": 0.0} if args.task == "detect" else {}),
        },
    )
    if args.task == "detect":
        from freebies import detect

        data = detect.load_data(cfg)

        def bare_once() -> float:
            return bare_detect_img_per_s(cfg, args.steps, data)
    else:
        data = prepare(cfg.data)
        x = (data.train_x[: args.batch].float() - 72.9) / 90.0
        y = data.train_y[: args.batch]

        def bare_once() -> float:
            return bare_img_per_s(cfg, args.steps, x, y)

    bare, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare.append(bare_once())
            full.append(full_img_per_s(cfg, Path(tmp) / f"run{i}", args.task))
            print(
                f"repeat {i + 1}: bare {bare[-1]:.0f} img/s, full {full[-1]:.0f} img/s", flush=True
            )
    result = {
        "benchmark": "loader_overhead",
        "command": f"python benchmarks/loader_overhead.py --recipe {args.recipe} "
        f"--steps {args.steps} --repeats {args.repeats} --batch {args.batch}"
        + (f" --task {args.task}" if args.task != "classify" else "")
        + (f" --out {args.out}" if args.recipe != "baseline" else ""),
        "recipe": args.recipe,
        "model": cfg.model.name,
        "batch": args.batch,
        "steps_per_repeat": args.steps,
        "bare_img_per_s": bare,
        "full_img_per_s": full,
        "bare_median": statistics.median(bare),
        "full_median": statistics.median(full),
        # Each repeat pairs a bare and a full measurement taken back to back; the median of the
        # paired ratios is less sensitive to this shared machine's drift than a ratio of medians.
        "ratio_full_over_bare": statistics.median(f / b for f, b in zip(full, bare, strict=True)),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": cfg.train.seed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{cfg.model.name}, batch {args.batch}: bare {result['bare_median']:.0f} img/s, "
        f"full {result['full_median']:.0f} img/s, ratio {result['ratio_full_over_bare']:.3f}"
    )


if __name__ == "__main__":
    main()
