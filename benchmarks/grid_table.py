"""A detection grid's results as the tables of docs/results/detection.md: per variant, the test
and validation map (mean over seeds), the paired Δ against the baseline with its 95% interval,
the training loss at two epochs (underfitting shows there) and the test AP per class (classes
the test split holds); with `--cost`, also each variant's training minutes, img/s and peak
memory (means over seeds).

    python benchmarks/grid_table.py docs/results/detection-ablation-bccd-conv [--loss-at 10 20]
        [--cost] [--sizes]

Reads the grid's results.jsonl and each run's metrics.jsonl (its `run` folder, or the grid's
copy under runs/); prints markdown. Means and paired intervals are `freebies report`'s own
(freebies.report.table.summarize), on the metric the grid recorded.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from freebies.report.table import loss_curve, read_metric, read_results, summarize


def signed(x: float) -> str:
    return f"{x:+.1f}".replace("-", "−")


def interval(d: dict | None) -> str:
    if d is None:
        return ""
    if d["lo"] is None:
        return signed(d["mean"])
    return f"{signed(d['mean'])} [{signed(d['lo'])}, {signed(d['hi'])}]"


def mean(values: list[float | None], fmt: str) -> str:
    """The mean of the values present, formatted; "n/a" when none is."""
    have = [v for v in values if v is not None]
    return format(statistics.mean(have), fmt) if have else "n/a"


def losses(rows: list[dict], grid: Path, epochs: list[int]) -> str:
    """The mean training loss over seeds at each of `epochs`."""
    at: dict[int, list[float]] = {e: [] for e in epochs}
    for row in rows:
        if not Path(row["run"]).is_dir():  # a copied grid: its runs/ beside results.jsonl
            row = row | {"run": str(grid / "runs" / Path(row["run"]).name)}
        curve = dict((int(e), v) for e, v in loss_curve(row).get("loss_curve", []))
        for e in epochs:
            at[e].append(curve.get(e))
    return " / ".join(mean(v, ".2f") for v in at.values())


def cost(runs: list[dict]) -> str:
    """Mean training minutes and training img/s, and the largest peak memory (GB, as report.md
    takes it) over a variant's runs; "-" where a run lacks the figure."""
    cells = []
    for key, div, agg, digits in (
        ("train_s", 60, statistics.mean, 1),
        ("train_img_per_s", 1, statistics.mean, 1),
        ("peak_mem_mb", 1024, max, 2),
    ):
        have = [r[key] for r in runs if r.get(key) is not None]
        cells.append(f"{agg(have) / div:.{digits}f}" if have else "-")
    return " | " + " | ".join(cells)


SIZES = {"small": "map_small", "medium": "map_medium", "large": "map_large"}


def table(grid: Path, epochs: list[int], with_cost: bool = False, sizes: bool = False) -> str:
    rows = [r for r in read_results(grid / "results.jsonl") if "error" not in r]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    if "baseline" not in by:
        raise SystemExit(f"{grid}: no finished baseline run, so nothing to compare against")
    aps = by["baseline"][0]["ap_per_class"]
    classes = [c for c in aps if aps[c] is not None]  # None: the test split has none
    columns = list(SIZES) if sizes else classes
    extra = " | train min | img/s | peak GB" if with_cost else ""
    out = [
        f"| variant | seeds | test map | Δ test [95% CI] | val map | Δ val [95% CI] "
        f"| train loss ep. {' / '.join(map(str, epochs))} | {' / '.join(columns)} AP{extra} |",
        "| --- | ---: | ---: | --- | ---: | --- | --- | ---" + " | ---:" * (3 * with_cost) + " |",
    ]
    for e in summarize(rows, read_metric(grid)):  # means and paired Δ, as in report.md
        runs = by[e["variant"]]
        kind = runs[0]["kind"]
        label = {"cumulative": f"stack of all {len(e['tricks'])}", "bag": "bag"}.get(
            kind, e["variant"]
        )
        if kind == "bag":
            label += f" ({', '.join(e['tricks'])})"
        aps = [
            [r.get(SIZES[c]) if sizes else r["ap_per_class"].get(c) for r in runs] for c in columns
        ]
        per_column = " / ".join(mean(a, ".1f") for a in aps)
        cells = []
        for slot in ("metric", "val"):  # a grid without a validation split has no "val"
            d = e.get(slot)
            cells += [f"{d['mean']:.1f}" if d else "n/a", "" if not d or kind == "baseline"
                      else interval(d["delta"])]  # fmt: skip
        out.append(
            f"| {label} | {len(runs)} | {' | '.join(cells)} | {losses(runs, grid, epochs)} "
            f"| {per_column}{cost(runs) if with_cost else ''} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", type=Path)
    p.add_argument("--loss-at", type=int, nargs="+", default=[10, 20])
    p.add_argument("--cost", action="store_true", help="add training minutes, img/s, peak GB")
    p.add_argument("--sizes", action="store_true", help="AP by COCO size bin, not by class")
    args = p.parse_args()
    print(table(args.grid, args.loss_at, args.cost, args.sizes))


if __name__ == "__main__":
    main()
