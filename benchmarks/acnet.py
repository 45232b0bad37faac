"""ACNet evidence: does it buy accuracy at our budget, what does training cost, is deploy free?

Trains plain and ACNet ResNet-20 (Ding et al. 2019, arXiv:1908.03930) on full Fashion-MNIST
with the same recipe, epoch budget and seeds; then fuses every ACNet model and times the fused
model against the plain architecture in the same process. The ACNet variant starts its 1 x k and
k x 1 branch BNs at gamma 1/3 and its k x k branch BN at 1 (the default); that is not the
authors' CIFAR init, which sets all three to 1/3 (`ACBlock.init_gamma` in DingXiaoH/ACNet).
Finished runs are skipped and a half-finished one resumes, so the grid survives being killed:

    python benchmarks/acnet.py --recipe default --seeds 0 1 2

Writes docs/results/acnet.json and docs/results/acnet.md (machine, torch version, seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from freebies import checkpoint, config, deploy
from freebies.build import build_model
from freebies.classify import run
from freebies.data.loader import eval_batches, normalize
from freebies.data.splits import prepare
from freebies.runtime import machine

# The committed docs/results/acnet.* used exactly this: side branches 1/3, square branch 1.
VARIANTS = {"plain": {}, "acnet": {"model.acnet": True, "model.acnet_side_gamma": 1.0 / 3}}


def train_one(recipe: str, variant: str, seed: int, runs: Path, extra: dict) -> dict:
    out = runs / f"{variant}-seed{seed}"
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    cfg = config.load(recipe, {**VARIANTS[variant], **extra, "train.seed": seed})
    resume = (out / "last.pt").is_file()
    return run(cfg, out, recipe=recipe, resume=resume, progress=True)


def step_throughput(recipe: str, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Training img/s of plain and ACNet ResNet-20, interleaved in this process (median)."""
    import time

    import torch.nn.functional as F

    from freebies.build import make_optimizer

    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    steps_fn = {}
    for variant, overrides in VARIANTS.items():
        cfg = config.load(recipe, overrides)
        torch.manual_seed(0)
        model = build_model(cfg, 10, 1).to(memory_format=torch.channels_last)
        opt = make_optimizer(model, cfg, cfg.optim.lr)

        def step(model=model, opt=opt) -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        steps_fn[variant] = step
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant, step in steps_fn.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            rates[variant].append(steps * batch / (time.perf_counter() - t0))
    return {v: statistics.median(r) for v, r in rates.items()}


def mean_std(xs: list[float]) -> str:
    return (
        f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/acnet-bench"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("docs/results/acnet"))
    args = p.parse_args()
    extra = config.parse_set(args.set)

    results = {
        v: [train_one(args.recipe, v, s, args.runs, extra) for s in args.seeds] for v in VARIANTS
    }

    # Deployment: fuse each ACNet model, time it against the plain architecture (same process).
    deploys = []
    for seed in args.seeds:
        ckpt = checkpoint.load(args.runs / f"acnet-seed{seed}" / "last.pt")
        cfg = config.from_dict(ckpt.config, ckpt.task)
        cfg.data.limit_test = 256
        data = prepare(cfg.data)
        xb, _ = next(eval_batches(data.test_x, data.test_y, 256))
        x = normalize(xb, ckpt.data["mean"], ckpt.data["std"])
        _, report = deploy.fuse_and_check(deploy.load_model(ckpt), cfg, x, 10)
        deploys.append(report)

    speed = step_throughput(args.recipe, batch=256, steps=5, repeats=5)
    acc = {v: [r["test_acc"] for r in results[v]] for v in VARIANTS}
    train_s = {v: [r["train_s"] for r in results[v]] for v in VARIANTS}
    deltas = [a - b for a, b in zip(acc["acnet"], acc["plain"], strict=True)]
    cost = speed["plain"] / speed["acnet"]  # time per step, ACNet over plain
    fused_ratio = statistics.median(r["fused_over_plain"] for r in deploys)
    command = (
        f"python benchmarks/acnet.py --recipe {args.recipe} --seeds "
        + " ".join(map(str, args.seeds))
        + "".join(f" --set {s}" for s in args.set)
    )
    summary = {
        "command": command,
        "machine": machine(),
        "torch": torch.__version__,
        "seeds": args.seeds,
        "recipe": args.recipe,
        "epochs": results["plain"][0]["epochs"],
        "test_acc": acc,
        "train_s": train_s,
        "delta_per_seed": deltas,
        "train_step_img_per_s": speed,
        "train_time_ratio": cost,
        "grid_train_s_ratio": statistics.mean(train_s["acnet"]) / statistics.mean(train_s["plain"]),
        "deploy": deploys,
        "fused_over_plain_median": fused_ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    d0 = deploys[0]
    lines = [
        "# ACNet on Fashion-MNIST (ResNet-20)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; torch {torch.__version__}; seeds {args.seeds}; recipe "
        f"`{args.recipe}` ({summary['epochs']} epochs); ACNet initial BN gamma 1/3 on the "
        "1×k and k×1 branches and 1 on the k×k branch (not the authors' all-1/3 init_gamma).",
        "",
        "| variant | test acc % (mean ± std) | per seed | train s (mean) |",
        "| --- | ---: | --- | ---: |",
    ]
    for v in VARIANTS:
        lines.append(
            f"| {v} | {mean_std(acc[v])} | {', '.join(f'{a:.2f}' for a in acc[v])} | "
            f"{statistics.mean(train_s[v]):.0f} |"
        )
    lines += [
        "",
        f"Δ ACNet − plain, paired by seed: {mean_std(deltas)} points "
        f"({', '.join(f'{d:+.2f}' for d in deltas)}).",
        "",
        f"Training cost: a ResNet-20 training step (batch 256) runs at {speed['plain']:.0f} "
        f"img/s plain and {speed['acnet']:.0f} img/s with ACNet, timed interleaved in one "
        f"process: ACNet trains **{cost:.2f}×** slower. (The grid's own train_s give "
        f"{summary['grid_train_s_ratio']:.2f}×, but other work shared the machine during "
        "some of those runs.)",
        "",
        "## Deployment (fused ACNet vs the plain architecture, same process)",
        "",
        f"Batch {d0['batch']}, fp32, CPU; median over {len(deploys)} fused models of the "
        f"fused / plain inference time ratio: **{fused_ratio:.3f}** (target ≤ 1.02).",
        "",
        "| model | params | MACs/image | ms/batch | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += deploy.report_table(d0).splitlines()[2:5]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
