"""Issue 23's fixes on real data (BCCD): the normalisation statistics with and without the
letterbox padding, and how often SSD's crop cuts an image, ours against torchvision's
RandomIoUCrop, on the same training images and boxes.

    python benchmarks/det_fixes.py [--data voc:../shared/data/bccd] [--draws 5]
        [--out docs/results/det_fixes.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from freebies.data.detection import image_stats, load_detection
from freebies.data.loader import channel_stats
from freebies.detection.transforms import crop_boxes
from freebies.runtime import provenance


def crop_shares(images: torch.Tensor, boxes: list[torch.Tensor], draws: int) -> dict[str, float]:
    """The share of (image, draw) pairs that each crop changes (images of one size)."""
    ours = theirs = 0
    crop = v2.RandomIoUCrop()
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        for start in range(0, len(images), 32):
            x = images[start : start + 32].float()
            b = boxes[start : start + 32]
            out, _, _ = crop_boxes(x, b, g)
            ours += int(((out != x).flatten(1).any(1)).sum())
        torch.manual_seed(d)
        for image, box in zip(images, boxes, strict=True):
            h, w = image.shape[-2:]
            target = {"boxes": tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(h, w))}
            out, _ = crop(image, target)
            theirs += int(out.shape[-2:] != image.shape[-2:])
    n = draws * len(images)
    return {"ours": ours / n, "torchvision": theirs / n, "pairs": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="voc:../shared/data/bccd")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/results/det_fixes.json"))
    args = p.parse_args()
    square = load_detection(args.data, image_size=args.size, rect=False).train
    rect = load_detection(args.data, image_size=args.size).train
    canvas_mean, canvas_std = channel_stats(square.images[:512])
    own_mean, own_std = image_stats(rect)
    fitted = [rect.image(i) for i in range(len(rect))]
    result = {
        "benchmark": "det_fixes",
        "command": f"python benchmarks/det_fixes.py --data {args.data} --size {args.size} "
        f"--draws {args.draws}",
        "normalisation": {
            "before (square canvas, padding included)": {
                "mean": canvas_mean.tolist(),
                "std": canvas_std.tolist(),
            },
            "after (the images' own pixels)": {"mean": own_mean.tolist(), "std": own_std.tolist()},
        },
        "crop_share": crop_shares(torch.stack(fitted), rect.boxes, args.draws),
        "seeds": list(range(args.draws)),
        **provenance(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("normalisation", "crop_share")}, indent=1))


if __name__ == "__main__":
    main()
