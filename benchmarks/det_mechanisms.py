"""Two ways detection freebies cost accuracy by design, measured (issue 23):

1. SSD's expand (zoom out by up to 4x) shrinks boxes below FCOS's smallest stride: a box that
   contains no stride-8 location centre gets no positive location and is trained as
   background. Counted with the detector's own matching (torchvision FCOS: the location must
   lie inside the box, within 1.5 strides of its centre, and in the level's size range) on the
   training images, with and without expand, over several seeded draws.
2. Label smoothing under a sigmoid focal loss: the loss of one logit with a smoothed target t
   is smallest at some p* != t; for the documented eps = 0.1 (K = 3 classes: targets 0.9 and
   0.05) and GluonCV's YOLOv3 rule (min(1/K, 1/40)) the minimisers show how much smoothing the
   focal loss undoes.

    python benchmarks/det_mechanisms.py [--recipe detect-bccd] [--draws 3]
        [--limit-train N] [--out docs/results/det_mechanisms.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision.ops import sigmoid_focal_loss

from freebies import config, detect
from freebies.detection.transforms import expand_boxes
from freebies.runtime import provenance


def focal_minimiser(target: float) -> float:
    """The p in (0, 1) at which torchvision's sigmoid focal loss (alpha 0.25, gamma 2) of one
    logit with soft target `target` is smallest (a fine grid over the logit)."""
    logits = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    loss = sigmoid_focal_loss(logits, torch.full_like(logits, target), reduction="none")
    return float(torch.sigmoid(logits[loss.argmin()]))


def matched_share(cfg: config.DetectConfig, draws: int, expand: bool) -> dict[str, float]:
    """The share of training boxes (all, and COCO-small ones) with at least one positive FCOS
    location, over `draws` passes of the training set (expand drawn anew each pass)."""
    data = detect.load_data(cfg)
    model = detect.make_detector(cfg, detect.data_info(data, cfg)).train()
    caught: list[torch.Tensor] = []
    real = model.head.compute_loss

    def spy(targets, head_outputs, anchors, matched_idxs):
        for t, m in zip(targets, matched_idxs, strict=True):
            hit = torch.zeros(len(t["boxes"]), dtype=torch.bool)
            hit[m[m >= 0].unique()] = True
            area = (t["boxes"][:, 2:] - t["boxes"][:, :2]).prod(1)
            caught.append(torch.stack([hit.double(), (area < 32**2).double()], 1))
        return real(targets, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = spy
    fill = [255 * m for m in detect.data_info(data, cfg)["mean"]]
    with torch.no_grad():
        for draw in range(draws):
            g = torch.Generator().manual_seed(draw)
            for start in range(0, len(data.train), 16):
                idx = list(range(start, min(start + 16, len(data.train))))
                x = data.train.batch(idx).float()
                h, w = x.shape[-2:]
                boxes = [data.train.boxes[i] for i in idx]
                if expand:
                    x, boxes = expand_boxes(x, boxes, g, fill=fill)
                targets = [
                    {"boxes": b, "labels": data.train.labels[i]}
                    for b, i in zip(boxes, idx, strict=True)
                ]
                with detect.native_size(model, h, w):
                    model(list((x / 255).unbind(0)), targets)
            if not expand:
                break  # the same boxes every pass
    rows = torch.cat(caught)
    small = rows[:, 1] > 0
    return {
        "boxes": len(rows),
        "matched": float(rows[:, 0].mean()),
        "small_boxes": int(small.sum()),
        "small_matched": float(rows[small, 0].mean()) if small.any() else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="detect-bccd")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=None, help="the first N training images")
    p.add_argument("--out", type=Path, default=Path("docs/results/det_mechanisms.json"))
    args = p.parse_args()
    cfg = config.load(args.recipe, {"data.limit_train": args.limit_train}, task="detect")
    k = 3
    result = {
        "benchmark": "det_mechanisms",
        "command": f"python benchmarks/det_mechanisms.py --recipe {args.recipe} "
        f"--draws {args.draws}"
        + (f" --limit-train {args.limit_train} --out {args.out}" if args.limit_train else ""),
        "expand": {
            "without": matched_share(cfg, 1, expand=False),
            "with": matched_share(cfg, args.draws, expand=True),
        },
        "focal_minimiser": {
            f"eps 0.1, K {k}: true class 0.9": focal_minimiser(0.9),
            f"eps 0.1, K {k}: other class 0.05": focal_minimiser(0.05),
            f"GluonCV min(1/K, 1/40) = 0.025: true class {1 - 0.025}": focal_minimiser(0.975),
            "GluonCV: other class 0.025": focal_minimiser(0.025),
            "no smoothing: 1": focal_minimiser(1.0),
            "no smoothing: 0": focal_minimiser(0.0),
        },
        "seeds": list(range(args.draws)),
        **provenance(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("expand", "focal_minimiser")}, indent=1))


if __name__ == "__main__":
    main()
