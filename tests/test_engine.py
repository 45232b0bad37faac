"""The run engine and the checkpoint schema, shared by every task."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fakedata import write_idx
from freebies import checkpoint
from freebies.checkpoint import FORMAT, Checkpoint
from freebies.engine import StopFlag, best_row, early_stop_reason, epoch_line
from freebies.errors import UsageError
from helpers import run_cli, small, usage_error

PRE_SCHEMA = Path(__file__).parent / "data" / "pre_schema_epoch1.pt"


def test_a_checkpoint_from_before_the_schema_loads_as_format_1_and_resumes(
    tmp_path, capsys, monkeypatch
):
    """tests/data/pre_schema_epoch1.pt was written by freebies at commit 5569791 (before the
    schema had a version): epoch 1 of a 2-epoch airnet-8-8-8 run with EMA, mixup and label
    smoothing on the data `write_idx(fmnist, 256, 128)` makes. It must load as format 1 and
    continue: every piece of training state picks up where it stopped."""
    monkeypatch.chdir(tmp_path)
    write_idx(tmp_path / "fmnist", n_train=256, n_test=128)  # its config reads fmnist/
    ckpt = checkpoint.load(PRE_SCHEMA)
    assert (ckpt.format, ckpt.task, ckpt.epoch, ckpt.step, ckpt.deploy) == (
        1,
        "classify",
        1,
        0,
        False,
    )
    assert int(ckpt.ema["n_averaged"]) == 4 and ckpt.scheduler["last_epoch"] == 4
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(PRE_SCHEMA, run / "last.pt")
    rc, out, err = run_cli(capsys, "train", "--resume", str(run))
    assert rc == 0, err
    assert "epoch 2/2" in out
    done = checkpoint.load(run / "last.pt")
    assert done.format == FORMAT and (done.epoch, done.step) == (2, 0)
    assert done.metrics[0] == ckpt.metrics[0]  # epoch 1 as the old code recorded it
    assert int(done.ema["n_averaged"]) == 8 and done.scheduler["last_epoch"] == 8
    assert all(len(s["momentum_buffer"]) for s in done.optimizer["state"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["recipe"] == "baseline"
    rc, out, err = run_cli(capsys, "eval", str(PRE_SCHEMA))
    assert rc == 0, err
    # The same weights on another CPU may sum in another order: allow one of 128 images to flip.
    assert json.loads(out)["test_acc"] == pytest.approx(ckpt.metrics[0]["test_acc"], abs=0.79)


def test_unknown_format_and_foreign_keys_are_one_line(tmp_path, capsys):
    raw = torch.load(PRE_SCHEMA, weights_only=True)
    torch.save({**raw, "format": 7}, tmp_path / "future.pt")
    line = usage_error(capsys, "eval", str(tmp_path / "future.pt"))
    assert "is checkpoint format 7; this freebies reads formats 1, 2" in line
    torch.save({**raw, "optimiser": {}}, tmp_path / "odd.pt")
    with pytest.raises(UsageError, match="keys this format does not define: optimiser"):
        checkpoint.load(tmp_path / "odd.pt")
    torch.save({"model": {}, "config": {}, "data": {}}, tmp_path / "nodata.pt")
    with pytest.raises(UsageError, match=r"which classes it predicts \(data.classes\)"):
        checkpoint.load(tmp_path / "nodata.pt")


def test_checkpoint_round_trip_keeps_every_field(tmp_path):
    ckpt = Checkpoint(
        model={"w": torch.ones(2)},
        config={"train": {"epochs": 3}},
        data={"classes": ["a", "b"], "fingerprint": "f"},
        task="detect",
        epoch=2,
        step=5,
        metrics=[{"epoch": 1, "train_loss": 0.5}],
    )
    checkpoint.save(ckpt, tmp_path / "c.pt")
    back = checkpoint.load(tmp_path / "c.pt")
    assert back.model["w"].equal(ckpt.model["w"])
    assert (back.task, back.epoch, back.step, back.num_classes) == ("detect", 2, 5, 2)
    assert back.optimizer is None and back.format == FORMAT
    assert not (tmp_path / "c.pt.tmp").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_flag_catches_the_first_signal_and_restores_the_handlers(sig):
    before = signal.getsignal(sig)
    with StopFlag() as stop:
        os.kill(os.getpid(), sig)
        assert stop.set
        assert signal.getsignal(sig) is before  # a second signal would act at once
    assert signal.getsignal(sig) is before


def test_early_stop_reason_reads_validation_only():
    rows = [
        {"epoch": i + 1, "val_acc": v, "test_acc": 99.0}
        for i, v in enumerate([50.0, 60.0, 60.0, 59.0])
    ]
    assert early_stop_reason(rows, 0) is None
    assert early_stop_reason(rows, 3) is None
    assert early_stop_reason(rows, 2) == (
        "early stop: val_acc has not improved for 2 evaluations (best 60.00% at epoch 2)"
    )
    assert early_stop_reason([{"epoch": 1, "test_acc": 10.0}], 1) is None
    maps = [{"epoch": 1, "val_map": 0.31}, {"epoch": 2, "val_map": 0.30}]
    assert early_stop_reason(maps, 1, "val_map") == (
        "early stop: val_map has not improved for 1 evaluations (best 0.31% at epoch 1)"
    )


def test_epoch_line_shows_the_task_metrics():
    row = {"epoch": 3, "train_loss": 1.0, "test_map": 0.4567, "lr": 0.01, "img_per_s": 50.0}
    line = epoch_line({**row, "wall_s": 9.0}, 10, ("test_map", "val_map"))
    assert line == "epoch 3/10  loss 1.0000  test_map 0.4567  lr 0.01  50 img/s  9s"


def test_library_layers_load_neither_the_recipe_config_nor_the_cli():
    code = (
        "import sys, freebies.optim, freebies.tricks, freebies.models, freebies.detection\n"
        "bad = [m for m in ('freebies.config', 'freebies.cli', 'freebies.engine', "
        "'freebies.classify', 'freebies.detect') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_best_row_follows_the_metric_direction_and_keeps_the_first_of_ties():
    rows = [
        {"epoch": 1, "val_acc": 50.0, "val_loss": 1.0},
        {"epoch": 2, "val_acc": 70.0, "val_loss": 0.6},
        {"epoch": 3},  # not evaluated
        {"epoch": 4, "val_acc": 70.0, "val_loss": 0.7},
    ]
    assert best_row(rows, "val_acc")["epoch"] == 2
    assert best_row(rows, "val_loss")["epoch"] == 2  # lower is better for losses
    assert best_row(rows, "val_map") is None
    assert early_stop_reason(rows, 1, "val_acc").endswith("(best 70.00% at epoch 2)")
    assert early_stop_reason(rows, 2, "val_acc") is None


def test_best_pt_is_the_checkpoint_of_the_best_validation_epoch(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = small(idx_dir, out, "--epochs", "3", "--set", "data.val_split=0.25")
    argv += ["--set", "train.best_metric=val_loss", "--model", "airnet-8-8-8"]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["val_loss"])
    assert summary["best_metric"] == "val_loss" and summary["best_epoch"] == best["epoch"]
    assert summary["best_value"] == best["val_loss"]
    kept = checkpoint.load(out / "best.pt")
    assert kept.epoch == best["epoch"] and kept.metrics[-1] == best
    rc, printed, err = run_cli(capsys, "eval", str(out / "best.pt"))
    assert rc == 0, err
    assert "test_acc" in json.loads(printed)
    line = usage_error(
        capsys, *small(idx_dir, tmp_path / "r2", "--set", "train.best_metric=test_acc")
    )
    assert "best.pt is chosen on a validation metric" in line


def test_results_csv_and_tensorboard_log_every_epoch(idx_dir, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    import csv

    out = tmp_path / "run"
    argv = small(idx_dir, out, "--set", "train.tensorboard=true", "--model", "airnet-8-8-8")
    rc, _, err = run_cli(capsys, *argv, "--set", "train.eval_every=2", "--epochs", "3")
    assert rc == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 3
    assert float(table[0]["train_loss"]) == pytest.approx(rows[0]["train_loss"])
    assert table[0]["test_acc"] == "" and float(table[1]["test_acc"]) == rows[1]["test_acc"]
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
