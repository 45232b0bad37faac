"""`freebies ablate --shard I/N` and the launchers: claims, takeover, merge, the SLURM script."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fakedata import write_idx
from freebies.experiments import shards
from helpers import run_cli, usage_error
from test_ablate import TRAINER_ARGS, _fake_grid

# What a run's row must agree on, however the grid was split (timing fields left out).
SAME = ("variant", "kind", "tricks", "overrides", "seed", "config", "test_acc", "val_acc",
        "test_nll", "val_nll", "curve", "chosen_by")  # fmt: skip


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return [{k: r.get(k) for k in SAME} for r in rows]


def _claims(out: Path) -> dict[str, list[dict]]:
    """Every run's claims, oldest first."""
    return {
        d.name: [json.loads((d / n).read_text()) for n in sorted(os.listdir(d), key=int)]
        for d in sorted((out / "locks").iterdir())
        if d.is_dir()
    }


def test_shard_spec_and_slices_cover_the_grid_once():
    assert shards.parse_shard("2/3") == (2, 3) and shards.parse_shard("1/1") == (1, 1)
    runs = list(range(11))
    parts = [shards.take(runs, (i, 3)) for i in (1, 2, 3)]
    assert sorted(x for part in parts for x in part) == runs and parts[1] == [1, 4, 7, 10]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--shard", "3/2"], r"--shard 3/2: I must be between 1 and N"),
        (["--shard", "x"], r"--shard 'x': give I/N with whole numbers"),
        (["--shard", "0/2"], r"I must be between 1 and N"),
        (["--launcher", "local", "--shards", "0"], r"--shards must be >= 1, got 0"),
        (["--launcher", "slurm"], r"--launcher slurm needs --shards N"),
        (["--shards", "2"], r"--shards N needs --launcher"),
        (["--shard", "1/2", "--launcher", "local", "--shards", "2"], r"give one"),
        (["--launcher", "local", "--shards", "2", "--submit"], r"go with --launcher slurm"),
    ],
)
def test_bad_shard_flags_are_one_line_and_write_nothing(tmp_path, capsys, argv, match):
    import re

    out = tmp_path / "grid"
    line = usage_error(capsys, *_fake_grid(tmp_path, out, *argv))
    assert re.search(match, line), line
    assert not out.exists()


def _exited_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True)  # fmt: skip
    return int(done.stdout)


def test_claims_are_exclusive_and_dead_ones_are_taken_over(tmp_path):
    first = shards.claim(tmp_path, "r", (1, 2))
    assert first.number == 0 and first.info["pid"] == os.getpid()
    assert shards.claim(tmp_path, "r", (2, 2)) is None  # this process is alive
    # A claim whose process has exited on this host is taken over by the next claim number.
    lock = tmp_path / "locks" / "r"
    (lock / "1").write_text(json.dumps({"host": shards._host(), "pid": _exited_pid()}))
    taken = shards.claim(tmp_path, "r", (2, 2))
    assert taken.number == 2 and taken.info["taken_over"]["pid"] != os.getpid()
    # Its pid reused by another process (another start time) is dead too.
    (lock / "3").write_text(
        json.dumps({"host": shards._host(), "pid": os.getpid(), "pid_start": 1})
    )
    assert not shards.latest(tmp_path, "r").alive()
    # Another host's claim lives while its heartbeat is fresh: STALE_S decides.
    (lock / "4").write_text(json.dumps({"host": "node-elsewhere", "pid": 1}))
    assert shards.claim(tmp_path, "r", (2, 2)) is None
    old = time.time() - shards.STALE_S - 1
    os.utime(lock / "4", (old, old))
    assert shards.claim(tmp_path, "r", (2, 2)).number == 5


def test_three_local_shards_give_the_rows_of_one_process(tmp_path, capsys):
    one, three = tmp_path / "one", tmp_path / "three"
    extra = ("--metric", "test_nll", "--bag", "--tricks", "label_smoothing", "--seeds", "2")
    rc, _, err = run_cli(capsys, *_fake_grid(tmp_path, one, *extra))
    assert rc == 0, err
    rc, printed, err = run_cli(
        capsys, *_fake_grid(tmp_path, three, *extra, "--launcher", "local", "--shards", "3")
    )
    assert rc == 0, err
    assert "3 shards: 3 variants x 2 seeds" in printed
    assert _rows(three) == _rows(one) and len(_rows(one)) == 6  # 4 runs and the bag's 2
    claims = _claims(three)
    assert all(len(c) == 1 for c in claims.values())  # every run trained exactly once
    # Which shard trained what depends on timing: a shard that starts late finds the
    # unclaimed runs of its slice taken by the others once they finished their own.
    assert {c[0]["shard"] for c in claims.values()} <= {"1/3", "2/3", "3/3"}
    assert json.loads((three / "bag.json").read_text())["variant"]["tricks"] == ["label_smoothing"]
    assert run_cli(capsys, "report", str(three))[0] == 0


