"""The ablation report: per-variant mean ± std, paired Δ against the baseline with a 95%
interval (paired t, n - 1 degrees of freedom), cost ratios; `report.md`, `delta.png`,
`curves.png`, all rebuilt from `results.jsonl` alone.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from freebies.errors import UsageError

BASELINE = "baseline"


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile for p in (0.5, 1), integer df >= 1, by bisection on the exact CDF.

    The two-sided probability P(|T| < t) has closed forms in theta = atan(t / sqrt(df))
    (Abramowitz & Stegun 26.7.3/26.7.4), so no special functions are needed.
    """
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")

    def inside(t: float) -> float:  # P(|T| < t)
        theta = math.atan(t / math.sqrt(df))
        c2 = math.cos(theta) ** 2
        if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...))
            term, total = 1.0, 1.0 if df > 1 else 0.0
            for k in range(1, (df - 1) // 2):
                term *= c2 * 2 * k / (2 * k + 1)
                total += term
            return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
        term = total = 1.0  # even: sin (1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...)
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total

    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while inside(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < target else (lo, mid)
    return (lo + hi) / 2


def paired_delta(variant: dict[int, float], base: dict[int, float]) -> dict[str, Any] | None:
    """Δ = variant - baseline on the seeds both have: mean, 95% CI (paired t), n, per seed."""
    seeds = sorted(set(variant) & set(base))
    if not seeds:
        return None
    d = [variant[s] - base[s] for s in seeds]
    mean = statistics.mean(d)
    out: dict[str, Any] = {"mean": mean, "n": len(d), "per_seed": d, "lo": None, "hi": None}
    if len(d) > 1:
        half = t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        out.update(lo=mean - half, hi=mean + half)
    return out


def includes_zero(delta: dict[str, Any]) -> bool:
    return delta["lo"] is None or delta["lo"] <= 0 <= delta["hi"]


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"{path} not found; run `freebies ablate --out {path.parent}` first")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(
                    f"{path}:{i} is not a JSON line; fix or remove that line"
                ) from None
    return rows


def summarize(rows: list[dict]) -> list[dict[str, Any]]:
    """One entry per variant (in the order they first appear): per-seed metrics, Δ, costs."""
    variants: dict[str, list[dict]] = {}
    for r in rows:
        variants.setdefault(r["variant"], []).append(r)
    if BASELINE not in variants:
        raise UsageError("results.jsonl has no baseline run yet; let the grid run its baseline")
    ok = {name: [r for r in rs if "error" not in r] for name, rs in variants.items()}

    def by_seed(name: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in ok[name] if r.get(key) is not None}

    base_ok = ok[BASELINE]
    base_time = statistics.mean(r["train_s"] for r in base_ok) if base_ok else None
    base_macs = base_ok[0].get("infer_macs") if base_ok else None
    out = []
    for name, rs in variants.items():
        good = ok[name]
        entry: dict[str, Any] = {
            "variant": name,
            "tricks": rs[0]["tricks"],
            "overrides": rs[0]["overrides"],
            "command": rs[0]["command"],
            "seeds": sorted(r["seed"] for r in good),
            "errors": [f"seed {r['seed']}: {r['error']}" for r in rs if "error" in r],
            "chosen_by": rs[0].get("chosen_by"),
        }
        for split in ("test", "val"):
            accs = by_seed(name, f"{split}_acc")
            if accs:
                entry[split] = {
                    "mean": statistics.mean(accs.values()),
                    "std": statistics.stdev(accs.values()) if len(accs) > 1 else None,
                    "delta": paired_delta(accs, by_seed(BASELINE, f"{split}_acc")),
                }
        if good and base_time:
            teacher = statistics.mean(r.get("teacher", {}).get("train_s") or 0.0 for r in good)
            entry["time_ratio"] = (
                statistics.mean(r["train_s"] for r in good) + teacher
            ) / base_time
            entry["teachers"] = {r["seed"]: r["teacher"] for r in good if r.get("teacher")}
            macs = good[0].get("infer_macs")
            entry["infer_ratio"] = macs / base_macs if macs and base_macs else None
            if all("peak_mem_mb" in r for r in good):
                entry["peak_mem_mb"] = max(r["peak_mem_mb"] for r in good)
        out.append(entry)
    return out


def _acc(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if stats["std"] is not None else "")


def _delta(stats: dict | None, baseline: bool) -> str:
    if stats is None or baseline or stats["delta"] is None:
        return "-"
    d = stats["delta"]
    if d["lo"] is None:
        return f"{d['mean']:+.2f} (n=1, no interval)"
    flag = " ~0" if includes_zero(d) else ""
    return f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]{flag}"


