"""Rectangular batches against square letterboxing: training img/s of `freebies detect train`.

For each dataset, in one process and interleaved (this machine is shared and noisy), one
epoch of `--steps` steps of the recipe with data.rect=false (every image on an image_size
square) and with data.rect=true (aspect ratio kept, sides padded to 32, batches grouped by
orientation), repeated; prints and writes each mode's img/s (evaluation excluded), the median
of the paired ratios rect / square, and the share of each batch that is padding.

    python benchmarks/rect_speed.py [--data voc:../shared/data/bccd
        yolo:../shared/data/aerial-drone/data.yaml] [--size 416] [--steps 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from loader_overhead import full_img_per_s

from freebies import config, detect
from freebies.runtime import machine


def padding_share(cfg: config.DetectConfig) -> float:
    """The share of the batch pixels that are padding, over the training images."""
    train = detect.load_data(cfg).train
    fitted = train.fitted.prod(1).double().sum()
    return float(1 - fitted / train.shapes.prod(1).double().sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        nargs="+",
        default=["voc:../shared/data/bccd", "yolo:../shared/data/aerial-drone/data.yaml"],
    )
    p.add_argument("--recipe", default="detect-bccd")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/results/rect_speed.json"))
    args = p.parse_args()
    rows = []
    for spec in args.data:
        cfgs = {
            mode: config.load(
                args.recipe,
                {
                    "data.spec": spec,
                    "data.image_size": args.size,
                    "data.rect": mode == "rect",
                    "train.epochs": 1,
                    "train.batch_size": args.batch,
                    "data.limit_train": args.steps * args.batch,
                    "data.limit_test": 2,
                    "sched.warmup_epochs": 0.0,
                },
                task="detect",
            )
            for mode in ("square", "rect")
        }
        speeds: dict[str, list[float]] = {"square": [], "rect": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for mode, cfg in cfgs.items():
                    speeds[mode].append(full_img_per_s(cfg, Path(tmp) / f"{mode}{i}", "detect"))
                print(f"{spec} repeat {i + 1}: " + ", ".join(
                    f"{m} {v[-1]:.2f} img/s" for m, v in speeds.items()), flush=True)  # fmt: skip
        ratios = [r / s for r, s in zip(speeds["rect"], speeds["square"], strict=True)]
        rows.append(
            {
                "data": spec,
                "img_per_s": speeds,
                "ratio_rect_over_square": statistics.median(ratios),
                "padding_share": {m: padding_share(c) for m, c in cfgs.items()},
            }
        )
        print(f"{spec}: rect / square = {rows[-1]['ratio_rect_over_square']:.2f}x")
    result = {
        "benchmark": "rect_speed",
        "command": "python benchmarks/rect_speed.py " + " ".join(sys.argv[1:]),
        "recipe": args.recipe,
        "image_size": args.size,
        "batch": args.batch,
        "steps_per_repeat": args.steps,
        "rows": rows,
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
