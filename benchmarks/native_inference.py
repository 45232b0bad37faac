"""Tiles and the image pyramid on trained detectors, cut from the images' own pixels: what
each buys on validation and on test, paired over seeds, and what it costs.

For every finished run of an ablate grid (`freebies ablate --task detect`), evaluates its
last.pt with `freebies.detect.evaluate_options` (the data loaded once per split) on the
validation split (when the run had one) and the test split, as trained (a full-image model:
one pass; a slice-trained one: its tiles at the trained scale) and with each option below:
tiles and the pyramid for a full-image model; for a slice-trained one, its pyramid (tiles
enlarged 1.5x and 2x). Per grid variant and option: the mean and the paired 95% t-interval
over seeds of Δ map and Δ AP-small against the run as trained, and the cost over it. The
option to use is the one with the best Δ val map; its test figure is read after that choice.
The result file is written after every run, and a rerun reuses the runs it already holds, so
an interrupted benchmark resumes.

    python benchmarks/native_inference.py GRID [GRID ...] [--out docs/results/native_inference.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats

from freebies import detect
from freebies.data.io import write_text
from freebies.runtime import provenance

PYRAMID = {"pyramid": {"pyramid": "1,1.5,2"}, "pyramid+snip": {"pyramid": "1,1.5,2", "snip": 32.0}}
OPTIONS = {  # sliced: whether the run was slice-trained
    False: {"tiles": {"auto_tiles": True}, "tiles+snip": {"auto_tiles": True, "snip": 32.0}}
    | PYRAMID,
    True: PYRAMID,
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


def evaluate_run(folder: Path, splits: tuple[str, ...], sliced: bool) -> dict[str, dict]:
    """{split: {"as trained" | option: metrics}} of one run's last.pt."""
    out: dict[str, dict[str, dict]] = {}
    for split in splits:
        options = {"as trained": {}} | OPTIONS[sliced]
        r = detect.evaluate_options(folder / "last.pt", options, split=split)
        base = r["as trained"]
        out[split] = {
            name: {k: m[k] for k in KEYS}
            | (
                {"img_per_s": m["img_per_s"]}  # inference speed: compare across variants
                if name == "as trained"
                else {
                    "cost": base["img_per_s"] / m["img_per_s"],
                    "inference": m.get("inference", "one pass (the option added nothing)"),
                }
            )
            for name, m in r.items()
        }
        print(f"{folder.name} {split}: " + ", ".join(
            f"{n} {m['map'] if m['map'] is None else round(m['map'], 1)}"
            for n, m in out[split].items()), flush=True)  # fmt: skip
    return out


def summarize(per_seed: list[dict], splits: tuple[str, ...], names: list[str]) -> dict:
    """Per option: Δ (paired over the runs) on each split against the run as trained, cost, and
    (with a validation split) the option that val chooses."""
    rows = {}
    for name in names:
        rows[name] = {
            split: {
                f"delta_{k}": paired(
                    [r[split][name][k] for r in per_seed],
                    [r[split]["as trained"][k] for r in per_seed],
                )
                for k in KEYS
            }
            for split in splits
        }
        rows[name]["cost"] = statistics.mean(r["test"][name]["cost"] for r in per_seed)
    if "val" not in splits:
        return {"options": rows, "chosen_on_val": None}
    best = max(rows, key=lambda n: (rows[n]["val"]["delta_map"] or {"mean": -1e9})["mean"])
    helps = (rows[best]["val"]["delta_map"] or {"mean": 0})["mean"] > 0
    return {"options": rows, "chosen_on_val": best if helps else "as trained"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/results/native_inference.json"))
    args = p.parse_args()
    result = {"options": {"full image": OPTIONS[False], "sliced": OPTIONS[True]}, **provenance()}
    done = _evaluated(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for grid in args.grids:
        rows = [json.loads(x) for x in (grid / "results.jsonl").read_text().splitlines() if x]
        variants: dict[str, list[dict]] = {}
        skipped = []  # failed runs, and runs restored without their checkpoint (grid_copy.py)
        for row in rows:
            folder = grid / "runs" / Path(row["run"]).name
            if "error" in row or not (folder / "last.pt").is_file():
                skipped.append(str(folder))
                continue
            sliced = bool(((row.get("config") or {}).get("det") or {}).get("slice_size"))
            has_val = row.get("val_map") is not None  # the run validated: it has a val split
            splits = ("val", "test") if has_val else ("test",)
            run = done.get(str(folder))
            if run is None:
                run = {"seed": row["seed"], "run": str(folder), "sliced": sliced}
                run |= evaluate_run(folder, splits, sliced)
            variants.setdefault(row["variant"], []).append(run)
            result[str(grid)] = _grid_result(variants, skipped)
            # after every run, atomically: a killed benchmark resumes from here
            write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _evaluated(path: Path) -> dict[str, dict]:
    """The runs an earlier, interrupted invocation already wrote to `path`, by run folder."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    return {
        r["run"]: r
        for grid in old.values()
        if isinstance(grid, dict)
        for v in grid.values()
        if isinstance(v, dict)
        for r in v.get("per_seed", [])
    }


def _grid_result(variants: dict[str, list[dict]], skipped: list[str]) -> dict:
    return {
        v: summarize(
            runs,
            ("val", "test") if "val" in runs[0] else ("test",),
            list(OPTIONS[runs[0]["sliced"]]),
        )
        | {"per_seed": runs}
        for v, runs in variants.items()
    } | {"skipped (failed, or no last.pt)": skipped}


if __name__ == "__main__":
    main()
