"""A detection grid's results as the tables of docs/results/detection.md: per variant, the test
and validation map (mean over seeds), the paired Δ against the baseline with its 95% interval,
the training loss at two epochs (underfitting shows there) and the test AP per class.

    python benchmarks/grid_table.py docs/results/detection-ablation-bccd-conv [--loss-at 10 20]

Reads the grid's results.jsonl and each run's metrics.jsonl (its `run` folder, or the grid's
copy under runs/); prints markdown. Seeds missing from a variant are left out of its pairing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from freebies.report.table import loss_curve, paired_delta


def signed(x: float) -> str:
    return f"{x:+.1f}".replace("-", "−")


def interval(d: dict | None) -> str:
    if d is None:
        return ""
    if d["lo"] is None:
        return signed(d["mean"])
    return f"{signed(d['mean'])} [{signed(d['lo'])}, {signed(d['hi'])}]"


def losses(rows: list[dict], grid: Path, epochs: list[int]) -> str:
    """The mean training loss over seeds at each of `epochs`."""
    at: dict[int, list[float]] = {e: [] for e in epochs}
    for row in rows:
        if not Path(row["run"]).is_dir():  # a copied grid: its runs/ beside results.jsonl
            row = row | {"run": str(grid / "runs" / Path(row["run"]).name)}
        curve = dict((int(e), v) for e, v in loss_curve(row).get("loss_curve", []))
        for e in epochs:
            if e in curve:
                at[e].append(curve[e])
    return " / ".join(f"{statistics.mean(v):.2f}" if v else "n/a" for v in at.values())


def table(grid: Path, epochs: list[int]) -> str:
    rows = [json.loads(x) for x in (grid / "results.jsonl").read_text().splitlines() if x]
    rows = [r for r in rows if "error" not in r]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    base = {r["seed"]: r for r in by["baseline"]}
    classes = list(by["baseline"][0]["ap_per_class"])
    loss_head = " / ".join(str(e) for e in epochs)
    out = [
        f"| variant | seeds | test map | Δ test [95% CI] | val map | Δ val [95% CI] "
        f"| train loss ep. {loss_head} | {' / '.join(classes)} |",
        "| --- | ---: | ---: | --- | ---: | --- | --- | --- |",
    ]
    for name, runs in by.items():
        mine = {r["seed"]: r for r in runs}
        d_test = paired_delta(
            {s: r["map"] for s, r in mine.items()}, {s: base[s]["map"] for s in base}
        )
        d_val = paired_delta(
            {s: r["val_map"] for s, r in mine.items()}, {s: base[s]["val_map"] for s in base}
        )
        per_class = " / ".join(
            f"{statistics.mean(r['ap_per_class'][c] for r in runs):.1f}" for c in classes
        )
        is_base = name == "baseline"
        kind = runs[0]["kind"]
        label = {"cumulative": f"stack of all {len(runs[0]['tricks'])}", "bag": "bag"}.get(
            kind, name
        )
        if kind == "bag":
            label += f" ({', '.join(runs[0]['tricks'])})"
        out.append(
            f"| {label} | {len(runs)} | {statistics.mean(r['map'] for r in runs):.1f} "
            f"| {'' if is_base else interval(d_test)} "
            f"| {statistics.mean(r['val_map'] for r in runs):.1f} "
            f"| {'' if is_base else interval(d_val)} | {losses(runs, grid, epochs)} | {per_class} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", type=Path)
    p.add_argument("--loss-at", type=int, nargs="+", default=[10, 20])
    args = p.parse_args()
    print(table(args.grid, args.loss_at))


if __name__ == "__main__":
    main()
