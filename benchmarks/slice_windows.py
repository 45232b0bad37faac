"""How many sliced-training windows hold an object: uniform windows against windows placed
around a box (`det.slice_object_prob`), drawn by the trainer's own sampler
(`freebies.detection.slicing.slice_batch`) on a YOLO set's training frames at native
resolution, annotations only (the pixels are a zero view of each frame's size).

    python benchmarks/slice_windows.py [--data ../shared/data/aerial-drone/data.yaml] \\
        [--size 416] [--draws 1000] [--out docs/results/slice_windows.json]

A window "holds" a box when at least `--min-visible` (the trainer's default, 0.5) of its area is
inside; whole-image samples (`slice_full_prob`) are left out, since they hold every box.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from freebies.data.detection import _load_item
from freebies.data.yolo import read_yolo
from freebies.detection.slicing import slice_batch
from freebies.runtime import provenance

ROOT = Path(__file__).resolve().parents[1]


def frames(spec: str) -> list[tuple[int, int, torch.Tensor]]:
    """(H, W, xyxy boxes in pixels) of every training frame at native resolution, read and
    cleaned as the trainer reads them (header only, no decode)."""
    loaded = [_load_item(item, 0, factor=1.0) for item in read_yolo(spec).splits["train"]]
    return [(*x.size, x.boxes) for x in loaded]


def share_empty(data: list, size: int, draws: int, object_prob: float, min_visible: float) -> dict:
    """Windows drawn frame by frame in turn, seed 0: the share holding no box, boxes per window."""
    g, empty, held = torch.Generator().manual_seed(0), 0, 0
    for k in range(draws):
        h, w, boxes = data[k % len(data)]
        view = torch.zeros((3, 1, 1), dtype=torch.uint8).expand(3, h, w)
        _, _, keeps = slice_batch([view], torch.tensor([[h, w]]), [boxes], g, size=size,
                                  min_visible=min_visible, object_prob=object_prob)  # fmt: skip
        empty += not keeps[0].any()
        held += int(keeps[0].sum())
    return {"object_prob": object_prob, "empty_share": empty / draws,
            "boxes_per_window": held / draws}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/aerial-drone/data.yaml"))
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--min-visible", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/slice_windows.json")
    args = p.parse_args()
    data = frames(args.data)
    rows = [share_empty(data, args.size, args.draws, q, args.min_visible) for q in (0.0, 0.5, 1.0)]
    result = {
        "what": f"{args.size} px windows at native resolution, training frames of {args.data}",
        "frames": len(data),
        "boxes": sum(len(b) for _, _, b in data),
        "sizes": sorted({(h, w) for h, w, _ in data}),
        "draws": args.draws, "seed": 0, "min_visible": args.min_visible,
        "rows": rows,
        "provenance": provenance(),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"object_prob {r['object_prob']:.1f}: {100 * r['empty_share']:.1f}% of windows hold "
              f"no box, {r['boxes_per_window']:.2f} boxes per window")  # fmt: skip


if __name__ == "__main__":
    main()
