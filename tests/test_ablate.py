"""`freebies ablate` / `freebies report`: statistics by hand, errors, resume, a real tiny grid,
and a grid driven through the run-folder contract by a fake trainer on a lower-is-better metric."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fakedata import write_idx
from freebies import config
from freebies.errors import UsageError
from freebies.experiments import ablate
from freebies.report.table import Metric, bar_colour, markdown, paired_delta, summarize
from helpers import run_cli, usage_error

ROOT = Path(__file__).resolve().parents[1]


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


# Two-sided 95% Student-t critical values t_{0.975, n-1}, written out (to 15 digits).
T975 = {1: 12.7062047361747, 2: 4.30265272974946, 4: 2.77644510519779}


@pytest.mark.parametrize(
    ("variant", "base", "mean", "sd"),
    [
        ({0: 91.0, 1: 90.0}, {0: 90.0, 1: 91.5}, -0.25, math.sqrt(2 * 1.25**2)),  # Δ 1.0, -1.5
        ({0: 90.5, 1: 91.7, 2: 92.3}, {0: 90.0, 1: 91.0, 2: 92.0}, 0.5, 0.2),  # Δ .5, .7, .3
        ({s: 0.3 + 0.01 * s * s for s in range(5)}, {s: 0.3 for s in range(5)}, 0.06, None),
    ],
)
def test_paired_delta_by_hand(variant, base, mean, sd):
    d = paired_delta(variant, base)
    diffs = [variant[s] - base[s] for s in sorted(base)]
    if sd is None:  # Δ = 0, .01, .04, .09, .16: sample sd by hand
        sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1))
    half = T975[len(diffs) - 1] * sd / math.sqrt(len(diffs))
    assert d["mean"] == pytest.approx(mean, abs=1e-12) and d["n"] == len(diffs)
    assert d["lo"] == pytest.approx(mean - half, abs=1e-9)
    assert d["hi"] == pytest.approx(mean + half, abs=1e-9)


def test_paired_delta_pairs_common_seeds_only():
    # Only the seeds both sides have are paired; one pair gives no interval.
    one = paired_delta({0: 91.0, 5: 99.0}, {0: 90.0, 1: 91.0})
    assert one["mean"] == pytest.approx(1.0) and one["n"] == 1 and one["lo"] is None


def test_summary_and_markdown_by_hand():
    entries = {e["variant"]: e for e in summarize(FAKE)}
    ls, kd, ac = entries["ls"], entries["kd"], entries["acnet"]
    assert ls["metric"]["mean"] == pytest.approx(91.5)
    assert ls["metric"]["std"] == pytest.approx(math.sqrt((1.0**2 + 0.2**2 + 0.8**2) / 2))
    assert ls["time_ratio"] == pytest.approx(1.1)
    assert kd["time_ratio"] == pytest.approx(2.0)  # the teacher's training counts
    assert kd["metric"]["delta"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert kd["metric"]["delta"]["hi"] == pytest.approx(T975[2] / math.sqrt(3), abs=1e-9)
    assert ac["infer_ratio"] == 2.0 and ac["metric"]["delta"]["lo"] is None
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
    # A variant of one's own: any name, as long as it says what it sets.
    assert ablate.parse_tricks("b256=train.batch_size=256,b256=optim.lr=0.5") == [
        ("b256[train.batch_size=256,optim.lr=0.5]", {"train.batch_size": 256, "optim.lr": 0.5})
    ]


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


def test_plan_single_cumulative_both_stack():
    tricks = [("a", {"x": 1}), ("b", {"y": 2}), ("c", {"z": 3})]
    names = {m: [v.name for v in ablate.plan(tricks, m)] for m in ablate.MODES}
    assert names == {
        "single": ["baseline", "a", "b", "c"],
        "cumulative": ["baseline", "a", "a+b", "a+b+c"],
        "both": ["baseline", "a", "b", "c", "a+b", "a+b+c"],
        "stack": ["baseline", "a", "b", "c", "a+b+c"],
    }
    assert ablate.plan(tricks, "cumulative")[2].overrides == {"x": 1, "y": 2}
    # --also: run alone, never part of the stack
    got = ablate.plan(tricks, "stack", [("a2", {"x": 9})])
    assert [(v.name, v.kind) for v in got[-2:]] == [("a2", "also"), ("a+b+c", "cumulative")]
    assert got[-1].overrides == {"x": 1, "y": 2, "z": 3}


def test_also_is_recorded_and_a_grid_from_before_it_resumes(tmp_path):
    tricks = ablate.parse_tricks("label_smoothing")
    also = ablate.parse_tricks("ls2=loss.label_smoothing=0.2")

    def prepare(also):
        return ablate.prepare("baseline", tricks, [0], "single", tmp_path, {}, bag=False,
                              command="freebies ablate", also=also)  # fmt: skip

    _, variants = prepare(also)
    assert [(v.name, v.kind) for v in variants] == [
        ("baseline", "baseline"), ("label_smoothing", "single"),
        ("ls2[loss.label_smoothing=0.2]", "also"),
    ]  # fmt: skip
    with pytest.raises(UsageError, match=r"holds another grid \(its also was"):
        prepare([])
    # a grid may grow by `also` variants appended after its own (never by changing them)
    more = also + ablate.parse_tricks("ls3=loss.label_smoothing=0.3")
    assert [v.name for v in prepare(more)[1]][-1] == "ls3[loss.label_smoothing=0.3]"
    assert json.loads((tmp_path / "grid.json").read_text())["also"][1][0].startswith("ls3")
    for fewer in (more[1:], also):  # dropping one would drop its runs from the results
        with pytest.raises(UsageError, match=r"holds another grid \(its also was"):
            prepare(fewer)
    saved = json.loads((tmp_path / "grid.json").read_text())
    del saved["also"]  # as written before --also existed
    (tmp_path / "grid.json").write_text(json.dumps(saved))
    assert [v.name for v in prepare([])[1]] == ["baseline", "label_smoothing"]


def test_parse_tricks_keeps_a_bracketed_list_whole():
    assert ablate._items("a=k=[[1,2],[3]],b=k={x: 1, y: 2},c") == [
        "a=k=[[1,2],[3]]", "b=k={x: 1, y: 2}", "c"
    ]  # fmt: skip
    got = ablate.parse_tricks("det_random_shapes=det.random_shapes=[320,416],det_mixup")
    assert got[0] == (
        "det_random_shapes[det.random_shapes=[320, 416]]",
        {"det.random_shapes": [320, 416]},
    )
    assert got[1][0] == "det_mixup"


def test_a_grid_resumes_after_a_trick_setting_is_rewritten_but_not_after_it_changes(tmp_path):
    """grid.json names the tricks; whether a finished run still matches is its resolved
    config: det_random_shapes, once a list of sizes, now [0.75, 1.25] x data.image_size."""

    def prepare(tricks):
        return ablate.prepare("detect", tricks, [0], "single", tmp_path, {}, bag=False,
                              command="freebies ablate --task detect",
                              trainer=ablate.DETECT_TRAINER)  # fmt: skip

    def trained(sizes):  # the run folder a grid of the old catalog setting left
        grid, variants = prepare([("det_random_shapes", {"det.random_shapes": sizes})])
        folder = grid.folder(variants[1], 0)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(
            yaml.safe_dump(config.to_dict(grid.cfg(variants[1], 0)))
        )

    trained([192, 224, 256, 288, 320])
    assert [v.name for v in prepare(ablate.parse_tricks("det_random_shapes"))[1]][1] == (
        "det_random_shapes"
    )
    shutil.rmtree(tmp_path / "runs")
    trained([160, 192])
    with pytest.raises(UsageError, match=r"was trained with det.random_shapes=\[160, 192\]"):
        prepare(ablate.parse_tricks("det_random_shapes"))


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
    assert [(r["variant"], r["seed"]) for r in rows] == [  # seed by seed
        (v, s) for s in (0, 1) for v in ("baseline", "label_smoothing", "cutout")
    ]
    full = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    for key in ("config", "val_acc", "test_nll", "test_ece", "wall_s", "train_img_per_s"):
        assert key in full
    assert full["peak_mem_mb"] > 0 and full["command"].startswith("freebies train --recipe")
    assert len(full["curve"]) == 3  # the baseline recipe evaluates every epoch
    assert [e for e, _ in full["loss_curve"]] == [1, 2, 3]  # the training loss, every epoch
    for name in ("report.md", "delta.png", "curves.png", "loss.png"):
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
    deadline = time.monotonic() + 300  # generous: a pytest-xdist worker may share the cores
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


@pytest.mark.parametrize(
    ("spec", "key", "lower"),
    [
        ("test_acc", "test_acc", False),
        ("test_nll", "test_nll", True),
        ("test_ece", "test_ece", True),
        ("val_loss", "val_loss", True),
        ("train_s", "train_s", True),
        ("peak_mem_mb", "peak_mem_mb", True),
        ("infer_macs", "infer_macs", True),
        ("train_img_per_s", "train_img_per_s", False),  # a throughput, though it ends in _s
        ("map", "map", False),
        ("test_nll:max", "test_nll", False),
        ("map:min", "map", True),
    ],
)
def test_metric_direction_is_guessed_from_the_name_unless_given(spec, key, lower):
    metric = Metric.parse(spec)
    assert (metric.key, metric.lower_is_better) == (key, lower)
    assert metric.improves(-1.0) is lower and metric.improves(1.0) is not lower


def test_metric_counterparts_and_bad_specs():
    nll = Metric.parse("test_nll")
    assert (nll.val_key, nll.curve_key, nll.better, nll.percent) == (
        "val_nll",
        "test_loss",
        "lower",
        False,
    )
    assert Metric.parse("map").val_key == "val_map" and Metric.parse("val_acc").val_key is None
    assert Metric.of_grid({"recipe": "baseline"}) == Metric("test_acc", False)  # before --metric
    with pytest.raises(UsageError, match=r"suffix must be :min or :max, not :up"):
        Metric.parse("test_nll:up")
    with pytest.raises(UsageError, match=r"--metric is empty"):
        Metric.parse(":min")


def test_delta_bars_are_green_when_better_in_the_metrics_direction():
    down = {"mean": -0.06, "lo": -0.08, "hi": -0.04}
    up = {"mean": 0.03, "lo": 0.01, "hi": 0.05}
    across = {"mean": 0.03, "lo": -0.01, "hi": 0.07}
    nll, acc = Metric.parse("test_nll"), Metric.parse("test_acc")
    assert [bar_colour(d, nll) for d in (down, up, across)] == ["tab:green", "tab:red", "0.6"]
    assert [bar_colour(d, acc) for d in (down, up, across)] == ["tab:red", "tab:green", "0.6"]


def test_report_rebuilds_the_committed_fashion_mnist_report(tmp_path, capsys):
    """Its grid.json predates --metric, so it is read as test_acc; the page must not move."""
    committed = ROOT / "docs" / "results" / "fashion-mnist"
    out = tmp_path / "fm"
    out.mkdir()
    for name in ("grid.json", "results.jsonl"):
        shutil.copy(committed / name, out / name)
    rc, _, _ = run_cli(capsys, "report", str(out))
    assert rc == 0
    assert (out / "report.md").read_text() == (committed / "report.md").read_text()


# A trainer that is not `freebies train`: it honours the run-folder contract and its test NLL
# is a formula of its settings. Label smoothing lowers it by 0.05, 0.06, 0.07 on seeds 0, 1, 2
# (Δ -0.06, sd 0.01); mixup (0.2) raises it by 0.02, 0.03, 0.04 (Δ +0.03, sd 0.01).
# TRAINER_ARGS: the contract's arguments, as a fake trainer script's first lines.
TRAINER_ARGS = """
import argparse, json, os, signal, sys, time
from pathlib import Path
import yaml

