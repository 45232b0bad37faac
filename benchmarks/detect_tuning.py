"""Choosing a detection budget on validation: each variant of a recipe trained once per seed
with `freebies detect train`, its validation map curve, test map, wall time and img/s appended
to a JSON-lines file (one line per run, with the command, machine, torch and seed).

A variant is NAME=KEY:VALUE,KEY:VALUE (recipe keys, as --set takes them). Finished runs (their
summary.json exists) are not trained again; an interrupted one resumes. The choice is made on
the validation column; the test column is reported, never chosen on.

    python benchmarks/detect_tuning.py --recipe detect-bccd --runs runs/tune \\
        --variant 416-e30=train.epochs:30 --variant 640-e24=data.image_size:640,train.epochs:24 \\
        [--seeds 0] [--out docs/results/detect_tuning.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from freebies.runtime import machine


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    pairs = [kv.split(":", 1) for kv in sets.split(",") if kv]
    return name, [f"{k}={v}" for k, v in pairs]


def train(recipe: str, sets: list[str], seed: int, folder: Path, extra: list[str]) -> list[str]:
    """Train (or resume, or skip) one run; returns its command as typed."""
    args = ["--recipe", recipe, "--seed", str(seed), "--out", str(folder), *extra]
    for s in sets:
        args += ["--set", s]
    cmd = ["freebies", "detect", "train", *args]
    if not (folder / "summary.json").is_file():
        again = ["--resume", str(folder)] if (folder / "last.pt").is_file() else args
        print("+", " ".join(cmd[:3] + again), flush=True)
        subprocess.run([sys.executable, "-m", "freebies", "detect", "train", *again], check=True)
    return cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--variant", action="append", required=True, type=parse_variant)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs", type=Path, default=Path("runs/tune"))
    p.add_argument("--out", type=Path, default=Path("docs/results/detect_tuning.jsonl"))
    p.add_argument("--data", default=None, help="the recipe's data elsewhere (a --data spec)")
    args = p.parse_args()
    extra = ["--data", args.data] if args.data else []
    for name, sets in args.variant:
        for seed in args.seeds:
            folder = args.runs / f"{args.recipe}-{name}-s{seed}"
            cmd = train(args.recipe, sets, seed, folder, extra)
            summary = json.loads((folder / "summary.json").read_text())
            rows = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
            line = {
                "recipe": args.recipe,
                "variant": name,
                "sets": sets,
                "seed": seed,
                "command": " ".join(cmd),
                "val_map_curve": {r["epoch"]: r["val_map"] for r in rows if "val_map" in r},
                "train_loss_curve": {r["epoch"]: round(r["train_loss"], 4) for r in rows},
                "best_val_map": summary.get("best_value"),
                "best_epoch": summary.get("best_epoch"),
                **{k: summary.get(k) for k in ("map", "map_50", "map_small", "val_map")},
                **{k: summary.get(k) for k in ("wall_s", "train_s", "train_img_per_s")},
                "machine": machine(),
                "torch": torch.__version__,
            }
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(
                f"{name} seed {seed}: val map {line['val_map']}, best {line['best_val_map']} "
                f"at epoch {line['best_epoch']}, test map {line['map']}, {line['wall_s']:.0f} s"
            )


if __name__ == "__main__":
    main()
