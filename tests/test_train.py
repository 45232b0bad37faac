"""End to end through the CLI: run folder contents, eval, bad input, interrupt + resume, DDP."""

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
import torch
import yaml

from freebies import classify, config
from freebies.build import build_model, make_training
from freebies.distributed import Dist
from helpers import run_cli, small, usage_error

TIME_KEYS = {"wall_s", "img_per_s"}


def test_train_writes_a_complete_run_folder(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = run_cli(capsys, *small(idx_dir, out), "--set", "data.val_split=0.25")
    assert rc == 0
    assert "final test accuracy" in stdout
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "last.pt",
        "curves.png",
    }
    saved = config.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved.train.epochs == 2 and saved.data.val_split == 0.25
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {
            "epoch",
            "lr",
            "train_loss",
            "test_loss",
            "test_acc",
            "wall_s",
            "img_per_s",
            "val_loss",
            "val_acc",
        } <= r.keys()
        assert 0 <= r["test_acc"] <= 100 and 0 <= r["val_acc"] <= 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] == rows[-1]["test_acc"]  # the final epoch, not the best
    assert summary["val_acc"] == rows[-1]["val_acc"]
    assert summary["wall_s"] >= summary["train_s"] > 0
    # ResNet-20 with a 1-channel stem: 269,722 - 2 * 16 * 9 weights of the missing channels
    assert summary["params"] == 269_434 and summary["epochs"] == 2
    for key in ("test_nll", "test_ece", "train_img_per_s", "device", "torch", "seed", "recipe"):
        assert key in summary
    assert summary["torch"] == torch.__version__
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0


def test_learns_the_fake_data(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = run_cli(
        capsys,
        *small(idx_dir, out),
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--set",
        "optim.lr=0.05",
    )
    assert rc == 0
    assert json.loads((out / "summary.json").read_text())["test_acc"] > 40  # chance is 10


def test_eval_prints_one_json_line(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out), "--epochs", "1")[0] == 0
    final = json.loads((out / "summary.json").read_text())
    rc, stdout, _ = run_cli(capsys, "eval", str(out / "last.pt"))
    assert rc == 0 and len(stdout.strip().splitlines()) == 1
    got = json.loads(stdout)
    assert set(got) == {"test_acc", "test_nll", "test_ece"}
    assert got["test_acc"] == pytest.approx(final["test_acc"])
    rc, stdout, _ = run_cli(capsys, "eval", str(out / "last.pt"), "--tta", "--limit-test", "32")
    assert rc == 0 and 0 <= json.loads(stdout)["test_acc"] <= 100


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recipe", "nope"], r"unknown recipe 'nope'"),
        (["--set", "optim.lrr=0.1"], r"unknown key 'optim\.lrr'.*'optim\.lr'"),
        (["--set", "train.epochs=ten"], r"train\.epochs must be int"),
        (["--epochs", "0"], r"train\.epochs must be > 0"),
        (["--batch-size", "512"], r"batch_size=512 is larger than the training set \(256"),
        (["--model", "resnet21"], r"model: .*unknown model.*'resnet21' \(did you mean"),
        (["--set", "train.sync_bn=true"], r"sync_bn needs CUDA"),
    ],
)
def test_bad_recipe_input_is_one_line_exit_2(idx_dir, tmp_path, capsys, extra, message):
    import re

    line = usage_error(capsys, *small(idx_dir, tmp_path / "run"), *extra)
    assert re.search(message, line), line


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    line = usage_error(capsys, *small(tmp_path / "nowhere", tmp_path / "run"))
    assert "does not exist" in line and "make data" in line


def test_corrupt_dataset_is_one_line(idx_dir, tmp_path, capsys):
    f = idx_dir / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    line = usage_error(capsys, *small(idx_dir, tmp_path / "run"))
    assert "train-images-idx3-ubyte.gz" in line


