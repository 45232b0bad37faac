"""Tiles and the image pyramid on full-image detectors, cut from the images' own pixels: what
each buys on validation and on test, paired over seeds, and what it costs.

For every finished full-image run of an ablate grid (`freebies ablate --task detect`; runs of
slice-trained models are skipped, they are always run tiled at their trained scale), evaluates
its last.pt with `freebies.detect.evaluate_checkpoint` on the validation split (when the run
had one) and the test split:
each OPTION below against the single pass of the same run. Per grid variant and option: the
mean and the paired 95% t-interval over seeds of Δ map and Δ AP-small, and the cost over the
single pass. The option to use is the one with the best Δ val map; its test figure is read
after that choice.

    python benchmarks/native_inference.py GRID [GRID ...] [--out docs/results/native_inference.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats

from freebies import detect
from freebies.runtime import provenance

OPTIONS = {
    "tiles": {"auto_tiles": True},
    "tiles+snip": {"auto_tiles": True, "snip": 32.0},
    "pyramid": {"pyramid": "1,1.5,2"},
    "pyramid+snip": {"pyramid": "1,1.5,2", "snip": 32.0},
}
KEYS = ("map", "map_small")


def paired(values: list[float | None], base: list[float | None]) -> dict | None:
    """Mean and 95% t-interval of the paired differences (None where a figure is missing)."""
    d = [a - b for a, b in zip(values, base, strict=True) if a is not None and b is not None]
    if not d:
        return None
    mean = statistics.mean(d)
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "per_seed": d}


def evaluate_run(folder: Path, splits: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """{split: {"single" | option: metrics}} of one run's last.pt. An option that adds nothing
    (--auto-tiles finding that no tiling pays) is the single pass at cost 1."""
    out: dict[str, dict[str, dict]] = {}
    for split in splits:
        out[split] = {}
        for name, options in OPTIONS.items():
            r = detect.evaluate_checkpoint(folder / "last.pt", multiscale=options, split=split)
            if "single" not in r:  # the options left the single pass
                r |= {"single": r, "cost_vs_single": 1.0, "inference": "single pass"}
            out[split]["single"] = r["single"]
            out[split][name] = {k: r[k] for k in KEYS} | {
                "cost_vs_single": r["cost_vs_single"],
                "inference": r["inference"],
            }
        print(f"{folder.name} {split}: " + ", ".join(
            f"{n} {m['map']:.1f}" for n, m in out[split].items()), flush=True)  # fmt: skip
    return out


def summarize(per_seed: list[dict], splits: tuple[str, ...]) -> dict:
    """Per option: Δ (paired over the runs) on each split, cost, and (with a validation split)
    the option that val chooses."""
    rows = {}
    for name in OPTIONS:
        rows[name] = {
            split: {
                f"delta_{k}": paired(
                    [r[split][name][k] for r in per_seed], [r[split]["single"][k] for r in per_seed]
                )
                for k in KEYS
            }
            for split in splits
        }
        rows[name]["cost_vs_single"] = statistics.mean(
            r["test"][name]["cost_vs_single"] for r in per_seed
        )
    if "val" not in splits:
        return {"options": rows, "chosen_on_val": None}
    best = max(rows, key=lambda n: (rows[n]["val"]["delta_map"] or {"mean": -1e9})["mean"])
    helps = (rows[best]["val"]["delta_map"] or {"mean": 0})["mean"] > 0
    return {"options": rows, "chosen_on_val": best if helps else "single"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/results/native_inference.json"))
    args = p.parse_args()
    result = {"options": OPTIONS, **provenance()}
    for grid in args.grids:
        rows = [json.loads(x) for x in (grid / "results.jsonl").read_text().splitlines() if x]
        variants: dict[str, list[dict]] = {}
        for row in rows:
            if "error" in row or ((row.get("config") or {}).get("det") or {}).get("slice_size"):
                continue  # failed, or slice-trained (always run tiled at its trained scale)
            folder = grid / "runs" / Path(row["run"]).name
            has_val = row.get("val_map") is not None  # the run validated: it has a val split
            splits = ("val", "test") if has_val else ("test",)
            variants.setdefault(row["variant"], []).append(
                {"seed": row["seed"], "run": str(folder), **evaluate_run(folder, splits)}
            )
        result[str(grid)] = {
            v: summarize(runs, ("val", "test") if "val" in runs[0] else ("test",))
            | {"per_seed": runs}
            for v, runs in variants.items()
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every grid
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
