"""Why a pyramid pass helps or hurts: per-class AP of the single pass, of an enlarged pass
alone and of both merged, and the count and median side of each class's confident boxes
(score > 0.3) in each pass against the test set's own boxes.

A detector that learned its classes at one size keeps finding objects of that size in its
input: enlarged, it fires on fragments. This shows it on one checkpoint's test split.

    python benchmarks/scale_diagnosis.py CHECKPOINT [--scale 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from freebies import checkpoint, config, detect
from freebies.detection import multiscale as ms
from freebies.runtime import provenance


def counts(per_class: dict) -> str:
    return ", ".join(
        f"{n} {v['boxes']} (median side {v['median_side']:.1f})" for n, v in per_class.items()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    ckpt = checkpoint.load(args.checkpoint, "detect")
    cfg = config.from_dict(ckpt.config, ckpt.task)
    cfg.data.val_split, cfg.data.limit_train = 0.0, None
    cfg.data.image_size = ckpt.data["image_size"]
    data, model = detect.load_data(cfg), detect.load_detector(ckpt)
    test, names = data.test, data.classes
    x = test.images.float() / 255
    bs = cfg.train.eval_batch_size
    passes = {
        "single": ms.pyramid_parts(model, x, (1.0,), None, bs),
        f"x{args.scale:g} alone": ms.pyramid_parts(model, x, (args.scale,), None, bs),
    }
    passes[f"1 + x{args.scale:g}"] = [a + b for a, b in zip(*passes.values(), strict=True)]

    def per_class(boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        side, lab = torch.cat([ms._side(b) for b in boxes]), torch.cat(labels)
        return {
            n: {"boxes": int((lab == c).sum()), "median_side": float(side[lab == c].median())}
            for c, n in enumerate(names)
            if (lab == c).any()
        }

    result = {"truth": per_class(test.boxes, test.labels)}
    for name, parts in passes.items():
        dets = [ms.merge_parts(p, "nms", 0.5, 100) for p in parts]
        preds = []
        for i, d in enumerate(dets):
            boxes = detect.to_original(d["boxes"].float(), test.scales[i], test.sizes[i])
            preds.append({"index": i, "boxes": boxes, "scores": d["scores"], "labels": d["labels"]})
        m = detect.coco_metrics(preds, test.orig_boxes, test.labels, test.sizes, names,
                                data.category_ids)  # fmt: skip
        sure = [d["scores"] > 0.3 for d in dets]
        result[name] = {
            "map": m["map"],
            "ap_per_class": m["ap_per_class"],
            "confident": per_class(
                [d["boxes"][k] for d, k in zip(dets, sure, strict=True)],
                [d["labels"][k] for d, k in zip(dets, sure, strict=True)],
            ),
        }
        aps = ", ".join(f"{n} {v:.1f}" for n, v in m["ap_per_class"].items())
        print(f"{name:10s} map {m['map']:.1f}  AP {aps}")
        print(f"           confident boxes {counts(result[name]['confident'])}")
    print(f"truth      {counts(result['truth'])}")
    if args.out:
        out = {"command": " ".join(["python", *sys.argv]), "checkpoint": str(args.checkpoint),
               **result, **provenance()}  # fmt: skip
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
