"""`freebies ablate` / `freebies report`: statistics by hand, errors, resume, a real tiny grid."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakedata import write_idx
from freebies.report import ablate
from freebies.report.table import markdown, paired_delta, summarize, t_quantile
from helpers import run_cli, usage_error

# Two-sided 95% Student-t critical values from printed tables.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize(("df", "want"), T_TABLE.items())
def test_t_quantile_matches_printed_tables(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=5e-4)


def test_t_quantile_refuses_nonsense():
    with pytest.raises(ValueError, match=r"0.5 < p < 1"):
        t_quantile(0.975, 0)


def _row(variant, seed, test, val=None, train_s=100.0, macs=1000, **extra):
    row = {
        "variant": variant,
        "kind": "baseline" if variant == "baseline" else "single",
        "tricks": [] if variant == "baseline" else [variant],
        "overrides": {},
        "seed": seed,
        "command": f"freebies train --variant {variant}",
        "test_acc": test,
        "train_s": train_s,
        "train_img_per_s": 500.0,
        "infer_macs": macs,
        "peak_mem_mb": 900.0,
        "config": {"train": {"epochs": 3}, "data": {"spec": "fake", "val_split": 0.1}},
        "curve": [[1, test - 1], [3, test]],
        **extra,
    }
    if val is not None:
        row["val_acc"] = val
    return row


FAKE = [
    _row("baseline", 0, 90.0, 89.0),
    _row("baseline", 1, 91.0, 90.0),
    _row("baseline", 2, 92.0, 91.0),
    # Δ test = 0.5, 0.7, 0.3: mean 0.5, sd 0.2 -> half width 4.303 * 0.2 / sqrt(3) = 0.4969
    _row("ls", 0, 90.5, 89.6, train_s=110.0),
    _row("ls", 1, 91.7, 90.4, train_s=110.0),
    _row("ls", 2, 92.3, 91.2, train_s=110.0),
    # Δ test = 1.0, -1.0, 0.0: mean 0, sd 1 -> half width 2.484, includes 0; val all lower
    _row("kd", 0, 91.0, 88.0, train_s=100.0, teacher={"source": "x", "train_s": 100.0}),
    _row("kd", 1, 90.0, 89.5, train_s=100.0, teacher={"source": "x", "train_s": 100.0}),
    _row("kd", 2, 92.0, 90.0, train_s=100.0, teacher={"source": "y", "train_s": 100.0}),
    _row("acnet", 0, 92.0, 91.0, train_s=300.0, macs=2000),
    {"variant": "broken", "kind": "single", "tricks": ["broken"], "overrides": {}, "seed": 0,
     "error": "diverged at step 3", "command": "freebies train ..."},
]  # fmt: skip


def test_paired_delta_by_hand():
    d = paired_delta({0: 90.5, 1: 91.7, 2: 92.3}, {0: 90.0, 1: 91.0, 2: 92.0})
    half = 4.302653 * 0.2 / math.sqrt(3)
    assert d["mean"] == pytest.approx(0.5) and d["n"] == 3
    assert d["lo"] == pytest.approx(0.5 - half, abs=1e-6)
    assert d["hi"] == pytest.approx(0.5 + half, abs=1e-6)
    # Only the seeds both sides have are paired; one pair gives no interval.
    one = paired_delta({0: 91.0, 5: 99.0}, {0: 90.0, 1: 91.0})
    assert one["mean"] == pytest.approx(1.0) and one["n"] == 1 and one["lo"] is None


def test_summary_and_markdown_by_hand():
    entries = {e["variant"]: e for e in summarize(FAKE)}
    ls, kd, ac = entries["ls"], entries["kd"], entries["acnet"]
    assert ls["test"]["mean"] == pytest.approx(91.5)
    assert ls["test"]["std"] == pytest.approx(math.sqrt((1.0**2 + 0.2**2 + 0.8**2) / 2))
    assert ls["time_ratio"] == pytest.approx(1.1)
    assert kd["time_ratio"] == pytest.approx(2.0)  # the teacher's training counts
    assert kd["test"]["delta"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert kd["test"]["delta"]["hi"] == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    assert ac["infer_ratio"] == 2.0 and ac["test"]["delta"]["lo"] is None
    assert entries["broken"]["errors"] == ["seed 0: diverged at step 3"]

    md = markdown(FAKE, list(entries.values()))
    assert "| ls | 91.50 ± 0.92 | +0.50 [+0.00, +1.00] | 90.40 ± 0.80 |" in md
    assert "| kd | 91.00 ± 1.00 | +0.00 [-2.48, +2.48] ~0 |" in md
    assert "| 2.00x | 0 |" in md  # kd: twice the time, no inference cost
    assert "+2.00 (n=1, no interval)" in md and "| +100% |" in md
    assert "`broken` failed: seed 0: diverged at step 3" in md
    # Each seed's teacher is named: seeds may be taught by different runs.
    assert "`kd` seed 1: teacher x; its training time (100 s)" in md
    assert "`kd` seed 2: teacher y;" in md
    assert "val acc" in md and "0.1 held out for validation" in md


def test_bag_is_chosen_on_validation(tmp_path):
    grid = ablate.Grid("baseline", [0, 1, 2], tmp_path, {}, "freebies ablate ...")
    tricks = [("ls", {"loss.label_smoothing": 0.1}), ("kd", {"distill.teacher": ablate.TEACHER})]
    bag = ablate.choose_bag(grid, FAKE, tricks)
    # kd's test Δ is 0 but its validation Δ is negative; ls helps on validation.
    assert bag.tricks == ["ls"] and bag.overrides == {"loss.label_smoothing": 0.1}
    assert "validation" in bag.chosen_by


def test_parse_tricks_defaults_and_custom_settings():
    got = ablate.parse_tricks("label_smoothing, mixup=aug.mixup=0.4,mixup=aug.mix_prob=0.5")
    assert got == [
        ("label_smoothing", {"loss.label_smoothing": 0.1}),
        ("mixup[aug.mixup=0.4,aug.mix_prob=0.5]", {"aug.mixup": 0.4, "aug.mix_prob": 0.5}),
    ]
    assert ablate.parse_tricks("distillation") == [
        ("distillation", {"distill.teacher": ablate.TEACHER})
    ]
    # Another distillation setting still gets the grid's teacher unless it names one.
    ((_, custom),) = ablate.parse_tricks("distillation=distill.alpha=0.7")
    assert custom == {"distill.alpha": 0.7, "distill.teacher": ablate.TEACHER}


def test_teachers_come_from_another_seed_and_stay_put_when_seeds_are_added(tmp_path):
    three = ablate.Grid("baseline", [0, 1, 2], tmp_path, {}, "")
    five = ablate.Grid("baseline", [0, 1, 2, 3, 4], tmp_path, {}, "")
    assert [three.teacher(s).name for s in (0, 1, 2)] == [
        "baseline-s1",
        "baseline-s0",
        "baseline-s0",
    ]
    assert [five.teacher(s) for s in (0, 1, 2)] == [three.teacher(s) for s in (0, 1, 2)]


def test_long_variant_names_get_distinct_folders(tmp_path):
    grid = ablate.Grid("baseline", [0], tmp_path, {}, "")
    stack = "+".join(f"trick_number_{i}" for i in range(12))
    a, b = (
        ablate.Variant(stack, "cumulative", []),
        ablate.Variant(stack + "+one_more", "cumulative", []),
    )
    assert grid.folder(a, 0) != grid.folder(b, 0)
    assert len(grid.folder(b, 0).name) <= 104


def test_set_arguments_read_back_as_the_same_values():
    import yaml

    for value in ["random", "on", "1e-3", "null", 0.1, True, [0.5, 0.75], None, "a b"]:
        text = ablate._set_arg("k", value).partition("=")[2]
        assert yaml.safe_load(text) == value, value


def test_plan_single_cumulative_both():
    tricks = [("a", {"x": 1}), ("b", {"y": 2})]
    names = {m: [v.name for v in ablate.plan(tricks, m)] for m in ablate.MODES}
    assert names == {
        "single": ["baseline", "a", "b"],
        "cumulative": ["baseline", "a", "a+b"],
        "both": ["baseline", "a", "b", "a+b"],
    }
    assert ablate.plan(tricks, "cumulative")[2].overrides == {"x": 1, "y": 2}


def _ablate_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "ablate",
        "--data",
        f"fashion-mnist:{data}",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--set",
        "train.eval_batch_size=64",
        "--set",
        "data.val_split=0.25",
        *extra,
    ]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--tricks", "mixupp"], r"unknown trick 'mixupp' \(did you mean 'mixup'\?\)"),
        (["--tricks", "mixup=aug.mixup=-1"], r"variant 'mixup\[aug.mixup=-1\]': .*aug.mixup"),
        (["--tricks", "mixup=aug.mixupp=1"], r"unknown key 'aug.mixupp'"),
        (["--tricks", "mixup", "--seeds", "0"], r"--seeds must be >= 1, got 0"),
        (["--tricks", ","], r"--tricks is empty"),
        (["--tricks", "mixup=0.4"], r"must be name=key=value"),
        (["--tricks", "mixup", "--mode", "cumulative", "--bag"], r"--bag chooses among single"),
        (["--tricks", "distillation", "--seeds", "1"], r"use --seeds 2 or more"),
    ],
)
def test_bad_grid_is_one_line_and_writes_nothing(idx_dir, tmp_path, capsys, argv, match):
    import re

    out = tmp_path / "grid"
    line = usage_error(capsys, *_ablate_args(idx_dir, out, *argv))
    assert re.search(match, line), line
    assert not out.exists()


def test_bag_needs_a_validation_split(idx_dir, tmp_path, capsys):
    argv = _ablate_args(idx_dir, tmp_path / "g", "--tricks", "mixup", "--bag")
    i = argv.index("data.val_split=0.25")
    del argv[i - 1 : i + 1]
    assert "data.val_split" in usage_error(capsys, *argv)


def test_report_without_results_is_one_line(tmp_path, capsys):
    assert "results.jsonl not found" in usage_error(capsys, "report", str(tmp_path))


# Fields that must agree between a grid left alone and one killed and restarted.
SAME = ("variant", "kind", "tricks", "overrides", "seed", "test_acc", "val_acc", "test_nll",
        "test_ece", "curve", "epochs_run", "infer_macs", "params")  # fmt: skip
TRICKS = ["--tricks", "label_smoothing,cutout", "--seeds", "2"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One finished tiny grid: baseline + 2 tricks, 2 seeds, on a fake IDX dataset."""
    root = tmp_path_factory.mktemp("ablate")
    write_idx(root / "data", n_train=256, n_test=128)
    out = root / "grid"
    rc = subprocess.run(
        [sys.executable, "-m", "freebies", *_ablate_args(root / "data", out, *TRICKS)],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr
    return root, out


def _same(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: r.get(k) for k in SAME} for r in rows]