p = argparse.ArgumentParser()
for flag in ("--recipe", "--out", "--resume"):
    p.add_argument(flag)
p.add_argument("--set", action="append", default=[])
p.add_argument("--overwrite", action="store_true")
a = p.parse_args()
sets = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in a.set)}
"""
FAKE_TRAINER = (
    TRAINER_ARGS
    + """
if a.resume:
    sys.exit("this test never interrupts a run")
config = {}
for key, value in sets.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
seed = sets["train.seed"]
ls, mix = sets.get("loss.label_smoothing", 0.0), sets.get("aug.mixup", 0.0)
nll = 0.40 + 0.01 * seed - ls * (0.5 + 0.1 * seed) + mix * (0.1 + 0.05 * seed)
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
seen = out.parent.parent / "results.jsonl"  # what the grid had recorded when this run began
if seen.is_file():
    (out / "seen.jsonl").write_text(seen.read_text())
(out / "config.yaml").write_text(yaml.safe_dump(config))
rows = [{"epoch": e, "test_loss": nll + 0.1 * (2 - e), "test_acc": 80.0 + e} for e in (1, 2)]
(out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
summary = {"test_acc": 82.0, "test_nll": nll, "val_nll": nll + 0.002, "train_s": 1.0}
(out / "summary.json").write_text(json.dumps(summary))
(out / "last.pt").write_bytes(b"")
"""
)


def _fake_grid(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    trainer = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    return ["ablate", "--trainer", trainer, "--tricks", "label_smoothing,mixup", "--out", str(out),
            "--seeds", "3", *extra]  # fmt: skip


def test_fake_trainer_grid_on_a_lower_is_better_metric(tmp_path, capsys):
    out = tmp_path / "grid"
    rc, _, err = run_cli(capsys, *_fake_grid(tmp_path, out, "--metric", "test_nll", "--bag"))
    assert rc == 0, err
    grid = json.loads((out / "grid.json").read_text())
    assert (grid["metric"], grid["better"]) == ("test_nll", "lower")
    assert "fake_trainer.py" in grid["trainer"]
    report = (out / "report.md").read_text()
    assert "`test_nll`, mean ± std over seeds; lower is better." in report
    assert "(negative Δ is better)" in report
    assert "| variant | test_nll (lower is better) | Δ test_nll [95% CI] | val_nll |" in report
    # Δ = variant - baseline in nats; half width t(0.975, 2) * 0.01 / sqrt(3) = 0.0248.
    assert "| label_smoothing | 0.350 ± 0.000 | -0.060 [-0.085, -0.035] |" in report
    assert "| mixup | 0.440 ± 0.020 | +0.030 [+0.005, +0.055] |" in report
    # The bag is chosen on val_nll going down: label smoothing only.
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    bag = [r for r in rows if r["variant"] == "bag"]
    assert len(bag) == 3 and bag[0]["tricks"] == ["label_smoothing"]
    assert "Δ val_nll (paired mean over seeds [0, 1, 2]) was below 0: label_smoothing" in report
    assert bag[0]["command"].startswith(f"{shlex.quote(sys.executable)} ")
    # The per-epoch curve is the metric's own column (test_nll is logged as test_loss).
    base = next(r for r in rows if r["variant"] == "baseline" and r["seed"] == 1)
    assert base["curve"] == [[1, pytest.approx(0.51)], [2, pytest.approx(0.41)]]
    assert (out / "delta.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    # `freebies report` reads the metric back from grid.json.
    (out / "report.md").unlink()
    assert run_cli(capsys, "report", str(out))[0] == 0
    assert (out / "report.md").read_text() == report
    # ... and on another key, beside it, leaving the grid's own report alone.
    rc, printed, _ = run_cli(capsys, "report", str(out), "--metric", "test_acc")
    assert rc == 0 and "Top-1 accuracy in %, mean ± std over seeds" in printed
    assert (out / "report-test_acc.md").read_text() == printed
    assert (out / "delta-test_acc.png").is_file() and (out / "report.md").read_text() == report
    # Once a bag was chosen on test_nll, another metric is another grid.
    argv = _fake_grid(tmp_path, out, "--metric", "test_acc", "--bag")
    assert "holds another grid (its metric was 'test_nll')" in usage_error(capsys, *argv)


def test_a_finished_grid_grows_by_an_also_variant_and_trains_only_its_runs(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = _fake_grid(tmp_path, out, "--metric", "test_nll", "--bag", "--seeds", "2")
    assert run_cli(capsys, *argv)[0] == 0
    before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    rc, _, err = run_cli(capsys, *argv, "--also", "ls3=loss.label_smoothing=0.3")
    assert rc == 0, err
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    assert {k: after[k] for k in before} == before  # nothing trained again, the bag included
    assert sorted(set(after) - set(before)) == [
        f"ls3_loss.label_smoothing=0.3_-s{s}" for s in (0, 1)
    ]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows].count("ls3[loss.label_smoothing=0.3]") == 2
    assert len(rows) == 2 * 4 + 2  # 4 variants x 2 seeds and the bag's 2 runs
    assert "| ls3[loss.label_smoothing=0.3] |" in (out / "report.md").read_text()


def test_unknown_metric_names_the_keys_and_can_be_corrected(tmp_path, capsys):
    out = tmp_path / "grid"
    rc, _, err = run_cli(capsys, *_fake_grid(tmp_path, out, "--metric", "test_nl"))
    last = err.strip().splitlines()[-1]  # the progress bar was drawn above it
    assert rc == 2 and "Traceback" not in err
    assert last.startswith("freebies: error: --metric 'test_nl': ")
    assert "(did you mean 'test_nll'?); it has test_acc, test_nll, train_s, val_nll" in last
    assert not (out / "runs" / "label_smoothing-s0").exists()  # stopped after the baseline
    # No bag was chosen on the wrong key, so the same grid reruns with the right one.
    rc, _, err = run_cli(capsys, *_fake_grid(tmp_path, out, "--metric", "test_ece:min"))
    assert rc == 2 and "--metric 'test_ece'" in err.strip().splitlines()[-1]
    rc, _, err = run_cli(capsys, *_fake_grid(tmp_path, out, "--metric", "test_nll"))
    assert rc == 0, err
    assert json.loads((out / "grid.json").read_text())["metric"] == "test_nll"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--trainer", "no-such-trainer-xyz"], r"'no-such-trainer-xyz' is not a command"),
        (["--trainer", "   "], r"--trainer is empty"),
        (["--trainer", "python 'x"], r"--trainer \"python 'x\": No closing quotation"),
        (["--metric", "val_nll", "--bag"], r"val_nll is already a validation key"),
    ],
)
def test_bad_trainer_or_metric_is_one_line(tmp_path, capsys, argv, match):
    import re

    base = ["ablate", "--tricks", "label_smoothing", "--out", str(tmp_path / "g"), "--seeds", "2"]
    line = usage_error(capsys, *base, *argv)
    assert re.search(match, line), line


def test_a_grid_saved_into_the_repo_is_restored_and_not_trained_again(tmp_path, capsys):
    """benchmarks/grid_copy.py: save keeps results, not checkpoints; restore puts the runs back
    (config.yaml rebuilt from results.jsonl) so that rerunning the grid trains only what is
    missing, with the restored runs in results.jsonl before it starts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("grid_copy", ROOT / "benchmarks/grid_copy.py")
    grid_copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid_copy)
    out, docs = tmp_path / "grid", tmp_path / "docs"
    argv = _fake_grid(tmp_path, out, "--metric", "test_nll", "--seeds", "2")
    assert run_cli(capsys, *argv)[0] == 0
    assert grid_copy.save(out, docs) == 6  # 3 variants x 2 seeds
    assert not list(docs.rglob("*.pt")) and (docs / "report.md").is_file()
    (docs / "runs" / "baseline-s0" / "config.yaml").unlink()  # as in a copy made before it
    shutil.rmtree(out)
    assert grid_copy.restore(docs, out) == 6
    assert grid_copy.restore(docs, out) == 0  # already there
    assert (out / "runs" / "baseline-s0" / "config.yaml").is_file()
    shutil.rmtree(out / "runs" / "mixup-s1")  # a run the copy lacks
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    trained = [p.parent.name for p in out.rglob("last.pt")]
    assert trained == ["mixup-s1"], "a restored run was trained again"
    seen = (out / "runs" / "mixup-s1" / "seen.jsonl").read_text().splitlines()
    assert len(seen) == 5 and json.loads(seen[0])["variant"] == "baseline"
    assert (out / "report.md").read_text() == (docs / "report.md").read_text()


