"""The boxes a detector is shown: median width × height and the share under 32² px (COCO's
"small"), per split and frame size, at native resolution and at each size training resizes to
(the longer side, as `data.image_size`), read as the trainer reads them (annotations and image
headers only, no decode).

    python benchmarks/box_sizes.py --data yolo:../shared/data/aerial-drone/data.yaml \\
        --size 800 416 --out docs/results/box_sizes_aerial.json
    python benchmarks/box_sizes.py --data voc:../shared/data/bccd --size 416 160 \\
        --out docs/results/box_sizes_bccd.json
    python benchmarks/box_sizes.py --data coco:~/.cache/freebies/scenes \\
        --out docs/results/box_sizes_scenes.json    # after `freebies detect make-data`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from freebies.data.detection import _load_item, _read_spec
from freebies.runtime import provenance


def stats(boxes: torch.Tensor) -> dict:
    """Median width and height (px), the 2nd and 98th percentiles of the side √(w h), and the
    share of boxes under 32² px of area."""
    if not len(boxes):
        return {"boxes": 0}
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = (w * h).double().sqrt()
    return {
        "boxes": len(boxes),
        "median_w": round(float(w.median()), 1),
        "median_h": round(float(h.median()), 1),
        "side_p02_p98": [round(float(side.quantile(q)), 1) for q in (0.02, 0.98)],
        "small_share": round(float((w * h < 32 * 32).double().mean()), 4),
    }


def split_sizes(items: list, size: int, factor: float | None) -> dict:
    """Box statistics of one split resized one way: all frames, then by native frame size."""
    loaded = [_load_item(item, size, factor) for item in items]
    by_frame: dict[str, list[torch.Tensor]] = {}
    for x in loaded:
        by_frame.setdefault(f"{x.size[1]}x{x.size[0]}", []).append(x.boxes)
    every = [x.boxes for x in loaded]
    return {
        "all": stats(torch.cat(every)) if every else {"boxes": 0},
        "by_native_frame": {k: stats(torch.cat(v)) for k, v in sorted(by_frame.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="voc:DIR, yolo:DATA.yaml, coco:... as in --data")
    p.add_argument("--size", type=int, nargs="*", default=[], help="longer sides to resize to")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    splits = _read_spec(args.data).splits
    result: dict = {"data": args.data, "splits": {}}
    for name, items in splits.items():
        if not items:
            continue
        ways = {"native": split_sizes(items, 0, 1.0)}
        ways |= {f"longer side {s}": split_sizes(items, s, None) for s in args.size}
        result["splits"][name] = {"frames": len(items), **ways}
        for way, r in ways.items():
            a = r["all"]
            if a["boxes"]:
                print(f"{name:5s} {way:15s} {a['boxes']:5d} boxes, median "
                      f"{a['median_w']:.0f}x{a['median_h']:.0f} px, side "
                      f"{a['side_p02_p98'][0]:.0f}-{a['side_p02_p98'][1]:.0f} px (2-98%), "
                      f"{100 * a['small_share']:.1f}% under 32²")  # fmt: skip
    result |= {"command": "python benchmarks/box_sizes.py --data " + args.data
               + "".join(f" --size {s}" for s in args.size), **provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
