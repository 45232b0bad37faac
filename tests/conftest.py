"""Shared fixtures: small datasets written in the real on-disk formats."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# `train.precision=auto` may probe bf16 on a CPU with native bf16: pin it, so that no test's
# result depends on the CPU (subprocesses inherit it; tests of the choice unset it).
os.environ["FREEBIES_AUTO_PRECISION"] = "fp32"
# Under pytest-xdist (`make test` runs one worker per core) each worker and the trainers it
# starts take one intra-op thread, so that the workers do not oversubscribe the cores; a test
# that needs another count sets it itself.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from fakedata import write_idx


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """A tiny learnable Fashion-MNIST look-alike: 256 train / 128 test, 28x28, 10 classes."""
    d = tmp_path / "fmnist"
    write_idx(d, n_train=256, n_test=128)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on 2 shared cores, 2 spinning OpenMP threads run ~100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test sees its own warnings: freebies.errors.warn says a message once per process."""
    from freebies import errors

    errors._WARNED.clear()
    yield
