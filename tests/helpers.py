"""Helpers shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from freebies.cli import main


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def usage_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run the CLI, expect exit code 2 and exactly one line on stderr; return that line."""
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def small(data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny but real run: 256 images, batch 64, 2 epochs, ResNet-20."""
    return [
        "train",
        "--recipe",
        "baseline",
        "--data",
        f"fashion-mnist:{data}",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--set",
        "train.eval_batch_size=64",
        *extra,
    ]
