"""What bf16 autocast does to a detector's evaluation: the same checkpoint and test images in
fp32 and under bf16 autocast. torchvision's FCOS makes its anchors in the feature maps' dtype,
so under autocast every decoded box is a bf16 number (steps of 2 px between 256 and 512,
4 px up to 1024), and a tile's boxes moved to their place in a large frame were cast back to
it (8 px steps beyond 1024); training's evaluation therefore runs in fp32 whatever
`train.precision`. A slice-trained checkpoint is evaluated tiled, as training evaluates it.

    python benchmarks/eval_precision.py RUN/last.pt [--limit 200] [--device cpu]
        [--out docs/results/eval_precision.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from freebies import checkpoint, config, detect
from freebies.distributed import pick_device
from freebies.runtime import autocast_for, provenance

KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("--limit", type=int, default=200, help="test images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("docs/results/eval_precision.json"))
    args = p.parse_args()
    ckpt = checkpoint.load(args.ckpt, "detect")
    cfg = config.from_dict(ckpt.config, "detect")
    cfg.data.val_split, cfg.data.limit_train, cfg.data.limit_test = 0.0, 8, args.limit
    data = detect.load_data(cfg)
    dev = pick_device(args.device)
    model = detect.load_detector(ckpt).to(dev)
    rows, boxes = {}, {}
    for name in ("fp32", "bf16"):
        kw = dict(batch_size=cfg.train.eval_batch_size, autocast=autocast_for(name, dev))
        if ckpt.data.get("slice"):  # tiled at its trained scale, as training evaluates it
            kw["infer"] = detect.sliced_infer(model, ckpt.data["slice"]["size"])
        boxes[name] = detect.predict(model, data.test.subset(range(min(16, len(data.test)))), **kw)
        rows[name] = detect.evaluate_split(model, data.test, data.classes, data.category_ids, **kw)
        print(
            name, "  ".join(f"{k} {rows[name][k]:.2f}" for k in KEYS if rows[name][k] is not None)
        )
    # on up to 16 images, the box each pass ranked first, coordinate by coordinate
    moved = [
        (a["boxes"][:1] - b["boxes"][:1]).abs().amax()
        for a, b in zip(boxes["fp32"], boxes["bf16"], strict=True)
        if len(a["boxes"]) and len(b["boxes"])
    ]
    result = {
        "command": f"python benchmarks/eval_precision.py {args.ckpt} --limit {args.limit} "
        f"--device {args.device}",
        "checkpoint": str(args.ckpt),
        "test_images": len(data.test),
        **{name: {k: rows[name][k] for k in KEYS} for name in rows},
        "delta_bf16_minus_fp32": {
            k: rows["bf16"][k] - rows["fp32"][k] for k in KEYS if rows["fp32"][k] is not None
        },
        "top_box_max_coordinate_difference_px": float(torch.stack(moved).median())
        if moved
        else None,
        **provenance(),
        "seed": ckpt.config["train"]["seed"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
