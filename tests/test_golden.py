"""Refactors keep behaviour: the golden runs (tests/golden.py) train the same final weights as
the code that recorded tests/data/golden.json, bit for bit on the machine that recorded them
(fp32 sums may come out in another order on another CPU: there, each tensor's sum must agree
closely), and a format-1 checkpoint written by that code resumes to the same weights."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from freebies import checkpoint
from freebies.cli import main
from golden import (
    FORMAT1_CLASSIFY,
    GOLDEN,
    classify_argv,
    detect_argv,
    final_weights,
    fingerprint,
    machine_key,
    write_data,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_golden(task: str, weights: dict) -> None:
    want, got = json.loads(GOLDEN.read_text()), fingerprint(weights)
    assert got["sums"].keys() == want[task]["sums"].keys()
    if want["machine"] == machine_key():
        assert got["sha256"] == want[task]["sha256"], "the final weights changed"
        return
    for key, value in want[task]["sums"].items():
        assert got["sums"][key] == pytest.approx(value, rel=1e-3, abs=1e-2), key


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_data(tmp_path.relative_to(tmp_path))


def test_the_classification_golden_run_trains_the_recorded_weights(data, tmp_path):
    fmnist, _ = data
    assert main(classify_argv(fmnist, tmp_path / "run")) == 0
    assert_golden("classify", final_weights(tmp_path / "run"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "det" not in saved


def test_the_detection_golden_run_trains_the_recorded_weights(data, tmp_path):
    _, coco = data
    assert main(detect_argv(coco, tmp_path / "run")) == 0
    assert_golden("detect", final_weights(tmp_path / "run"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert not {"aug", "loss", "distill"} & saved.keys()


def test_a_format1_checkpoint_resumes_to_the_golden_weights(data, tmp_path, capsys):
    """Written mid-epoch 2 by the code before the per-task config (its config.yaml carries a
    det section); it migrates on read and finishes the golden run."""
    old = checkpoint.load(FORMAT1_CLASSIFY / "last.pt")
    assert "det" in yaml.safe_load((FORMAT1_CLASSIFY / "config.yaml").read_text())
    assert (old.epoch, old.step) == (1, 4)
    run = tmp_path / "run"
    shutil.copytree(FORMAT1_CLASSIFY, run)
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert_golden("classify", final_weights(run))
    assert checkpoint.load(run / "last.pt").format == checkpoint.FORMAT
    assert "det" not in yaml.safe_load((run / "config.yaml").read_text())
