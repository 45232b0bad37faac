"""Facts about where a run ran (machine, commit, memory) and its autocast, for every task."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from freebies.data.io import write_text


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


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # CPU flags of native bf16 arithmetic
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much to be chosen: fp32 is the safe default


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def bf16_speedup(step: Callable[[bool], object], repeats: int = 3) -> float:
    """fp32 time over bf16-autocast time of `step(bf16)`: one warm-up each, then `repeats`
    interleaved pairs, medians compared (so machine noise hits both alike)."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True):
        step(bf16)
    for _ in range(repeats):
        for bf16 in (False, True):
            t0 = time.perf_counter()
            step(bf16)
            times[bf16].append(time.perf_counter() - t0)
    return statistics.median(times[False]) / statistics.median(times[True])


AGREE = 1.15  # two probes agree when the larger speed-up is at most this times the smaller
MAX_PROBES = 4


def agreed_speedup(probe: Callable[[], float]) -> tuple[float | None, list[float]]:
    """Run `probe` until two successive speed-ups agree (within AGREE, and on the same side of
    MIN_SPEEDUP), at most MAX_PROBES times. Returns their mean (None when no two agreed: a
    busy machine) and every measurement."""
    seen = [probe()]
    while len(seen) < MAX_PROBES:
        seen.append(probe())
        a, b = sorted(seen[-2:])
        if b <= a * AGREE and (a >= MIN_SPEEDUP) == (b >= MIN_SPEEDUP):
            return (a + b) / 2, seen
    return None, seen


def choose_precision(
    precision: str, device: torch.device, probe: Callable[[], float] | None, key: str
) -> tuple[str, str]:
    """What `train.precision` trains in here, and why: (fp32 | bf16 | fp64, reason).

    Anything but `auto` is kept. `auto` is bf16 autocast on CUDA. On a CPU it is bf16 only
    when the CPU has native bf16 (avx512_bf16 or amx_bf16) and the bf16 speed-up of this run's
    own training step (`probe`, repeated until two measurements agree: `agreed_speedup`) is at
    least MIN_SPEEDUP; probes that never agree decide fp32 and say so. The verdict and its
    measurements are cached per CPU (model, cores, bf16 flags), torch version and `key`
    (model and batch) in ~/.cache/freebies/precision.json, so a new CPU or torch probes again.
    FREEBIES_AUTO_PRECISION=fp32|bf16 decides `auto` without probing (the test suite pins it).
    """
    if precision != "auto":
        return precision, "set in the recipe"
    forced = os.environ.get("FREEBIES_AUTO_PRECISION")
    if forced in ("fp32", "bf16"):
        return forced, "auto, pinned by FREEBIES_AUTO_PRECISION"
    if device.type == "cuda":
        return "bf16", "auto: bf16 autocast on CUDA"
    if probe is None:
        return "fp32", "auto: fp32 on the CPU (this task has no bf16 probe)"
    flags = cpu_flags() & BF16_FLAGS
    if not flags:
        return "fp32", "auto: fp32, this CPU has no native bf16 (avx512_bf16 or amx_bf16)"
    path = Path.home() / ".cache" / "freebies" / "precision.json"
    entry = f"{machine()} {'+'.join(sorted(flags))} | torch {torch.__version__} | {key}"
    cache: dict[str, dict] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text())
    source = "cached probe"
    if not isinstance(cache.get(entry), dict):  # absent, or a single probe of older versions
        speedup, seen = agreed_speedup(probe)
        cache[entry], source = {"speedup": speedup, "probes": seen}, "probe"
        if speedup is not None:  # a busy machine's disagreement is not a verdict to keep
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text(path, json.dumps(cache, indent=1) + "\n")
    speedup, seen = cache[entry]["speedup"], cache[entry]["probes"]
    if speedup is None:
        runs = ", ".join(f"{v:.2f}x" for v in seen)
        return "fp32", f"auto: fp32, the bf16 probes disagreed ({runs}: a busy machine?) ({key})"
    choice = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    return choice, f"auto: {choice}, bf16 autocast ran {speedup:.2f}x fp32 ({source}, {key})"


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for `bf16`, and for `auto` on CUDA; off for fp32 and fp64."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of weights and activations: float64 for `fp64` (exact checks), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32