def test_grid_table_means_and_pairs_a_detection_grid_by_class_or_by_size(tmp_path):
    """benchmarks/grid_table.py on hand-made rows: per-variant means, the paired Δ, the loss at
    the asked epochs from each run's metrics.jsonl, AP by class or (--sizes) by size bin."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("grid_table", ROOT / "benchmarks/grid_table.py")
    grid_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid_table)
    (tmp_path / "grid.json").write_text(json.dumps({"metric": "map", "better": "higher"}))
    rows = []
    for variant, base in (("baseline", 40.0), ("sliced", 44.0)):
        for seed in (0, 1):
            run = tmp_path / "runs" / f"{variant}-s{seed}"
            run.mkdir(parents=True)
            losses = [{"epoch": e, "train_loss": base / 40 - e / 100} for e in (1, 2)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in losses))
            rows.append({
                "variant": variant, "kind": "baseline" if variant == "baseline" else "single",
                "tricks": [] if variant == "baseline" else [variant], "seed": seed,
                "overrides": {}, "command": "freebies ablate", "run": str(run),
                "map": base + seed, "val_map": base + 2 * seed,
                "map_small": base / 2 + seed, "map_medium": base, "map_large": base + 10,
                "ap_per_class": {"cell": base + 1, "absent": None},
            })  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_class = grid_table.table(tmp_path, [2]).splitlines()
    assert "| cell AP |" in by_class[0] and "absent" not in by_class[0]
    pair = "+4.0 [+4.0, +4.0]"  # every seed gains 4: no spread
    assert by_class[3] == f"| sliced | 2 | 44.5 | {pair} | 45.0 | {pair} | 1.08 | 45.0 |"
    by_size = grid_table.table(tmp_path, [1, 2], sizes=True).splitlines()
    assert "| small / medium / large AP |" in by_size[0]
    assert by_size[2].endswith("| 0.99 / 0.98 | 20.5 / 40.0 / 50.0 |")
