"""What each detection trick costs per training step, as a ratio against the bare step.

Every variant is the `detect` recipe's own training step (`freebies.detect.detect_step`, then
`engine.update`: augmentation, FCOS forward with matching and losses, backward, AdamW step, LR
step) on the same
Fashion-scenes batches, with no trick on (bare: flips off too) or one trick at its documented
setting (`freebies tricks`). Variants are timed in one process, interleaved repeat by repeat,
because this machine is shared and noisy; each figure is the median over repeats. Random shapes
draws a size every step here (`det.random_shapes_every=1`), so its figure is the mean over its
sizes rather than one size's.

    python benchmarks/detect_trick_cost.py [--steps 8] [--repeats 3] [--batch 8]
        [--out docs/results/detect_trick_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from freebies import config, detect, engine
from freebies.catalog import TRICKS
from freebies.distributed import Dist
from freebies.runtime import provenance


def variants() -> dict[str, dict]:
    """bare, then every detection-only trick that runs on the CPU, at its documented setting."""
    out = {"bare": {"det.hflip": False}}
    for t in TRICKS:
        if t.tasks == ("detect",):
            out[t.name] = {"det.hflip": False, **t.on}
    out["det_random_shapes"]["det.random_shapes_every"] = 1
    return out


def step(task: engine.Task, batch: tuple, i: int) -> None:
    """One training step as the engine runs it: the task's step, then the update."""
    loss, _ = task.step(batch, 0, i)
    engine.update(loss, task.training)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("docs/results/detect_trick_cost.json"))
    args = p.parse_args()
    base = {
        "train.batch_size": args.batch,
        "data.limit_train": args.batch * (args.steps + 1),
        "data.limit_test": 16,
        "train.epochs": 2,
    }
    tasks, batches, settings = {}, None, variants()
    for name, on in settings.items():
        cfg = config.load("detect", {**base, **on})
        tasks[name] = detect.build(cfg, Dist(0, 1, torch.device("cpu")))
        if batches is None:
            batches = list(tasks[name].batches(0, 0))
    ms: dict[str, list[float]] = {name: [] for name in tasks}
    for r in range(args.repeats):
        for name, task in tasks.items():
            step(task, batches[-1], 0)  # warm-up (first-touch allocations)
            t0 = time.perf_counter()
            for i, batch in enumerate(batches[: args.steps]):
                step(task, batch, i)
            ms[name].append(1000 * (time.perf_counter() - t0) / args.steps)
        print(f"repeat {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in ms.items()))
    bare = statistics.median(ms["bare"])
    rows = []
    for name, times in ms.items():
        med = statistics.median(times)
        rows.append(
            {
                "trick": name,
                "setting": {k: v for k, v in settings[name].items() if k != "det.hflip"}
                or {"det.hflip": False},
                "ms_per_step": med,
                "ratio_to_bare": med / bare,
                "share_of_step": max(0.0, (med - bare) / med),
            }
        )
    print(f"{'trick':20s} {'ms/step':>8s} {'x bare':>7s} {'share':>6s}")
    for row in rows:
        print(
            f"{row['trick']:20s} {row['ms_per_step']:8.0f} {row['ratio_to_bare']:7.2f} "
            f"{row['share_of_step']:6.0%}"
        )
    result = {
        "benchmark": "detect_trick_cost",
        "command": f"python benchmarks/detect_trick_cost.py --steps {args.steps} "
        f"--repeats {args.repeats} --batch {args.batch}",
        "recipe": "detect",
        "image_size": config.load("detect").data.image_size,
        "batch": args.batch,
        "ms_per_step_by_repeat": ms,
        "rows": rows,
        **provenance(),
        "seed": 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
