"""How tight can the DDP equivalence test be, and how large is a real DDP bug?

Trains the test suite's set-up (256 learnable 28x28 images, GroupNorm ResNet-20, batch 64, one
epoch, augmentation off, linear LR scaling) as one process and as two `torchrun` processes of
32 each, in float64 and in float32, and prints the largest weight difference. Beside them, two
single-process float64 runs that reproduce what a DDP bug would do: gradients summed instead
of averaged (the LR doubled), and each step seeing only one rank's shard (half the batch at
the same LR, twice the steps).

    python benchmarks/ddp_tolerance.py [--out docs/results/ddp_tolerance.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from freebies.runtime import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakedata import write_idx

COMMON = [
    *("--epochs", "1", "--batch-size", "64", "--set", "model.norm=gn"),
    *("--set", "aug.crop_padding=0", "--set", "aug.hflip=false", "--set", "optim.lr=0.2"),
    *("--set", "optim.lr_scaling=linear", "--set", "train.eval_batch_size=64"),
]
FP64 = ["--set", "train.precision=fp64"]


def train(work: Path, name: str, extra: list[str], ddp: bool = False) -> dict:
    launch = [sys.executable]
    if ddp:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    data = ["--data", f"fashion-mnist:{work / 'data'}"]
    cmd = [*launch, "-m", "freebies", "train", *data, *COMMON, *extra, "--out", str(work / name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return torch.load(work / name / "last.pt", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    return max(
        (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/results/ddp_tolerance.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_idx(work / "data", n_train=256, n_test=128)
        one64 = train(work, "one64", FP64)
        result = {
            "fp64: 1 process vs 2": max_diff(one64, train(work, "two64", FP64, ddp=True)),
            "fp32: 1 process vs 2": max_diff(
                train(work, "one32", []), train(work, "two32", [], ddp=True)
            ),
            "bug, gradients summed not averaged (fp64, LR x2)": max_diff(
                one64, train(work, "lr2", [*FP64, "--set", "optim.lr=0.4"])
            ),
            "bug, one shard per step (fp64, half batch, same LR)": max_diff(
                one64,
                train(
                    work, "half", [*FP64, "--batch-size", "32", "--set", "optim.lr_base_batch=128"]
                ),
            ),
        }
    for name, value in result.items():
        print(f"{name:55s} max |dw| = {value:.3g}")
    record = {
        "command": "python benchmarks/ddp_tolerance.py",
        "machine": machine(),
        "torch": torch.__version__,
        "seeds": [0],
        "max_abs_weight_difference": result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
