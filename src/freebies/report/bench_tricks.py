"""`freebies bench tricks`: what each batch trick costs, against a ResNet-20 training step and
against the closest reference implementation, timed in one process.

References: torchvision v2 transforms applied image by image (crop+flip, Cutout as a square
RandomErasing, Random Erasing), torchvision v2's batch MixUp / CutMix, and for RICAP the seed
notes' loop with its errors fixed (numpy RNG, hard-coded CUDA calls, the loss carrying the
weights instead of the targets).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from freebies.data.loader import normalize
from freebies.models import create_model
from freebies.tricks import (
    autoaugment,
    cutmix,
    cutout,
    make_policy,
    mixup,
    one_hot,
    random_erasing,
    ricap,
)
from freebies.tricks.geometric import random_crop, random_flip


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def ricap_seed_notes(x: torch.Tensor, y: torch.Tensor, beta: float) -> tuple:
    """The seed notes' RICAP loop, fixed: torch RNG, soft targets, any device."""
    ih, iw = x.shape[2:]
    w = round(iw * float(torch.distributions.Beta(beta, beta).sample()))
    h = round(ih * float(torch.distributions.Beta(beta, beta).sample()))
    ws, hs = [w, iw - w, w, iw - w], [h, h, ih - h, ih - h]
    crops, target = [], torch.zeros_like(y)
    for k in range(4):
        index = torch.randperm(x.size(0))
        x_k = int(torch.randint(0, iw - ws[k] + 1, ()))
        y_k = int(torch.randint(0, ih - hs[k] + 1, ()))
        crops.append(x[index][:, :, y_k : y_k + hs[k], x_k : x_k + ws[k]])
        target += ws[k] * hs[k] / (ih * iw) * y[index]
    top = torch.cat((crops[0], crops[1]), 3)
    bottom = torch.cat((crops[2], crops[3]), 3)
    return torch.cat((top, bottom), 2), target


def run(batch: int = 256, repeats: int = 10) -> dict:
    """Time every batch trick and its reference; returns rows and the step time."""
    from torchvision.transforms import v2

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xu8 = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))
    mean, std = torch.tensor([72.9]), torch.tensor([90.0])
    x = normalize(xu8, mean, std)
    y = one_hot(labels, 10)

    model = create_model("resnet20", 10, 1).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xcl = x.to(memory_format=torch.channels_last)

    def step() -> None:
        loss = F.cross_entropy(model(xcl), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_ms = median_ms(step, max(3, repeats // 2))

    crop_flip = v2.Compose([v2.RandomCrop(28, padding=4), v2.RandomHorizontalFlip()])
    square = v2.RandomErasing(p=1.0, scale=(64 / 784, 64 / 784), ratio=(1.0, 1.0), value=0)
    erasing = v2.RandomErasing(p=0.5, value="random")
    tv_mixup, tv_cutmix = v2.MixUp(alpha=0.2, num_classes=10), v2.CutMix(alpha=1.0, num_classes=10)
    policy = make_policy("cifar10")

    cases = [
        (
            "crop+flip",
            lambda: random_flip(random_crop(xu8, 4, g), g),
            lambda: torch.stack([crop_flip(img) for img in xu8]),
            "torchvision v2, per image",
        ),
        (
            "cutout",
            lambda: cutout(x, 8, 1, g),
            lambda: torch.stack([square(img) for img in x]),
            "v2.RandomErasing square, per image",
        ),
        (
            "random_erasing",
            lambda: random_erasing(x, 0.5, generator=g),
            lambda: torch.stack([erasing(img) for img in x]),
            "v2.RandomErasing, per image",
        ),
        ("mixup", lambda: mixup(x, y, 0.2, g), lambda: tv_mixup(x, labels), "v2.MixUp, batch"),
        ("cutmix", lambda: cutmix(x, y, 1.0, g), lambda: tv_cutmix(x, labels), "v2.CutMix, batch"),
        (
            "ricap",
            lambda: ricap(x, y, 0.3, g),
            lambda: ricap_seed_notes(x, y, 0.3),
            "seed notes' loop, fixed",
        ),
        (
            "autoaugment",
            lambda: autoaugment(xu8, policy, g),
            lambda: policy(xu8),
            "v2.AutoAugment on the batch (one choice shared by all images)",
        ),
    ]
    rows = []
    for name, ours, ref, ref_name in cases:
        ours_ms, ref_ms = median_ms(ours, repeats), median_ms(ref, repeats)
        rows.append(
            {
                "trick": name,
                "ours_ms": ours_ms,
                "share_of_step": ours_ms / step_ms,
                "reference": ref_name,
                "reference_ms": ref_ms,
                "speedup": ref_ms / ours_ms,
            }
        )
    return {"batch": batch, "step_ms": step_ms, "rows": rows}


def table(result: dict) -> str:
    lines = [
        f"ResNet-20 training step, batch {result['batch']}: {result['step_ms']:.1f} ms",
        "",
        "| trick | ours ms/batch | share of a step | reference | reference ms | ours vs ref |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['trick']} | {r['ours_ms']:.2f} | {100 * r['share_of_step']:.1f}% | "
            f"{r['reference']} | {r['reference_ms']:.2f} | "
            + (
                f"{r['speedup']:.1f}x faster |"
                if r["speedup"] >= 1
                else f"{1 / r['speedup']:.1f}x slower |"
            )
        )
    return "\n".join(lines)


def main(batch: int, repeats: int, out: Path | None) -> None:
    from freebies.runtime import machine

    result = run(batch, repeats)
    text = table(result)
    print(text)
    if out is not None:
        result.update(
            machine=machine(),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            seed=0,
            command=f"freebies bench tricks --batch {batch} --repeats {repeats} --out {out}",
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(
            f"# Batch trick cost\n\nCommand: `{result['command']}`  \nMachine: "
            f"{result['machine']}; torch {result['torch']}; {result['threads']} threads; "
            f"seed 0; median of {repeats} repeats.\n\n{text}\n"
        )
