"""The baseline detectors: each detection recipe trained on several seeds, as the committed
commands a person would type, then their COCO AP (mean ± std), speed and memory.

Each run is `freebies detect train --recipe R --seed S --out RUNS/R-sS`; a finished run (its
summary.json exists) is skipped and an interrupted one resumed, so a stopped benchmark
finishes when started again.

    python benchmarks/detection_baselines.py [--recipes detect-bccd detect] [--seeds 0 1 2]
        [--runs runs/det] [--out docs/results/detection.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "val_map")
COSTS = ("train_img_per_s", "wall_s", "train_s", "peak_mem_mb")


def train(recipe: str, seed: int, folder: Path) -> None:
    if (folder / "summary.json").is_file():
        return
    if (folder / "last.pt").is_file():
        args = ["--resume", str(folder)]
    else:
        args = ["--recipe", recipe, "--seed", str(seed), "--out", str(folder), "--overwrite"]
        if recipe == "detect-bccd" and os.environ.get("FREEBIES_BCCD"):  # BCCD elsewhere
            args += ["--data", f"voc:{os.environ['FREEBIES_BCCD']}"]
    cmd = [sys.executable, "-m", "freebies", "detect", "train", *args]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.mean(v),
        "std": statistics.stdev(v) if len(v) > 1 else None,
        "n": len(v),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=["detect-bccd", "detect"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/det"))
    p.add_argument("--out", type=Path, default=Path("docs/results/detection.json"))
    args = p.parse_args()
    result = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            train(recipe, seed, args.runs / f"{recipe}-s{seed}")
        runs = [
            json.loads((args.runs / f"{recipe}-s{s}" / "summary.json").read_text())
            for s in args.seeds
        ]
        result[recipe] = {
            "commands": [
                f"freebies detect train --recipe {recipe} --seed {s} --out {folder}"
                for s, folder in ((s, args.runs / f"{recipe}-s{s}") for s in args.seeds)
            ],
            "seeds": args.seeds,
            "epochs": runs[0]["epochs"],
            "machine": runs[0]["machine"],
            "torch": runs[0]["torch"],
            "params": runs[0]["params"],
            "infer_macs": runs[0]["infer_macs"],
            **{k: mean_std([r.get(k) for r in runs]) for k in KEYS + COSTS},
            "per_seed": {
                s: {k: r.get(k) for k in KEYS + COSTS}
                for s, r in zip(args.seeds, runs, strict=True)
            },
        }
        m = result[recipe]["map"]
        print(f"{recipe}: map {m['mean']:.2f} (n={m['n']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