def _ratio_cost(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return "0" if abs(ratio - 1) < 1e-9 else f"{100 * (ratio - 1):+.0f}%"


def markdown(rows: list[dict], entries: list[dict]) -> str:
    """report.md: header (what ran where), the table, notes on teachers, bag and failures."""
    first = next((r for r in rows if "error" not in r), rows[0])
    has_val = any("val" in e for e in entries)
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "# Ablation report",
        "",
        f"Grid command: `{first.get('grid_command', '?')}`  ",
        f"Machine: {first.get('machine', '?')}; torch {first.get('torch', '?')}; "
        f"device {first.get('device', '?')}; seeds {seeds}; "
        f"{first['config']['train']['epochs']} epochs; data `{first['config']['data']['spec']}`"
        + (f", {first['config']['data']['val_split']:g} held out for validation" if has_val else "")
        + ".",
        "",
        "Top-1 accuracy in %, mean ± std over seeds. Δ is against the baseline on the same seeds, "
        "with a 95% interval from paired seeds (paired t, n - 1 degrees of freedom); "
        "`~0` marks an interval that includes 0. Train time is relative to the baseline's "
        "(a distillation variant includes its teacher's training); inference cost is the extra "
        "multiply-accumulates per image of the deployed model (ACNet fused, TTA counted).",
        "",
    ]
    head = ["variant", "test acc", "Δ test [95% CI]"]
    if has_val:
        head += ["val acc", "Δ val [95% CI]"]
    head += ["train time", "inference cost", "peak mem MB", "command"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        base = e["variant"] == BASELINE
        cells = [e["variant"], _acc(e.get("test")), _delta(e.get("test"), base)]
        if has_val:
            cells += [_acc(e.get("val")), _delta(e.get("val"), base)]
        time_ratio = e.get("time_ratio")
        cells += [
            f"{time_ratio:.2f}x" if time_ratio is not None else "-",
            _ratio_cost(e.get("infer_ratio")),
            f"{e['peak_mem_mb']:.0f}" if "peak_mem_mb" in e else "-",
            f"`{e['command']}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for e in entries:
        for seed, t in sorted(e.get("teachers", {}).items()):
            head = f"- `{e['variant']}` seed {seed}: teacher {t['source']}; its training time "
            notes.append(
                head + f"({t['train_s']:.0f} s) is counted in the train time."
                if t.get("train_s") is not None
                else head + "is unknown (no summary.json beside it) and is not counted."
            )
        if e.get("chosen_by"):
            notes.append(f"- `{e['variant']}`: {e['chosen_by']}")
        notes += [f"- `{e['variant']}` failed: {msg}" for msg in e["errors"]]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def plot_delta(entries: list[dict], path: Path) -> None:
    """Bar chart of Δ against the baseline with the 95% interval, test (and val) side by side."""
    from freebies.report.plots import plt

    splits = [s for s in ("test", "val") if any(s in e for e in entries)]
    shown = [e for e in entries if e["variant"] != BASELINE and "test" in e]
    fig, axes = plt.subplots(
        1, len(splits), figsize=(6 * len(splits), 1.2 + 0.32 * max(len(shown), 1)), squeeze=False
    )
    for ax, split in zip(axes[0], splits, strict=True):
        rows = [(e["variant"], e[split]["delta"]) for e in shown if e.get(split, {}).get("delta")]
        for i, (_, d) in enumerate(rows):
            err = None if d["lo"] is None else [[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]]
            color = "0.6" if includes_zero(d) else ("tab:green" if d["mean"] > 0 else "tab:red")
            ax.barh(i, d["mean"], xerr=err, color=color, capsize=3)
        ax.set_yticks(range(len(rows)), [name for name, _ in rows])
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set(title=f"Δ {split} top-1 vs baseline (95% CI)", xlabel="percentage points")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Test accuracy against epoch, mean over seeds, one line per variant."""
    from freebies.report.plots import MaxNLocator, plt

    curves: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        for epoch, acc in r.get("curve", []):
            curves.setdefault(r["variant"], {}).setdefault(epoch, []).append(acc)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    cmap = plt.get_cmap("tab20")
    for i, (name, points) in enumerate(curves.items()):
        epochs = sorted(points)
        style = "-" if name == BASELINE else ("--", ":", "-.")[i % 3]
        ax.plot(
            epochs,
            [statistics.mean(points[e]) for e in epochs],
            style,
            marker="o",
            ms=3,
            color="black" if name == BASELINE else cmap(i % 20),
            lw=2.2 if name == BASELINE else 1.2,
            label=name,
        )
    ax.set(title="test top-1 by epoch (mean over seeds)", xlabel="epoch", ylabel="%")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path) -> list[dict]:
    """Rebuild report.md, delta.png and curves.png in `out` from its results.jsonl."""
    from freebies import checkpoint

    rows = read_results(out / "results.jsonl")
    entries = summarize(rows)
    checkpoint.write_text(out / "report.md", markdown(rows, entries))
    plot_delta(entries, out / "delta.png")
    plot_curves(rows, out / "curves.png")
    return entries
