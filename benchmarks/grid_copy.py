"""Keep a grid's results in the repository, and put them back on a fresh checkout.

    python benchmarks/grid_copy.py save runs/native-aerial docs/results/native-aerial
    python benchmarks/grid_copy.py restore docs/results/native-aerial runs/native-aerial

save: the grid's report files (results.jsonl, report.md, grid.json, bag.json, the PNGs) and
each finished run's summary.json, metrics.jsonl, config.yaml and curves.png, never its
checkpoints; run it while a grid trains so that no result lives only in the ignored runs/.
restore: each saved run folder goes back where its grid expects it (config.yaml rebuilt from
results.jsonl where the copy lacks it), so rerunning the grid's command skips those runs as
finished instead of training them again. Their checkpoints are not restored: a benchmark that
reloads last.pt (benchmarks/native_inference.py) sees only the runs trained on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

GRID_FILES = ("results.jsonl", "report.md", "grid.json", "bag.json")
RUN_FILES = ("summary.json", "metrics.jsonl", "config.yaml", "curves.png")


def _copy(src: Path, dst: Path, names: tuple[str, ...]) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied += 1
    return copied


def save(grid: Path, dest: Path) -> int:
    """Copy `grid`'s results and its finished runs into `dest`; returns the runs copied."""
    _copy(grid, dest, GRID_FILES + tuple(p.name for p in grid.glob("*.png")))
    done = [r for r in sorted((grid / "runs").glob("*")) if (r / "summary.json").is_file()]
    for run in done:
        _copy(run, dest / "runs" / run.name, RUN_FILES)
    return len(done)


def restore(dest: Path, grid: Path) -> int:
    """Put `dest`'s saved runs back under `grid`/runs; returns the runs restored."""
    rows = [json.loads(x) for x in (dest / "results.jsonl").read_text().splitlines() if x]
    restored = 0
    for row in rows:
        name = Path(row["run"]).name
        target = grid / "runs" / name
        if (target / "summary.json").is_file() or not (dest / "runs" / name).is_dir():
            continue
        _copy(dest / "runs" / name, target, RUN_FILES)
        if not (target / "config.yaml").is_file():
            (target / "config.yaml").write_text(yaml.safe_dump(row["config"], sort_keys=False))
        restored += 1
    return restored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["save", "restore"])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args()
    n = (save if args.action == "save" else restore)(args.src, args.dst)
    print(f"{args.action}: {n} runs from {args.src} to {args.dst}")


if __name__ == "__main__":
    main()
