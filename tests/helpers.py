"""Helpers shared by the CLI tests."""

from __future__ import annotations

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
