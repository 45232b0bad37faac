"""Where sliced training's time goes: the windows' data path against the detector's step.

On the aerial-drone set held at native resolution (1920x1080 frames and 4000x2250 stills),
per batch of `--batch` random training images, interleaved in one process (this machine is
shared and noisy), median ms over `--repeats` x `--steps` batches:
  * copy: the whole images, `images[ids]` (what the loader read before `batch_reader`);
  * fetch: what the loader reads now, `detect.batch_reader` (each image's region as a view);
  * windows: `slice_batch` with every sample a window (full_prob 0);
  * whole: `slice_batch` with every sample the whole image shrunk (full_prob 1);
  * step: the detector's forward, backward and AdamW step on one batch of windows.
The recipe's mix (full_prob 0.2) costs fetch + 0.8 windows + 0.2 whole per batch (and
before, copy instead of fetch), printed as a share of the step. Writes the figures with the
machine, torch version and seed.

    python benchmarks/slice_speed.py [--size 416] [--batch 8] [--steps 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from freebies import config, detect
from freebies.build import make_optimizer
from freebies.detection.slicing import slice_batch
from freebies.runtime import provenance


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return 1000 * (time.perf_counter() - t0), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="yolo:../shared/data/aerial-drone/data.yaml")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-prob", type=float, default=0.2)
    p.add_argument("--out", type=Path, default=Path("docs/results/slice_speed.json"))
    args = p.parse_args()
    sets = {"data.spec": args.data, "det.slice_size": args.size, "data.stream": False}
    cfg = config.load("detect-bccd", sets)
    torch.manual_seed(0)
    data = detect.load_data(cfg)
    train = data.train
    model = detect.make_detector(cfg, detect.data_info(data, cfg)).train()
    opt = make_optimizer(model, cfg, cfg.optim.lr)
    read = detect.batch_reader(train.images, train, sliced=True)
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in ("copy", "fetch", "windows", "whole", "step")}
    for _ in range(args.repeats * args.steps):
        ids = torch.randperm(len(train.boxes), generator=gen)[: args.batch]
        boxes, fitted = [train.boxes[i] for i in ids.tolist()], train.fitted[ids]
        times["copy"].append(timed(train.images.__getitem__, ids)[0])  # the loader before
        ms, views = timed(read, ids)
        times["fetch"].append(ms)
        for name, prob in (("windows", 0.0), ("whole", 1.0)):
            cut = timed(slice_batch, views, fitted, boxes, gen, size=args.size, full_prob=prob)
            times[name].append(cut[0])
        x, kept, keeps = cut[1]
        labels = [train.labels[i][k] for i, k in zip(ids.tolist(), keeps, strict=True)]
        targets = [{"boxes": b, "labels": c} for b, c in zip(kept, labels, strict=True)]

        def step(x: torch.Tensor, targets: list[dict]) -> None:
            loss = sum(model(list((x / 255).unbind(0)), targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times["step"].append(timed(step, x, targets)[0])
    ms = {k: statistics.median(v) for k, v in times.items()}
    cuts = (1 - args.full_prob) * ms["windows"] + args.full_prob * ms["whole"]
    mix, before = ms["fetch"] + cuts, ms["copy"] + cuts
    result = {
        "command": f"python benchmarks/slice_speed.py --size {args.size} --batch {args.batch} "
        f"--steps {args.steps} --repeats {args.repeats}",
        "data": args.data,
        "ms_per_batch_median": ms,
        "full_prob": args.full_prob,
        "data_path_ms": {"before": before, "now": mix},
        "data_path_share_of_step": {"before": before / ms["step"], "now": mix / ms["step"]},
        "seed": 0,
        **provenance(),
    }
    print(
        ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items())
        + f"; data path at full_prob {args.full_prob}: {before:.0f} ms before "
        f"({100 * before / ms['step']:.0f}% of the step), {mix:.0f} ms now "
        f"({100 * mix / ms['step']:.0f}%)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
