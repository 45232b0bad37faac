"""Time to accuracy on full Fashion-MNIST: recipes against each other, in one sitting.

Each pipeline is a recipe (plus settings) run at several fixed budgets (epoch counts; the LR
schedule scales with the budget) and seeds, and scored by its *final* test accuracy against its
wall time:

- `--pipeline LABEL RECIPE E1,E2,... [KEY=VALUE ...]`: `freebies train --recipe RECIPE
  --epochs E` with the settings (data on the device); repeat it for each pipeline;
- `--loader-epochs`: the `baseline` recipe through what most people write instead, a
  `torch.utils.data.DataLoader` over torchvision's FashionMNIST-style dataset with per-sample
  torchvision transforms (RandomCrop(28, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize) and 2 workers.

Wall time counts data set-up, training and the final evaluation (TTA included); nothing is
evaluated along the way. It does not count starting Python and importing torch (~3 s).

    python benchmarks/time_to_accuracy.py --seeds 0 1 2 --pipeline fast fast 3,5 \
        --pipeline baseline baseline 1 --loader-epochs 1

Writes docs/results/speed.{md,json,png} (machine, torch version, seeds). Finished runs are
kept in runs/speed and skipped when the command is repeated (their times then come from
the earlier sitting, and the page says which).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from freebies import config
from freebies.build import build_model, make_optimizer, make_scheduler
from freebies.classify import run
from freebies.data.splits import prepare
from freebies.runtime import cpu_flags, machine

TARGETS = (93.0, 94.0, 95.0)
LOADER = "baseline, DataLoader"


def tag(extra: dict) -> str:
    """Run names carry a hash of the --set overrides, so other settings never reuse a run."""
    import hashlib

    return (
        "-" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
        if extra
        else ""
    )


def ours(recipe: str, epochs: int, seed: int, runs: Path, extra: dict) -> dict:
    out = runs / f"{recipe}-e{epochs}-s{seed}{tag(extra)}"  # same settings, same folder
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text()) | {"reused": True}
    cfg = config.load(
        recipe, {**extra, "train.epochs": epochs, "train.seed": seed, "train.eval_every": epochs}
    )
    summary = run(cfg, out, recipe=recipe, overwrite=True, progress=False)
    return summary | {"reused": False}


def dataloader_baseline(epochs: int, seed: int, runs: Path, workers: int, extra: dict) -> dict:
    """The baseline recipe written the usual way: per-sample PIL transforms in DataLoader
    workers, batches copied in from the workers, a plain loop. The model and its inputs are
    channels_last like ours, so the comparison is of the data pipelines alone."""
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    out = runs / f"dataloader-e{epochs}-s{seed}{tag(extra)}.json"
    if out.is_file():
        return json.loads(out.read_text()) | {"reused": True}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = config.load("baseline", {**extra, "train.epochs": epochs, "train.seed": seed})
    data = prepare(cfg.data)
    mean = data.train_x.float().mean().item() / 255
    std = data.train_x.float().std().item() / 255

    class Images(Dataset):  # what torchvision.datasets.FashionMNIST does per item
        def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: v2.Transform) -> None:
            self.x, self.y, self.transform = x[:, 0].numpy(), y.tolist(), transform

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.transform(Image.fromarray(np.asarray(self.x[i]), mode="L")), self.y[i]

    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])]
    train_tf = v2.Compose([v2.RandomCrop(28, padding=4), v2.RandomHorizontalFlip(), *norm])
    train = DataLoader(
        Images(data.train_x, data.train_y, train_tf),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    test = DataLoader(Images(data.test_x, data.test_y, v2.Compose(norm)), batch_size=256)
    fmt = torch.channels_last
    model = build_model(cfg, 10, 1).to(memory_format=fmt)
    opt = make_optimizer(model, cfg, cfg.optim.lr)
    sched = make_scheduler(opt, cfg, cfg.optim.lr, len(train))
    for _ in range(epochs):
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x.to(memory_format=fmt)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            correct += (model(x.to(memory_format=fmt)).argmax(1) == y).sum().item()
    result = {
        "test_acc": 100 * correct / len(data.test_y),
        "wall_s": time.perf_counter() - t0,
        "epochs": epochs,
        "seed": seed,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result) + "\n")
    return result | {"reused": False}


def budgets(rows: list[dict]) -> list[dict]:
    """Mean ± std of final accuracy and wall time per epoch budget."""
    out = []
    for epochs in sorted({r["epochs"] for r in rows}):
        rs = [r for r in rows if r["epochs"] == epochs]
        accs, walls = [r["test_acc"] for r in rs], [r["wall_s"] for r in rs]
        out.append(
            {
                "epochs": epochs,
                "n": len(rs),
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "wall_mean": statistics.mean(walls),
                "wall_std": statistics.stdev(walls) if len(walls) > 1 else 0.0,
            }
        )
    return out


def time_to(points: list[dict], target: float) -> float | None:
    """Wall time of the cheapest budget whose mean final accuracy reaches `target`."""
    hits = [p["wall_mean"] for p in points if p["acc_mean"] >= target]
    return min(hits) if hits else None


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    from matplotlib.ticker import ScalarFormatter

    from freebies.report.plots import plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, points in curves.items():
        ax.errorbar(
            [p["wall_mean"] for p in points],
            [p["acc_mean"] for p in points],
            xerr=[p["wall_std"] for p in points],
            yerr=[p["acc_std"] for p in points],
            marker="o",
            capsize=3,
            label=name,
        )
        for p in points:
            ax.annotate(
                f"{p['epochs']} ep", (p["wall_mean"], p["acc_mean"]), fontsize=7, xytext=(4, -10),
                textcoords="offset points",
            )  # fmt: skip
    for t in TARGETS:
        ax.axhline(t, color="0.7", lw=0.8, ls="--")
    ax.set(
        title="Fashion-MNIST: final test accuracy against wall time",
        xlabel="wall time, s (set-up + training + final evaluation)",
        ylabel="test top-1, %",
    )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def matched(curves: dict[str, list[dict]], runs: dict[str, list[dict]]) -> list[str]:
    """Sentences comparing each pipeline with the first at about the same wall time (within a
    third), and the DataLoader baseline with our pipeline for the same recipe, epochs and seed."""
    out = []
    first, *others = [name for name in curves if name != LOADER]
    for name in others:
        for b in curves[name]:
            f = min(curves[first], key=lambda p: abs(p["wall_mean"] - b["wall_mean"]))
            if not 0.75 < f["wall_mean"] / b["wall_mean"] < 1.33:
                continue  # no budget of the first pipeline took about as long
            out.append(
                f"- At about the same wall time, `{first}` ({f['epochs']} epochs, "
                f"{f['wall_mean']:.0f} s) reaches {f['acc_mean']:.2f}% and `{name}` "
                f"({b['epochs']} epochs, {b['wall_mean']:.0f} s) {b['acc_mean']:.2f}%."
            )
    ours = {(r["epochs"], r["seed"]): r for r in runs.get("baseline", [])}
    for d in runs.get(LOADER, []):
        o = ours.get((d["epochs"], d["seed"]))
        if o is None:
            continue
        out.append(
            f"- The same baseline recipe ({d['epochs']} epoch(s), seed {d['seed']}) takes "
            f"{d['wall_s']:.0f} s through a DataLoader with per-sample torchvision transforms "
            f"({d['test_acc']:.2f}%) and {o['wall_s']:.0f} s through our on-device pipeline "
            f"({o['test_acc']:.2f}%): {d['wall_s'] / o['wall_s']:.2f}x."
        )
    return out


def markdown(result: dict) -> str:
    """speed.md: the budgets table and the time-to-accuracy ratios, from one sitting."""
    lines = [
        "# Time to accuracy on Fashion-MNIST",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; torch {result['torch']}; {result['threads']} threads; "
        f"seeds {result['seeds']}. Runs reused from an earlier sitting: {result['reused_runs']}.",
        "",
        "Final test accuracy of each fixed budget (mean ± std over seeds) against its wall time "
        "(data set-up + training + final evaluation with the recipe's TTA; nothing evaluated "
        "along the way; Python start-up and imports not counted).",
        "",
        "| pipeline | epochs | seeds | test acc % | wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, points in result["budgets"].items():
        for p in points:
            lines.append(
                f"| {name} | {p['epochs']} | {p['n']} | {p['acc_mean']:.2f} ± {p['acc_std']:.2f} "
                f"| {p['wall_mean']:.0f} ± {p['wall_std']:.0f} |"
            )
    lines += [
        "",
        "Wall time of the cheapest budget whose mean final accuracy reaches the target:",
        "",
    ]
    names = list(result["budgets"])
    lines += ["| target | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t in TARGETS:
        cells = []
        for name in names:
            v = result["time_to"][name][t]
            longest = max(p["wall_mean"] for p in result["budgets"][name])
            cells.append(f"{v:.0f} s" if v is not None else f"not reached (> {longest:.0f} s)")
        lines.append(f"| {t:.0f}% | " + " | ".join(cells) + " |")
    lines += [
        "",
        *matched(result["budgets"], result["runs"]),
        "",
        "![accuracy against wall time](speed.png)",
        "",
        "How the `fast` recipe was chosen (validation split, never test), and what helped and "
        "what did not: [fast_tuning.md](fast_tuning.md); step profile: "
        "[fast_profile.json](fast_profile.json).",
        "",
    ]
    return "\n".join(lines)


def parse_pipeline(spec: list[str]) -> tuple[str, str, list[int], dict]:
    """`[LABEL, RECIPE, "E1,E2", "KEY=VALUE", ...]` -> (label, recipe, epochs, overrides)."""
    if len(spec) < 3:
        raise SystemExit("--pipeline needs LABEL RECIPE E1,E2,... [KEY=VALUE ...]")
    label, recipe, epochs, *sets = spec
    return label, recipe, [int(e) for e in epochs.split(",")], config.parse_set(sets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--pipeline",
        nargs="+",
        action="append",
        metavar="ARG",
        help="LABEL RECIPE E1,E2,... [KEY=VALUE ...]; repeat for each pipeline",
    )
    p.add_argument("--loader-epochs", type=int, nargs="*", default=[])
    p.add_argument("--loader-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (2 cores here)")
    p.add_argument("--runs", type=Path, default=Path("runs/speed"))
    p.add_argument("--out", type=Path, default=Path("docs/results/speed"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="all runs")
    p.add_argument("--from-json", action="store_true", help="only re-render OUT.md and OUT.png")
    args = p.parse_args()
    extra = config.parse_set(args.set)
    if args.from_json:
        result = json.loads(args.out.with_suffix(".json").read_text())
        result["time_to"] = {  # JSON turned the float targets into strings
            name: {float(t): v for t, v in got.items()} for name, got in result["time_to"].items()
        }
        plot(result["budgets"], args.out.with_suffix(".png"))
        args.out.with_suffix(".md").write_text(markdown(result))
        return

    pipelines = [parse_pipeline(spec) for spec in args.pipeline or [["fast", "fast", "2,4,6"]]]
    rows: dict[str, list[dict]] = {label: [] for label, *_ in pipelines} | {LOADER: []}
    for seed in args.seeds:  # seed-major: every pipeline meets the machine's moods alike
        for label, recipe, epochs, sets in pipelines:
            for e in epochs:
                rows[label].append(ours(recipe, e, seed, args.runs, {**extra, **sets}))
        if seed in args.loader_seeds:
            for e in args.loader_epochs:
                rows[LOADER].append(dataloader_baseline(e, seed, args.runs, args.workers, extra))
    curves = {name: budgets(rs) for name, rs in rows.items() if rs}
    reach = {name: {t: time_to(pts, t) for t in TARGETS} for name, pts in curves.items()}
    command = "python " + shlex.join(["benchmarks/time_to_accuracy.py", *sys.argv[1:]])
    reused = sum(r.get("reused", False) for rs in rows.values() for r in rs)
    result = {
        "command": command,
        "machine": machine(),
        "cpu_flags": sorted(cpu_flags()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seeds": args.seeds,
        "runs": rows,
        "budgets": curves,
        "time_to": reach,
        "reused_runs": reused,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(curves, args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({"budgets": curves, "time_to": reach}, indent=2))


if __name__ == "__main__":
    main()