def test_existing_out_is_refused_and_kept(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    line = usage_error(capsys, *small(idx_dir, out))
    assert "already exists" in line and "--resume" in line and "--overwrite" in line
    assert (out / "precious.txt").read_text() == "keep me"


def test_resume_refuses_missing_run_and_changed_model_or_data(idx_dir, tmp_path, capsys):
    assert "no run there" in usage_error(capsys, "train", "--resume", str(tmp_path / "none"))
    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out), "--epochs", "1")[0] == 0
    before = (out / "last.pt").read_bytes()
    line = usage_error(capsys, "train", "--resume", str(out), "--model", "resnet32")
    assert "model.name='resnet20', not 'resnet32'" in line
    other = tmp_path / "other"
    from fakedata import write_idx

    write_idx(other, n_train=256, n_test=128, seed=1)
    line = usage_error(capsys, "train", "--resume", str(out), "--data", f"fashion-mnist:{other}")
    assert "data.spec" in line
    (idx_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(
        (other / "t10k-labels-idx1-ubyte.gz").read_bytes()
    )
    line = usage_error(capsys, "train", "--resume", str(out))
    assert "the data differ" in line
    assert (out / "last.pt").read_bytes() == before


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    # Epoch 1 trains at a sane constant-warmup LR; epoch 2 jumps to an absurd one.
    line = usage_error(
        capsys,
        *small(idx_dir, out),
        "--set",
        "optim.lr=1e30",
        "--set",
        "sched.decay=none",
        "--set",
        "sched.warmup=constant",
        "--set",
        "sched.warmup_epochs=1",
        "--set",
        "sched.warmup_lr=0.01",
    )
    assert "loss became" in line and "epoch 2" in line and "at step" in line
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_acnet_gammas_reach_every_branch_from_the_recipe():
    cfg = config.load(
        "baseline",
        {"model.acnet": True, "model.acnet_side_gamma": 0.25, "model.acnet_square_gamma": 0.5},
    )
    blocks = [m for m in build_model(cfg, 10, 1).modules() if hasattr(m, "square_bn")]
    assert blocks and all(
        torch.all(b.square_bn.weight == 0.5)
        and torch.all(b.hor_bn.weight == 0.25)
        and torch.all(b.ver_bn.weight == 0.25)
        for b in blocks
    )


def test_sync_bn_conversion_is_structural_on_cpu():
    cfg = config.load("baseline", {"train.sync_bn": True})
    t = make_training(cfg, build_model(cfg, 10, 1), Dist(0, 1, torch.device("cpu")), 10)
    kinds = {type(m).__name__ for m in t.net.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out), "--device", "cuda", "--epochs", "1")[0] == 0
    assert json.loads((out / "summary.json").read_text())["device"] != "cpu"


def _state(out: Path) -> tuple[dict, list[dict]]:
    ckpt = torch.load(out / "last.pt", weights_only=True)
    rows = [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in ckpt["metrics"]]
    return ckpt["model"], rows


