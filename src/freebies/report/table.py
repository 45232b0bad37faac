"""The ablation report: per-variant mean ± std of one metric, paired Δ = variant - baseline
with a 95% interval (paired t, n - 1 degrees of freedom; the quantile is `scipy.stats.t.ppf`),
cost ratios; `report.md`, `delta.png`, `curves.png`, all rebuilt from `results.jsonl` and the
metric `grid.json` records (test_acc for grids from before `--metric`).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from freebies.data.io import write_text
from freebies.errors import UsageError, nearest

BASELINE = "baseline"


# Keys whose name ends so are costs or errors: lower is better. A throughput (`..._per_s`)
# ends in `_s` too but is higher-is-better.
LOWER_IS_BETTER = ("nll", "ece", "loss", "_s", "mem_mb", "macs")
# summary.json key -> its per-epoch column in metrics.jsonl, where the names differ.
CURVE_KEYS = {"test_nll": "test_loss", "val_nll": "val_loss"}


@dataclass(frozen=True)
class Metric:
    """The summary.json key a grid compares variants on, and which way is better."""

    key: str = "test_acc"
    lower_is_better: bool = False

    @classmethod
    def parse(cls, spec: str) -> Metric:
        """`KEY`, `KEY:min` or `KEY:max`; without a suffix the direction is guessed from
        the name (`test_nll`, `test_ece`, `train_s`, `peak_mem_mb` are lower-is-better)."""
        key, _, way = spec.strip().partition(":")
        if not key:
            raise UsageError("--metric is empty; give a summary.json key, e.g. test_acc")
        if way not in ("", "min", "max"):
            raise UsageError(f"--metric {spec!r}: the suffix must be :min or :max, not :{way}")
        guess = key.endswith(LOWER_IS_BETTER) and not key.endswith("per_s")
        return cls(key, way == "min" if way else guess)

    @classmethod
    def of_grid(cls, grid: dict[str, Any]) -> Metric:
        """The metric a grid.json records; grids from before `--metric` used test_acc."""
        if "metric" not in grid:
            return DEFAULT_METRIC
        return cls(grid["metric"], grid["better"] == "lower")

    @property
    def better(self) -> str:
        return "lower" if self.lower_is_better else "higher"

    @property
    def val_key(self) -> str | None:
        """The validation counterpart (`test_X` -> `val_X`), which `--bag` chooses on."""
        return None if self.key.startswith("val_") else "val_" + self.key.removeprefix("test_")

    @property
    def curve_key(self) -> str:
        return per_epoch_key(self.key)

    @property
    def percent(self) -> bool:
        return self.key.endswith("_acc")

    def improves(self, delta: float) -> bool:
        return delta < 0 if self.lower_is_better else delta > 0

    def check(self, summary: dict[str, Any], path: Path, flag: str) -> None:
        """A one-line error naming the numbers `summary` (read from `path`) does have, unless
        it has this metric as a number."""
        if _is_number(summary.get(self.key)):
            return
        numeric = sorted(k for k, v in summary.items() if _is_number(v))
        raise UsageError(
            f"{flag} {self.key!r}: {path} has no such number{nearest(self.key, numeric)}; "
            f"it has {', '.join(numeric)}"
        )


DEFAULT_METRIC = Metric()  # test_acc, higher is better


def per_epoch_key(key: str) -> str:
    """A summary.json key's column in metrics.jsonl (`test_nll` is logged as `test_loss`)."""
    return CURVE_KEYS.get(key, key)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metric(out: Path) -> Metric:
    """The metric recorded in `out/grid.json` (test_acc when there is none)."""
    path = out / "grid.json"
    return Metric.of_grid(json.loads(path.read_text())) if path.is_file() else DEFAULT_METRIC


def paired_delta(variant: dict[int, float], base: dict[int, float]) -> dict[str, Any] | None:
    """Δ = variant - baseline on the seeds both have: mean, 95% CI (paired t), n, per seed."""
    seeds = sorted(set(variant) & set(base))
    if not seeds:
        return None
    d = [variant[s] - base[s] for s in seeds]
    mean = statistics.mean(d)
    out: dict[str, Any] = {"mean": mean, "n": len(d), "per_seed": d, "lo": None, "hi": None}
    if len(d) > 1:
        half = float(stats.t.ppf(0.975, len(d) - 1)) * statistics.stdev(d) / math.sqrt(len(d))
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


