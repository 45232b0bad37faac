"""Sharded ablation grids: wall time of one 12-run grid as 1 process against 2 local shards,
and what claiming and merging cost per run.

The grid: baseline + 3 tricks x 3 seeds = 12 runs of `freebies train` (airnet-8-8-8, a
synthetic Fashion-MNIST look-alike written by tests/fakedata.py, 2 epochs), once as
`freebies ablate` in one process and once as `--launcher local --shards 2` into another folder.
The claim / record / merge overhead is timed in-process on an empty grid folder, without any
training, over `--repeats` runs; the report rebuild (plots) is timed on the finished grid.

`--task detect` times a grid whose runs are long enough for training to dominate: BCCD
(../shared/data/bccd), the `detect-bccd` recipe, baseline + colour jitter x 2 seeds, 2 epochs
of 96 images each, as 1 process (all cores) against 2 local shards (the cores split between
them, OMP_NUM_THREADS = cores // 2).

    python benchmarks/ablate_shards.py
    python benchmarks/ablate_shards.py --task detect --out docs/results/ablate_shards_detect.json

Writes the JSON (machine, torch version, seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fakedata import write_idx  # noqa: E402
from freebies.experiments import shards  # noqa: E402
from freebies.report.table import write_report  # noqa: E402
from freebies.runtime import provenance  # noqa: E402

TRICKS = "label_smoothing,cosine,nesterov"
SEEDS = 3  # 0, 1, 2: 4 variants x 3 seeds = 12 runs


def grid_argv(data: Path, out: Path, epochs: int) -> list[str]:
    return ["ablate", "--data", f"fashion-mnist:{data}", "--model", "airnet-8-8-8",
            "--epochs", str(epochs), "--batch-size", "64", "--tricks", TRICKS,
            "--seeds", str(SEEDS), "--out", str(out)]  # fmt: skip


def timed(argv: list[str]) -> float:
    """Wall seconds of one `freebies` command, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "freebies", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"freebies {' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def detect_argv(out: Path, epochs: int) -> list[str]:
    return ["ablate", "--task", "detect", "--recipe", "detect-bccd", "--tricks", "det_color_jitter",
            "--seeds", "2", "--out", str(out), "--epochs", str(epochs), "--limit-train", "96",
            "--limit-test", "16", "--set", "train.eval_every=100"]  # fmt: skip


def detect(epochs: int) -> dict:
    """A grid of 4 detection runs, 1 process against 2 local shards; throughput as runs/hour."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one_s = timed(detect_argv(root / "one", epochs))
        two_s = timed([*detect_argv(root / "two", epochs), "--launcher", "local", "--shards", "2"])
        maps = {k: rows(root / k, ("variant", "seed", "map")) for k in ("one", "two")}
        lines = {k: (root / k / "results.jsonl").read_text().splitlines() for k in maps}
        train_s = {k: [json.loads(x)["train_img_per_s"] for x in v] for k, v in lines.items()}
    return {
        "what": "4-run detection grid (BCCD, detect-bccd, baseline + det_color_jitter x seeds "
        f"0 1, {epochs} epochs of 96 images): 1 process vs --launcher local --shards 2",
        "provenance": provenance(),  # the one process's threads; each shard ran cores // 2
        "cpus": len(os.sched_getaffinity(0)),
        "one_process_s": one_s,
        "two_shards_s": two_s,
        "speedup": one_s / two_s,
        "train_img_per_s_per_run": train_s,
        "map": maps,  # not bit-equal: 1 and 2 intra-op threads sum in another order
    }


def rows(out: Path, keys: tuple[str, ...] = ("variant", "seed", "test_acc", "test_nll")) -> list:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [{k: json.loads(x)[k] for k in keys} for x in lines]


def overhead(repeats: int) -> dict[str, float]:
    """Milliseconds per run to claim it, record its row and merge results.jsonl (no plots)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        names = [f"run{i}-s0" for i in range(repeats)]
        book = shards.Ledger(out, names, bag=False)
        row = json.loads((ROOT / "docs/results/fashion-mnist/results.jsonl").open().readline())
        claim_s, merge_s = [], []
        for name in names:
            t0 = time.perf_counter()
            shards.claim(out, name, (1, 1))
            t1 = time.perf_counter()
            book.record(name, row)
            with shards.merging(out):
                book.merge()
            merge_s.append(time.perf_counter() - t1)
            claim_s.append(t1 - t0)
    return {
        "claim_ms": 1e3 * statistics.median(claim_s),
        "record_and_merge_ms_median": 1e3 * statistics.median(merge_s),
        "record_and_merge_ms_last": 1e3 * merge_s[-1],  # merging reads every row so far
        "runs": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=100, help="runs for the overhead timing")
    p.add_argument("--out", type=Path, help="default docs/results/ablate_shards[_detect].json")
    p.add_argument("--task", choices=("classify", "detect"), default="classify")
    args = p.parse_args()
    name = "ablate_shards_detect.json" if args.task == "detect" else "ablate_shards.json"
    args.out = args.out or ROOT / "docs" / "results" / name
    if args.task == "detect":
        result = detect(args.epochs)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_idx(root / "data", n_train=512, n_test=256)
        one_s = timed(grid_argv(root / "data", root / "one", args.epochs))
        two = grid_argv(root / "data", root / "two", args.epochs)
        two_s = timed([*two, "--launcher", "local", "--shards", "2"])
        same = rows(root / "one") == rows(root / "two")
        start = time.perf_counter()
        write_report(root / "two")
        report_s = time.perf_counter() - start
        lines = (root / "one" / "results.jsonl").read_text().splitlines()
        train_s = [json.loads(x)["wall_s"] for x in lines]
    result = {
        "what": "12-run freebies ablate grid: 1 process vs --launcher local --shards 2",
        "grid": {"tricks": TRICKS, "seeds": list(range(SEEDS)), "epochs": args.epochs,
                 "model": "airnet-8-8-8", "data": "tests/fakedata.write_idx 512 train / 256 test"},
        "provenance": provenance(),
        "cpus": len(os.sched_getaffinity(0)),
        "one_process_s": one_s,
        "two_shards_s": two_s,
        "speedup": one_s / two_s,
        "same_rows": same,
        "run_wall_s_mean": statistics.mean(train_s),
        "report_rebuild_s": report_s,
        "overhead": overhead(args.repeats),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
