"""Batched tiles against a one-tile-at-a-time loop (what SAHI's torchvision wrapper does), same
model, same tiles, interleaved in one process, at several tile counts.

The model is a trained checkpoint's detector (--checkpoint, e.g. a `detect` recipe run) or
else the `detect` recipe's FCOS (MobileNetV3-small, FPN 64, 256 px) freshly initialised, both
with score threshold 0.05 as in evaluation; every tile is upsampled to the training size.
Both paths go through `freebies.detection.multiscale.multiscale_detect` with tiles only, so the
only difference is `batch_size` (1 against --batch). Prints ms per image and the speed-up.

    python benchmarks/tile_speed.py [--checkpoint runs/det/detect-s0/last.pt] [--images 4]
        [--grids 2x2 3x3 4x4] [--batch 16] [--repeats 3] [--out docs/results/tile_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from freebies import checkpoint, detect
from freebies.detection.model import build_detector
from freebies.detection.multiscale import multiscale_detect, tile_windows
from freebies.runtime import provenance


def ms_per_image(model, x, windows, batch_size: int) -> float:
    t0 = time.perf_counter()
    size = x.shape[-1]
    multiscale_detect(model, x, scales=(), windows=windows, input_size=size, batch_size=batch_size)
    return 1000 * (time.perf_counter() - t0) / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="a detection run's last.pt")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--grids", nargs="+", default=["2x2", "3x3", "4x4"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/results/tile_speed.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        ckpt = checkpoint.load(args.checkpoint, "detect")
        model, size = detect.load_detector(ckpt), ckpt.data["image_size"]
        what = f"{args.checkpoint} ({ckpt.config['model']['name']}, {size} px)"
    else:
        size = 256
        model = build_detector(10, image_size=size).eval()
        what = "fcos_mobilenet_v3_small, FPN 64, 256 px, random init"
    x = torch.rand(args.images, 3, size, size)
    rows = []
    for grid in args.grids:
        r, c = (int(v) for v in grid.split("x"))
        windows = tile_windows(size, size, grid=(r, c), overlap=0.2)
        ms_per_image(model, x[:1], windows, args.batch)  # warm-up
        loop, batched = [], []
        for _ in range(args.repeats):
            loop.append(ms_per_image(model, x, windows, 1))
            batched.append(ms_per_image(model, x, windows, args.batch))
        row = {
            "grid": grid,
            "tiles_per_image": len(windows),
            "loop_ms_per_image": statistics.median(loop),
            "batched_ms_per_image": statistics.median(batched),
        }
        row["speedup"] = row["loop_ms_per_image"] / row["batched_ms_per_image"]
        rows.append(row)
        print(
            f"{grid}: {len(windows)} tiles, loop {row['loop_ms_per_image']:.0f} ms/img, "
            f"batched {row['batched_ms_per_image']:.0f} ms/img, {row['speedup']:.2f}x",
            flush=True,
        )
    result = {
        "benchmark": "tile_speed",
        "command": " ".join(["python", *sys.argv]),
        "model": what,
        "rows": rows,
        **provenance(),
        "seed": 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