def summarize(rows: list[dict], metric: Metric = DEFAULT_METRIC) -> list[dict[str, Any]]:
    """One entry per variant (in the order they first appear): per-seed metric, Δ, costs.

    `entry["metric"]` holds `metric.key` and `entry["val"]` its validation counterpart, each
    as mean, std and the paired Δ against the baseline.
    """
    variants: dict[str, list[dict]] = {}
    for r in rows:
        variants.setdefault(r["variant"], []).append(r)
    if BASELINE not in variants:
        raise UsageError("results.jsonl has no baseline run yet; let the grid run its baseline")
    ok = {name: [r for r in rs if "error" not in r] for name, rs in variants.items()}

    def by_seed(name: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in ok[name] if r.get(key) is not None}

    base_ok = ok[BASELINE]
    timed = base_ok and all("train_s" in r for r in base_ok)  # a trainer may not time itself
    base_time = statistics.mean(r["train_s"] for r in base_ok) if timed else None
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
        for slot, key in (("metric", metric.key), ("val", metric.val_key)):
            values = by_seed(name, key) if key else {}
            if values:
                entry[slot] = {
                    "mean": statistics.mean(values.values()),
                    "std": statistics.stdev(values.values()) if len(values) > 1 else None,
                    "delta": paired_delta(values, by_seed(BASELINE, key)),
                }
        if good and base_time and all("train_s" in r for r in good):
            teacher = statistics.mean(r.get("teacher", {}).get("train_s") or 0.0 for r in good)
            entry["time_ratio"] = (
                statistics.mean(r["train_s"] for r in good) + teacher
            ) / base_time
        if good:
            entry["teachers"] = {r["seed"]: r["teacher"] for r in good if r.get("teacher")}
            macs = good[0].get("infer_macs")
            entry["infer_ratio"] = macs / base_macs if macs and base_macs else None
            if all("peak_mem_mb" in r for r in good):
                entry["peak_mem_mb"] = max(r["peak_mem_mb"] for r in good)
        out.append(entry)
    return out


def _decimals(metric: Metric, entries: list[dict]) -> int:
    """2 for accuracies in %; otherwise three significant digits of the baseline's mean."""
    base = next(
        (e["metric"]["mean"] for e in entries if e["variant"] == BASELINE and "metric" in e), None
    )
    if metric.percent or not base:
        return 2
    return max(0, 2 - math.floor(math.log10(abs(base))))


def _mean(cell: dict | None, dec: int) -> str:
    if cell is None:
        return "-"
    std = f" ± {cell['std']:.{dec}f}" if cell["std"] is not None else ""
    return f"{cell['mean']:.{dec}f}{std}"


def _delta(cell: dict | None, baseline: bool, dec: int) -> str:
    if cell is None or baseline or cell["delta"] is None:
        return "-"
    d = cell["delta"]
    if d["lo"] is None:
        return f"{d['mean']:+.{dec}f} (n=1, no interval)"
    flag = " ~0" if includes_zero(d) else ""
    return f"{d['mean']:+.{dec}f} [{d['lo']:+.{dec}f}, {d['hi']:+.{dec}f}]{flag}"


