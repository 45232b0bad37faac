"""`train.precision=auto`: the choice per machine (CPU flags, a timed probe, its cache), its
record in summary.json and the checkpoint, and resume keeping it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from freebies import checkpoint, runtime
from freebies.runtime import agreed_speedup, bf16_speedup, choose_precision
from helpers import run_cli, small

CPU = torch.device("cpu")


@pytest.fixture
def unpinned(monkeypatch, tmp_path):
    """auto decides for real (the suite pins it to fp32), with the cache in a fresh home."""
    monkeypatch.delenv("FREEBIES_AUTO_PRECISION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_a_precision_set_in_the_recipe_is_kept_and_never_probed(unpinned):
    def probe():
        raise AssertionError("probed")

    assert choose_precision("fp32", CPU, probe, "k") == ("fp32", "set in the recipe")
    assert choose_precision("bf16", CPU, probe, "k")[0] == "bf16"
    unpinned.setenv("FREEBIES_AUTO_PRECISION", "bf16")
    assert choose_precision("auto", CPU, probe, "k")[0] == "bf16"


def test_auto_is_fp32_on_a_cpu_without_native_bf16(unpinned):
    unpinned.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f"})
    choice, reason = choose_precision("auto", CPU, lambda: 9.0, "k")
    assert choice == "fp32" and "no native bf16" in reason
    assert choose_precision("auto", torch.device("cuda"), None, "k")[0] == "bf16"


def test_auto_follows_the_probe_and_caches_it_per_cpu_and_key(unpinned, tmp_path):
    unpinned.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    calls = []

    def probe(speedup):
        return lambda: calls.append(speedup) or speedup

    choice, reason = choose_precision("auto", CPU, probe(1.5), "net a")
    assert (choice, calls) == ("bf16", [1.5, 1.5]) and "1.50x" in reason and "(probe" in reason
    choice, reason = choose_precision("auto", CPU, probe(0.8), "net a")  # cached: not run
    assert (choice, calls) == ("bf16", [1.5, 1.5]) and "cached probe" in reason
    assert choose_precision("auto", CPU, probe(1.05), "net b")[0] == "fp32"  # under 1.1x
    cache = json.loads((tmp_path / "home" / ".cache" / "freebies" / "precision.json").read_text())
    assert sorted(v["speedup"] for v in cache.values()) == [1.05, 1.5]
    assert all("avx512_bf16" in k and torch.__version__ in k for k in cache)


def test_probes_repeat_until_they_agree_or_decide_fp32_and_say_so(unpinned, tmp_path):
    """A busy machine once measured 0.62x then 1.25x for the same step: no verdict from that."""
    unpinned.setattr(runtime, "cpu_flags", lambda: {"amx_bf16"})

    def sequence(*values):
        it = iter(values)
        return lambda: next(it)

    assert agreed_speedup(sequence(0.62, 1.25, 1.3)) == (pytest.approx(1.275), [0.62, 1.25, 1.3])
    # close, but on both sides of the 1.1x threshold: not agreed
    assert agreed_speedup(sequence(1.05, 1.12, 1.3, 1.31))[1] == [1.05, 1.12, 1.3, 1.31]
    choice, reason = choose_precision("auto", CPU, sequence(0.62, 1.25, 0.7, 1.4), "busy")
    assert choice == "fp32" and "probes disagreed (0.62x, 1.25x, 0.70x, 1.40x" in reason
    cache = tmp_path / "home" / ".cache" / "freebies" / "precision.json"
    assert not cache.exists()  # not kept: the next run probes again


def test_the_probe_times_both_precisions_interleaved():
    seen = []
    speedup = bf16_speedup(lambda bf16: seen.append(bf16), repeats=2)
    assert seen == [False, True, False, True, False, True]
    assert math.isfinite(speedup) and speedup > 0


def test_auto_is_recorded_printed_and_kept_on_resume(idx_dir, tmp_path, capsys, unpinned):
    unpinned.setattr(runtime, "cpu_flags", lambda: {"amx_bf16"})
    unpinned.setattr(runtime, "bf16_speedup", lambda step: 1.5)
    out = tmp_path / "run"
    args = small(idx_dir, out, "--model", "airnet-8-8-8", "--set", "train.precision=auto")
    rc, stdout, err = run_cli(capsys, *args)
    assert rc == 0, err
    assert "freebies: precision bf16 (auto: bf16, bf16 autocast ran 1.50x fp32" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and "1.50x" in summary["precision_reason"]
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt.precision == ["bf16", summary["precision_reason"]]
    # Back to the end of epoch 1 on a machine where bf16 no longer pays: the run keeps bf16.
    ckpt.epoch, ckpt.metrics = 1, ckpt.metrics[:1]
    checkpoint.save(ckpt, out / "last.pt")
    unpinned.setattr(runtime, "bf16_speedup", lambda step: 0.5)
    unpinned.setenv("HOME", str(tmp_path / "other-home"))
    rc, stdout, err = run_cli(capsys, "train", "--resume", str(out))
    assert rc == 0, err
    resumed = json.loads((out / "summary.json").read_text())
    assert (resumed["precision"], resumed["precision_reason"]) == ("bf16", ckpt.precision[1])


def test_the_suite_pins_auto_to_fp32(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = small(
        idx_dir, out, "--model", "airnet-8-8-8", "--epochs", "1", "--set", "train.precision=auto"
    )
    assert run_cli(capsys, *args)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["precision"] == "fp32" and "FREEBIES_AUTO_PRECISION" in summary["precision_reason"]
    )