@pytest.mark.slow
def test_tiny_grid_writes_all_four_artefacts(grid, capsys):
    _, out = grid
    rows = _same(out / "results.jsonl")
    assert [(r["variant"], r["seed"]) for r in rows] == [
        (v, s) for v in ("baseline", "label_smoothing", "cutout") for s in (0, 1)
    ]
    full = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    for key in ("config", "val_acc", "test_nll", "test_ece", "wall_s", "train_img_per_s"):
        assert key in full
    assert full["peak_mem_mb"] > 0 and full["command"].startswith("freebies train --recipe")
    assert len(full["curve"]) == 3  # the baseline recipe evaluates every epoch
    for name in ("report.md", "delta.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| label_smoothing |" in report and "Δ val [95% CI]" in report
    # `freebies report` rebuilds the same page from results.jsonl alone.
    (out / "report.md").unlink()
    rc, stdout, _ = run_cli(capsys, "report", str(out))
    assert rc == 0 and (out / "report.md").read_text() == report and "| cutout |" in stdout


@pytest.mark.slow
def test_rerun_skips_finished_runs(grid, capsys):
    root, out = grid
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    before = _same(out / "results.jsonl")
    rc, _, _ = run_cli(capsys, *_ablate_args(root / "data", out, *TRICKS))
    assert rc == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    assert _same(out / "results.jsonl") == before


@pytest.mark.slow
def test_changed_grid_in_same_folder_is_refused(grid, capsys):
    root, out = grid
    argv = _ablate_args(root / "data", out, *TRICKS)
    argv[argv.index("--epochs") + 1] = "4"
    assert "train.epochs" in usage_error(capsys, *argv)


@pytest.mark.slow
def test_other_grid_in_same_folder_is_refused_before_training(grid, capsys):
    root, out = grid
    argv = _ablate_args(root / "data", out, "--tricks", "label_smoothing", "--seeds", "2")
    line = usage_error(capsys, *argv)
    assert "holds another grid (its tricks was" in line


@pytest.mark.slow
def test_killed_grid_finishes_with_the_same_results(grid, tmp_path):
    root, done = grid
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "freebies", *_ablate_args(root / "data", out, *TRICKS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "runs" / "baseline-s1" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not second.is_file() and time.monotonic() < deadline:  # mid-way through run 2
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no goodbye: its run gets SIGINT from the kernel
    proc.wait()
    log = out / "logs" / "baseline-s1.log"
    while "interrupted" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # the orphaned run checkpoints and exits
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) < 6  # the kill left the grid unfinished
    assert (out / "runs" / "baseline-s1" / "last.pt").is_file()
    assert not (out / "runs" / "baseline-s1" / "summary.json").is_file()
    finished = subprocess.run(cmd, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert _same(out / "results.jsonl") == _same(done / "results.jsonl")