def test_a_shard_slices_the_runs_left_and_then_takes_any_nobody_holds(tmp_path, capsys):
    """A grid grown by --also: its new runs are spread over the shards (not left in whichever
    slice their index fell in), and a shard that is done takes the runs no one started."""
    out = tmp_path / "grid"
    argv = _fake_grid(tmp_path, out, "--metric", "test_nll", "--seeds", "2")
    assert run_cli(capsys, *argv)[0] == 0  # 3 variants x 2 seeds, by one process
    grown = [*argv, "--also", "ls3=loss.label_smoothing=0.3"]
    # Of all 8 runs, both new ones fall in shard 2's round-robin slice (indices 3 and 7);
    # of the 2 runs left, shard 1's slice is the first. Shard 1 alone trains both.
    rc, printed, err = run_cli(capsys, *grown, "--shard", "1/2")
    assert rc == 0, err
    new = {k: c for k, c in _claims(out).items() if k.startswith("ls3")}
    assert sorted(new) == [f"ls3_loss.label_smoothing=0.3_-s{s}" for s in (0, 1)]
    assert all(c[-1]["shard"] == "1/2" for c in new.values())
    first, second = (new[f"ls3_loss.label_smoothing=0.3_-s{s}"][-1]["start"] for s in (0, 1))
    assert first <= second  # its own slice (seed 0) before the taken run (seed 1)
    assert "runs are with other shards" not in printed and len(_rows(out)) == 8