@pytest.mark.slow
def test_ctrl_c_then_resume_is_bit_identical(idx_dir, tmp_path, capsys):
    args = small(
        idx_dir,
        tmp_path / "x",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--set",
        "train.eval_batch_size=128",
        "--set",
        "train.threads=1",  # this process and the subprocess sum in the same order
    )
    ref = tmp_path / "ref"
    assert run_cli(capsys, *[str(ref) if a == str(tmp_path / "x") else a for a in args])[0] == 0

    cut = tmp_path / "cut"
    cmd = [
        sys.executable,
        "-m",
        "freebies",
        *[str(cut) if a == str(tmp_path / "x") else a for a in args],
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (cut / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # land somewhere inside epoch 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"--resume {cut}" in err
    ckpt = torch.load(cut / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) < (3, 0), "the interrupt came too late to test"

    rc, _, err = run_cli(capsys, "train", "--resume", str(cut))
    assert rc == 0, err
    (ref_model, ref_rows), (cut_model, cut_rows) = _state(ref), _state(cut)
    assert cut_rows == ref_rows
    for key, value in ref_model.items():
        assert torch.equal(value, cut_model[key]), key


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(idx_dir, tmp_path):
    """DDP over 2 processes (batch 32 each) = 1 process (batch 64), weight for weight.

    Both run in float64, where the two ways of summing the gradient (one batch of 64, or
    all-reduced halves) agree to ~1e-15 relative per step, whatever the CPU's summation order.
    After an epoch of 4 steps the weights then agree to ~1e-13; a real DDP bug (a gradient not
    averaged, a shard seen twice, the LR not scaled) moves them by 1e-3 or more. In float32 the
    summation order alone moves them by ~1e-4, which is why fp32 cannot be compared tightly.
    """
    common = [
        "train",
        "--data",
        f"fashion-mnist:{idx_dir}",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        *("--set", "model.norm=gn", "--set", "aug.crop_padding=0", "--set", "aug.hflip=false"),
        *("--set", "optim.lr_scaling=linear", "--set", "train.eval_batch_size=64"),
        *("--set", "train.precision=fp64"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "freebies", *common, "--out", str(one)],
        check=True,
        env=env,
        capture_output=True,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run(
        [*torchrun, "-m", "freebies", *common, "--out", str(two)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (m1, rows1), (m2, rows2) = _state(one), _state(two)
    for key, value in m1.items():
        assert value.dtype == torch.float64 or not value.is_floating_point(), key
        torch.testing.assert_close(m2[key], value, atol=1e-9, rtol=0, msg=key)
    assert rows2[0]["test_acc"] == pytest.approx(rows1[0]["test_acc"], abs=1e-9)
    assert rows2[0]["train_loss"] == pytest.approx(rows1[0]["train_loss"], abs=1e-9)
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2


def test_missing_default_dataset_lists_places_and_how_to_get_it(tmp_path, capsys, monkeypatch):
    from freebies.data import idx

    monkeypatch.setattr(idx, "SYSTEM_DATASETS", tmp_path / "system")
    monkeypatch.setenv("FREEBIES_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    line = usage_error(capsys, "train", "--recipe", "baseline", "--out", str(tmp_path / "run"))
    assert "fashion-mnist not found" in line and "make data" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_trains_exactly_like_the_in_memory_folder(tmp_path, capsys, workers):
    from fakedata import write_folder

    write_folder(tmp_path / "imgs", classes=("a", "b", "c"), n_per_class=24, size=(12, 10))
    runs = {}
    for name, stream in (("mem", "false"), ("stream", "true")):
        out = tmp_path / name
        rc, _, err = run_cli(
            capsys,
            "train",
            "--recipe",
            "baseline",
            "--data",
            f"folder:{tmp_path / 'imgs'}",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--model",
            "resnet20",
            "--set",
            "data.val_split=0.2",
            "--set",
            f"data.stream={stream}",
            "--set",
            f"data.workers={workers}",
        )
        assert rc == 0, err
        runs[name] = _state(out)
    (m_mem, rows_mem), (m_stream, rows_stream) = runs["mem"], runs["stream"]
    assert rows_stream == rows_mem
    for key, value in m_mem.items():
        assert torch.equal(value, m_stream[key]), key


def test_stream_is_refused_for_in_memory_formats(idx_dir, tmp_path, capsys):
    line = usage_error(capsys, *small(idx_dir, tmp_path / "run"), "--set", "data.stream=true")
    assert "data.stream is for folder:" in line


EVERY_TRICK = {
    "optim.lr": 0.01,
    "optim.lr_scaling": "linear",
    "optim.no_bn_decay": True,
    "sched.decay": "cosine",
    "sched.warmup_epochs": 1,
    "loss.label_smoothing": 0.1,
    "aug.vflip": True,
    "aug.autoaugment": "trivialaugment",
    "aug.rotate": 10,
    "aug.color_jitter": 0.2,
    "aug.pca_lighting": 0.1,
    "aug.cutout": 8,
    "aug.random_erasing": 0.5,
    "aug.erasing_value": "zero",
    "aug.mixup": 0.2,
    "aug.cutmix": 1.0,
    "aug.ricap": 0.3,
    "aug.switch_prob": [1, 1, 2],
    "aug.mix_prob": 0.9,
    "aug.mix_off_epochs": 1,
    "model.init": "xavier",
    "model.zero_init_residual": True,
    "model.dropout": 0.1,
    "model.acnet": True,
    "ema.decay": 0.9,
    "optim.lookahead_every": 2,
    "distill.alpha": 0.5,
    "data.val_split": 0.2,
    "train.early_stop_patience": 5,
}


@pytest.mark.parametrize("optimizer", ["sgd", "adabound", "amsbound", "muon"])
def test_every_trick_at_once_trains(idx_dir, tmp_path, capsys, optimizer):
    """Smoke: two steps per epoch with every trick on at once, a teacher included."""
    teacher = tmp_path / "teacher"
    assert run_cli(capsys, *small(idx_dir, teacher), "--epochs", "1")[0] == 0
    sets = {**EVERY_TRICK, "optim.name": optimizer, "distill.teacher": str(teacher / "last.pt")}
    out = tmp_path / "run"
    rc, _, err = run_cli(
        capsys,
        *small(idx_dir, out),
        "--batch-size",
        "96",
        "--limit-train",
        "200",
        *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")],
    )
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs_run"] == 2 and len(rows) == 2
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert "ema" in torch.load(out / "last.pt", weights_only=True)
    # Every trick is free at inference: the deployed model costs what the plain ResNet-20 does.
    plain = config.load("baseline", {"train.batch_size": 96})
    assert summary["infer_macs"] == classify.infer_macs(plain, 10, (1, 28, 28))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["aug.mixup=-1"], r"aug\.mixup=-1\.0 must be >= 0 \(the Beta alpha"),
        (["aug.mix_off_epochs=5"], r"mix_off_epochs=5 must be shorter than the run"),
        (["aug.mixup=0.2", "aug.switch_prob=[1, 2]"], r"one non-negative weight per mixer"),
        (["aug.random_erasing=1.5"], r"random_erasing=1\.5 must be in \[0, 1\]"),
        (["aug.erasing_scale=[0.4, 0.1]"], r"inverted"),
        (["optim.name=adabund"], r"did you mean 'adabound'"),
    ],
)
def test_bad_trick_settings_are_one_line(idx_dir, tmp_path, capsys, overrides, message):
    import re

    sets = [a for o in overrides for a in ("--set", o)]
    line = usage_error(capsys, *small(idx_dir, tmp_path / "run"), *sets)
    assert re.search(message, line), line


def test_distillation_from_a_freebies_checkpoint(idx_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert run_cli(capsys, *small(idx_dir, teacher), "--epochs", "1")[0] == 0
    out = tmp_path / "student"
    rc, _, err = run_cli(
        capsys,
        *small(idx_dir, out),
        "--epochs",
        "1",
        "--model",
        "resnet20",
        "--set",
        f"distill.teacher={teacher / 'last.pt'}",
        "--set",
        "distill.alpha=0.7",
        "--set",
        "distill.temperature=3",
        "--set",
        "aug.mixup=0.2",
    )
    assert rc == 0, err
    assert 0 <= json.loads((out / "summary.json").read_text())["test_acc"] <= 100


def test_distillation_refuses_a_teacher_with_other_classes(idx_dir, tmp_path, capsys):
    from fakedata import write_folder

    write_folder(
        tmp_path / "imgs", classes=("a", "b", "c"), n_per_class=12, size=(28, 28), mode="L"
    )
    teacher = tmp_path / "teacher"
    rc, _, err = run_cli(
        capsys,
        "train",
        "--recipe",
        "baseline",
        "--data",
        f"folder:{tmp_path / 'imgs'}",
        "--out",
        str(teacher),
        "--epochs",
        "1",
        "--batch-size",
        "8",
    )
    assert rc == 0, err
    line = usage_error(
        capsys,
        *small(idx_dir, tmp_path / "student"),
        "--set",
        f"distill.teacher={teacher / 'last.pt'}",
    )
    assert "predicts 3 classes but the data have 10" in line


def test_ema_is_what_gets_evaluated_and_its_state_is_required_on_resume(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *small(idx_dir, out), "--epochs", "1", "--set", "ema.decay=0.9")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    rc, stdout, _ = run_cli(capsys, "eval", str(out / "last.pt"))
    assert rc == 0 and json.loads(stdout)["test_acc"] == pytest.approx(summary["test_acc"])
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert "ema" in ckpt
    raw = {k: v for k, v in ckpt.items() if k != "ema"}
    raw["epoch"] = 0  # pretend it was interrupted, so resuming has work to do
    torch.save(raw, out / "last.pt")
    line = usage_error(capsys, "train", "--resume", str(out))
    assert "holds no EMA weights" in line


def test_early_stopping_run_records_why(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    # An LR of ~0 keeps val_acc nearly flat, so patience 1 stops well before epoch 5.
    rc, _, err = run_cli(
        capsys,
        *small(idx_dir, out),
        "--epochs",
        "5",
        "--set",
        "optim.lr=1e-9",
        "--set",
        "data.val_split=0.25",
        "--set",
        "train.early_stop_patience=1",
    )
    assert rc == 0, err
    from freebies.engine import early_stop_reason

    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(k for k in range(1, 6) if early_stop_reason(rows[:k], 1))
    assert summary["epochs_run"] == len(rows) == first < 5
    assert summary["stop_reason"] == early_stop_reason(rows, 1)
    assert "needs a validation split" in usage_error(
        capsys, *small(idx_dir, tmp_path / "x"), "--set", "train.early_stop_patience=2"
    )


def test_guards_warn_on_sgd_lr_with_adaptive_optimizer_and_refuse_resume_without_state(
    idx_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, *small(idx_dir, out), "--epochs", "1", "--set", "optim.name=adamw")
    assert rc == 0
    assert "warning: optim.lr=0.1 looks like an SGD learning rate" in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    del ckpt["optimizer"]
    ckpt["epoch"] = 0
    torch.save(ckpt, out / "last.pt")
    assert "lacks optimizer state" in usage_error(capsys, "train", "--resume", str(out))


def test_a_run_gives_the_caller_its_thread_count_back(idx_dir, tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = small(idx_dir, tmp_path / "r", "--epochs", "1", "--set", "train.threads=1")
        assert run_cli(capsys, *args)[0] == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
