"""Where the `fast` recipe's training step spends its time on this CPU, and what speeds it up.

Interleaved in one process (ratios, not absolute speeds, are the result on a shared machine):
the training step of ResNet-20 and of AirNets of several widths; then, for the fast recipe's
model, batch size, thread count, torch.compile (its compile time counted separately), and
the operators that dominate one step (torch.profiler). Precision
and memory layout: `python benchmarks/cpu_precision.py --model MODEL`.

    python benchmarks/fast_profile.py [--model airnet-16-64-64] [--repeats 5]

Writes docs/results/fast_profile.json (machine, torch version, seed 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from cpu_precision import make_step
from torch.profiler import ProfilerActivity, profile

from freebies import config
from freebies.runtime import machine


def rate(step, batch: int, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def interleaved(cases: dict, batch_of: dict, steps: int, repeats: int, before=None) -> dict:
    """Median img/s of each case, measured round-robin so noise hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, step in cases.items():
            if before:
                before(name)
            rates[name].append(rate(step, batch_of[name], steps))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=config.load("fast").model.name)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/results/fast_profile.json"))
    args = p.parse_args()
    threads = torch.get_num_threads()

    models = ["resnet20", "airnet-16-64-64", "airnet-24-96-96", "airnet-32-128-128",
              "airnet-64-256-256"]  # fmt: skip
    by_model = interleaved(
        {m: make_step(False, True, 512, m) for m in models},
        dict.fromkeys(models, 512),
        args.steps,
        args.repeats,
    )

    batches = {f"batch {b}": make_step(False, True, b, args.model) for b in (256, 512, 1024)}
    by_batch = interleaved(
        batches, {f"batch {b}": b for b in (256, 512, 1024)}, args.steps, args.repeats
    )

    step512 = batches["batch 512"]
    counts = {f"{n} thread(s)": n for n in sorted({1, threads})}
    by_threads = interleaved(
        {name: step512 for name in counts},
        {name: 512 for name in counts},
        args.steps,
        args.repeats,
        before=lambda name: torch.set_num_threads(counts[name]),
    )
    torch.set_num_threads(threads)

    compiled = make_step(False, True, 512, args.model, compile_model=True)
    t0 = time.perf_counter()
    compiled()  # the first call compiles
    compile_s = time.perf_counter() - t0
    by_compile = interleaved(
        {"eager": step512, "torch.compile": compiled},
        {"eager": 512, "torch.compile": 512},
        args.steps,
        args.repeats,
    )

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step512()
    ops = [
        {"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / 3}
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    ]
    step_ms = 1000 * 512 / by_batch["batch 512"]

    result = {
        "benchmark": "fast_profile",
        "command": f"python benchmarks/fast_profile.py --model {args.model} --steps {args.steps} "
        f"--repeats {args.repeats}",
        "model": args.model,
        "img_per_s_by_model_batch_512": by_model,
        "img_per_s_by_batch": by_batch,
        "img_per_s_by_threads": by_threads,
        "compile": {"compile_s": compile_s, **by_compile},
        "step_ms_batch_512": step_ms,
        "top_ops_batch_512": ops,
        "machine": machine(),
        "threads": threads,
        "torch": torch.__version__,
        "seed": 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "top_ops_batch_512"}, indent=2))
    for o in ops:
        print(f"{o['op']:40s} {o['self_cpu_ms_per_step']:7.1f} ms/step")


if __name__ == "__main__":
    main()