def test_local_shards_split_the_cores_between_them(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert shards.shard_env(2, {})["OMP_NUM_THREADS"] == "4"
    assert shards.shard_env(3, {})["OMP_NUM_THREADS"] == "2"  # 8 // 3
    assert shards.shard_env(16, {})["OMP_NUM_THREADS"] == "1"
    kept = shards.shard_env(2, {"OMP_NUM_THREADS": "3", "PATH": "/bin"})
    assert kept == {"OMP_NUM_THREADS": "3", "PATH": "/bin"}  # the user's own choice wins
    # The launcher starts each shard with it (and the shard's trainers inherit it).
    started = []

    class Shard:
        returncode = 0

        def __init__(self, cmd, stdout, stderr, env):
            started.append((cmd[-1], env.get("OMP_NUM_THREADS")))

        def poll(self):
            return 0

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(shards.subprocess, "Popen", Shard)
    shards.run_local(lambda shard: ["ablate", "--shard", shard], 2, tmp_path)
    assert started == [("1/2", "4"), ("2/2", "4")]


# A trainer that checkpoints, then (with FAKE_BLOCK set) waits for SIGINT like a long run.
BLOCKING_TRAINER = (
    TRAINER_ARGS
    + """
out = Path(a.resume or a.out)
if not a.resume:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": sets["train.seed"]}}))
    (out / "last.pt").write_bytes(b"")
    if os.environ.get("FAKE_BLOCK"):
        signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
        time.sleep(120)
print("resumed" if a.resume else "fresh")
(out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 50.0}) + "\\n")
(out / "summary.json").write_text(json.dumps({"test_acc": 50.0, "train_s": 1.0}))
"""
)


def test_a_killed_shards_run_is_taken_over_by_the_next_shard(tmp_path, capsys):
    script = tmp_path / "blocking.py"
    script.write_text(BLOCKING_TRAINER)
    out = tmp_path / "grid"
    argv = ["ablate", "--trainer", f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
            "--tricks", "label_smoothing", "--seeds", "1", "--out", str(out)]  # fmt: skip
    shard1 = subprocess.Popen(
        [sys.executable, "-m", "freebies", *argv, "--shard", "1/2"],
        env={**os.environ, "FAKE_BLOCK": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt, deadline = out / "runs" / "baseline-s0" / "last.pt", time.monotonic() + 300
    while not ckpt.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(shard1.pid, signal.SIGKILL)
    shard1.wait()
    while shards.latest(out, "baseline-s0").alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # its trainer got SIGINT from the kernel and exits
    # The report names the missing runs and the dead claim, one line each.
    rc, _, err = run_cli(capsys, "report", str(out))
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"freebies: error: 2 of 2 runs of {out} have not finished")
    assert f"  baseline-s0: claimed by shard 1/2 on {shards._host()} pid {shard1.pid}" in err
    assert "dead (next shard takes it over)" in err
    assert "  label_smoothing-s0: not claimed by any shard yet" in err

    rc, printed, err = run_cli(capsys, *argv, "--shard", "2/2")
    assert rc == 0, err
    assert "1 variants x 1 seeds" not in printed and "2 variants x 1 seeds" in printed
    claims = _claims(out)["baseline-s0"]
    assert [c["shard"] for c in claims] == ["1/2", "2/2"]
    assert claims[1]["taken_over"]["pid"] == shard1.pid
    assert (out / "logs" / "baseline-s0.log").read_text().split() == ["resumed"]


def test_slurm_script_runs_shard_i_of_n_and_submits(tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid"
    argv = _fake_grid(tmp_path, out, "--launcher", "slurm", "--shards", "3", "--seeds", "2",
                      "--sbatch", "--partition=gpu --gres gpu:1 -t 2:00:00")  # fmt: skip
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    line = usage_error(capsys, *argv, "--submit")
    assert "--submit needs sbatch on PATH" in line and not (out / "slurm").exists()
    monkeypatch.setenv("PATH", path)
    rc, printed, err = run_cli(capsys, *argv)
    assert rc == 0, err
    script = out / "slurm" / "ablate.sbatch"
    assert printed.strip() == f"wrote {script}; submit it with: sbatch {script}"
    text = script.read_text()
    assert "#SBATCH --array=1-3\n" in text and "#SBATCH --gres gpu:1\n" in text
    assert "#SBATCH -t 2:00:00\n" in text and "#SBATCH --partition=gpu\n" in text
    assert text.rstrip().endswith('--shard "$SLURM_ARRAY_TASK_ID/3"')
    assert "--launcher" not in text and "--sbatch" not in text
    # What SLURM does: each array task runs the script with its own task id.
    tasks = [
        subprocess.Popen(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": task},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for task in ("1", "2", "3")
    ]  # fmt: skip
    assert [t.wait() for t in tasks] == [0, 0, 0], [t.stderr.read() for t in tasks]
    assert len(_rows(out)) == 6 and run_cli(capsys, "report", str(out))[0] == 0
    # --submit runs sbatch on the script.
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "Submitted batch job 42 ($1)"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    rc, printed, _ = run_cli(capsys, *argv, "--submit")
    assert rc == 0 and printed.strip() == f"wrote {script}; Submitted batch job 42 ({script})"


def _real_grid(data: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "--data", f"fashion-mnist:{data}", "--out", str(out), "--model",
            "airnet-8-8-8", "--epochs", "3", "--batch-size", "32", "--set",
            "train.eval_batch_size=64", "--tricks", "label_smoothing", *extra]  # fmt: skip


@pytest.mark.slow
def test_real_grid_as_three_shards_matches_one_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as each shard's: fp32 sums in the same order
    write_idx(tmp_path / "data", n_train=256, n_test=128)
    one, three = tmp_path / "one", tmp_path / "three"
    assert run_cli(capsys, *_real_grid(tmp_path / "data", one, "--seeds", "2"))[0] == 0
    argv = _real_grid(tmp_path / "data", three, "--seeds", "2", "--launcher", "local")
    assert run_cli(capsys, *argv, "--shards", "3")[0] == 0
    assert _rows(three) == _rows(one) and len(_rows(one)) == 4


@pytest.mark.slow
def test_killed_shard_resumes_bit_identically_on_another_shard(tmp_path):
    data = tmp_path / "data"
    # 32 steps an epoch: long enough that the kill lands mid-run on a loaded machine too (with 8
    # the run could finish between epoch 1's metrics and the kill; seen under pytest -n 2).
    write_idx(data, n_train=1024, n_test=128)
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "freebies", *_real_grid(data, out, "--seeds", "1")]
    shard1 = subprocess.Popen([*cmd, "--shard", "1/2"], stderr=subprocess.DEVNULL)
    first, deadline = out / "runs" / "baseline-s0" / "metrics.jsonl", time.monotonic() + 300
    while not first.is_file() and time.monotonic() < deadline:  # mid-way: epoch 1 of 3 done
        time.sleep(0.05)
    os.kill(shard1.pid, signal.SIGKILL)
    shard1.wait()
    while shards.latest(out, "baseline-s0").alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (out / "runs" / "baseline-s0" / "summary.json").is_file()
    done = subprocess.run([*cmd, "--shard", "2/2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [c["shard"] for c in _claims(out)["baseline-s0"]] == ["1/2", "2/2"]
    # The same run, uninterrupted, from the command the grid recorded.
    row = json.loads((out / "results" / "baseline-s0.json").read_text())
    ref = tmp_path / "ref"
    words = [
        ref if w == str(out / "runs" / "baseline-s0") else w for w in shlex.split(row["command"])
    ]
    alone = subprocess.run(
        [sys.executable, "-m", "freebies", *map(str, words[1:])], capture_output=True
    )
    assert alone.returncode == 0, alone.stderr
    got = torch.load(out / "runs" / "baseline-s0" / "last.pt", weights_only=True)["model"]
    want = torch.load(ref / "last.pt", weights_only=True)["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