def _ratio_cost(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return "0" if abs(ratio - 1) < 1e-9 else f"{100 * (ratio - 1):+.0f}%"


def _titles(metric: Metric) -> list[str]:
    """Column titles: the metric (with its direction), its Δ, then the validation pair."""
    if metric.key == "test_acc":  # the wording of the reports committed before --metric
        return ["test acc", "Δ test [95% CI]", "val acc", "Δ val [95% CI]"]
    return [
        f"{metric.key} ({metric.better} is better)",
        f"Δ {metric.key} [95% CI]",
        str(metric.val_key),
        f"Δ {metric.val_key} [95% CI]",
    ]


def _intro(metric: Metric) -> str:
    """The paragraph under the header: what the numbers are and which way is better."""
    if metric.key == "test_acc":
        what = "Top-1 accuracy in %, mean ± std over seeds. Δ is against the baseline"
    else:
        sign = "negative" if metric.lower_is_better else "positive"
        what = (
            f"`{metric.key}`{' in %' if metric.percent else ''}, mean ± std over seeds; "
            f"{metric.better} is better. Δ is variant − baseline in its units ({sign} Δ is "
            "better), against the baseline"
        )
    return (
        f"{what} on the same seeds, with a 95% interval from paired seeds (paired t, n - 1 "
        "degrees of freedom); `~0` marks an interval that includes 0. Train time is relative "
        "to the baseline's (a distillation variant includes its teacher's training); inference "
        "cost is the extra multiply-accumulates per image of the deployed model (ACNet fused, "
        "TTA counted)."
    )


def _header(rows: list[dict], has_val: bool) -> str:
    """What ran where: machine, torch, device, seeds, epochs, data (each when known)."""
    first = next((r for r in rows if "error" not in r), rows[0])
    cfg = first.get("config") or {}
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    parts = [
        f"Machine: {first.get('machine', '?')}",
        f"torch {first.get('torch', '?')}",
        f"device {first.get('device', '?')}",
        f"seeds {sorted({r['seed'] for r in rows})}",
    ]
    if train.get("epochs") is not None:
        parts.append(f"{train['epochs']} epochs")
    if data.get("spec"):
        held = data.get("val_split")
        val = f", {held:g} held out for validation" if has_val and held else ""
        parts.append(f"data `{data['spec']}`{val}")
    return f"Grid command: `{first.get('grid_command', '?')}`  \n" + "; ".join(parts) + "."


def markdown(rows: list[dict], entries: list[dict], metric: Metric = DEFAULT_METRIC) -> str:
    """report.md: header (what ran where), the table, notes on teachers, bag and failures."""
    has_val = any("val" in e for e in entries)
    dec = _decimals(metric, entries)
    lines = ["# Ablation report", "", _header(rows, has_val), "", _intro(metric), ""]
    titles = _titles(metric)
    head = ["variant", *titles[:2], *(titles[2:] if has_val else [])]
    head += ["train time", "inference cost", "peak mem MB", "command"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        base = e["variant"] == BASELINE
        cells = [e["variant"], _mean(e.get("metric"), dec), _delta(e.get("metric"), base, dec)]
        if has_val:
            cells += [_mean(e.get("val"), dec), _delta(e.get("val"), base, dec)]
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


def bar_colour(delta: dict[str, Any], metric: Metric) -> str:
    """Green when Δ is better in the metric's direction, red when worse, grey when its
    interval includes 0."""
    if includes_zero(delta):
        return "0.6"
    return "tab:green" if metric.improves(delta["mean"]) else "tab:red"


def plot_delta(entries: list[dict], path: Path, metric: Metric = DEFAULT_METRIC) -> None:
    """Bar chart of Δ against the baseline with the 95% interval, metric (and val) side by
    side; green is better in the metric's direction, red worse, grey an interval with 0."""
    from freebies.report.plots import plt

    slots = [s for s in ("metric", "val") if any(s in e for e in entries)]
    shown = [e for e in entries if e["variant"] != BASELINE and "metric" in e]
    fig, axes = plt.subplots(
        1, len(slots), figsize=(6 * len(slots), 1.2 + 0.32 * max(len(shown), 1)), squeeze=False
    )
    for ax, slot in zip(axes[0], slots, strict=True):
        rows = [(e["variant"], e[slot]["delta"]) for e in shown if e.get(slot, {}).get("delta")]
        for i, (_, d) in enumerate(rows):
            err = None if d["lo"] is None else [[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]]
            ax.barh(i, d["mean"], xerr=err, color=bar_colour(d, metric), capsize=3)
        ax.set_yticks(range(len(rows)), [name for name, _ in rows])
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        key = metric.key if slot == "metric" else metric.val_key
        if metric.key == "test_acc":  # the titles of the figures committed before --metric
            title = f"Δ {'test' if slot == 'metric' else 'val'} top-1 vs baseline (95% CI)"
        else:
            title = f"Δ {key} vs baseline (95% CI; {metric.better} is better)"
        ax.set(title=title, xlabel="percentage points" if metric.percent else str(key))
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(
    rows: list[dict], path: Path, metric: Metric = DEFAULT_METRIC, field: str = "curve"
) -> None:
    """The metric against epoch (`field="loss_curve"`: the training loss), mean over seeds,
    one line per variant (from each row's `field`); nothing is drawn when no run logged it."""
    from freebies.report.plots import MaxNLocator, plt

    curves: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        for epoch, value in r.get(field, []):
            curves.setdefault(r["variant"], {}).setdefault(epoch, []).append(value)
    if not curves:
        return
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
            label=name if len(name) <= 48 else f"{name[:46]}…",
        )
    if field == "loss_curve":
        title = "training loss by epoch (mean over seeds; on each variant's own training inputs)"
        unit = "loss"
    elif metric.key == "test_acc":
        title, unit = "test top-1 by epoch (mean over seeds)", "%"
    else:
        title = f"{metric.key} by epoch (mean over seeds; {metric.better} is better)"
        unit = "%" if metric.percent else metric.key
    ax.set(title=title, xlabel="epoch", ylabel=unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)


def write_report(out: Path, metric: Metric | None = None) -> list[dict]:
    """Rebuild report.md, delta.png, curves.png and loss.png (the training loss, so that
    underfitting shows) in `out` from its results.jsonl, on the metric its grid.json records;
    or, with another `metric`, write report-KEY.md and delta-KEY.png / curves-KEY.png beside
    them (the grid's own report is left alone)."""
    suffix = "" if metric is None else f"-{metric.key}"
    metric = metric or read_metric(out)
    rows = read_results(out / "results.jsonl")
    entries = summarize(rows, metric)
    write_text(out / f"report{suffix}.md", markdown(rows, entries, metric))
    plot_delta(entries, out / f"delta{suffix}.png", metric)
    plot_curves(rows, out / f"curves{suffix}.png", metric)
    if not suffix:
        plot_curves([loss_curve(r) for r in rows], out / "loss.png", metric, "loss_curve")
    return entries


def loss_curve(row: dict) -> dict:
    """The row with its `loss_curve` (training loss per epoch) from its run folder's
    metrics.jsonl, unless it has one (rows whose folder is gone stay as they are)."""
    metrics = Path(row.get("run", "")) / "metrics.jsonl"
    if "loss_curve" in row or not row.get("run") or not metrics.is_file():
        return row
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return row | {"loss_curve": [[m["epoch"], m["train_loss"]] for m in lines if "train_loss" in m]}
