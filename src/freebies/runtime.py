"""Facts about where a run ran (machine, commit, memory) and its autocast, for every task."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def git_commit() -> str | None:
    """The commit of the freebies checkout that runs, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> str:
    """CPU model and core count, for result files (compare figures only on the same machine)."""
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def provenance() -> dict[str, object]:
    """Where a benchmark figure was taken: the machine, intra-op threads and torch version."""
    return {"machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def peak_mem_mb(device: torch.device) -> float:
    """Peak CUDA allocations of this run on a GPU; on a CPU the process's peak RSS (per run
    when each run is its own process, as under `freebies ablate`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**20 if sys.platform == "darwin" else 2**10)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for `bf16`, and for `auto` on CUDA; off for fp32 and fp64."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of weights and activations: float64 for `fp64` (exact checks), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32
