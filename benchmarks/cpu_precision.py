"""Does bf16 autocast or channels_last speed up a training step on this CPU?

Times a model's training step (forward, backward, SGD step; ResNet-20 unless --model) under
fp32 / bf16 autocast x contiguous / channels_last, interleaved in one process so the shared
machine's noise hits every variant alike, and reports each as a ratio to fp32 contiguous.

    python benchmarks/cpu_precision.py [--batch 256] [--steps 8] [--repeats 5] [--model M]
        [--out FILE]

Writes docs/results/cpu_precision.json (machine, torch version, seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from freebies.models import create_model
from freebies.runtime import BF16_FLAGS, cpu_flags, machine

VARIANTS = {
    "fp32, contiguous": (False, False),
    "fp32, channels_last": (False, True),
    "bf16 autocast, contiguous": (True, False),
    "bf16 autocast, channels_last": (True, True),
}


def make_step(
    bf16: bool,
    channels_last: bool,
    batch: int,
    model_name: str = "resnet20",
    compile_model: bool = False,
):
    """One training step (forward, backward, SGD) of `model_name` on a fixed random batch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name, 10, 1).to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    forward = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 1, 28, 28).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if not compile_model:  # a compiled step's first call compiles: the caller times it
        step()  # warm-up: kernel selection and allocation
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--out", type=Path, default=Path("docs/results/cpu_precision.json"))
    args = p.parse_args()

    steps = {name: make_step(*flags, args.batch, args.model) for name, flags in VARIANTS.items()}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
    base = statistics.median(rates["fp32, contiguous"])
    table = {
        name: {"img_per_s": statistics.median(r), "vs_fp32_contiguous": statistics.median(r) / base}
        for name, r in rates.items()
    }
    for name, row in table.items():
        print(f"{name:30s} {row['img_per_s']:7.0f} img/s  {row['vs_fp32_contiguous']:.2f}x")
    result = {
        "benchmark": "cpu_precision",
        "command": f"python benchmarks/cpu_precision.py --batch {args.batch} --steps "
        f"{args.steps} --repeats {args.repeats} --model {args.model} --out {args.out}",
        "model": args.model,
        "batch": args.batch,
        "table": table,
        "raw_img_per_s": rates,
        "machine": machine(),
        "native_bf16_flags": sorted(cpu_flags() & BF16_FLAGS),  # none: bf16 convs are emulated
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": 0,
        "cpu_has_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        if Path("/proc/cpuinfo").exists()
        else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
