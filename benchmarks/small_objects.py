"""What the image pyramid and tiles buy on small objects, and what they cost.

For each set and seed: train the baseline detector (skipped when its run folder is finished,
resumed when interrupted). Then, on its test split, run each pass of
`freebies.detection.multiscale` once, timed: the single full pass, the pyramid's extra scales
1.5 and 2, and the tiles (`auto_tile_size`, or a 2x2 grid where auto finds that no tiling
pays), with and without the SNIP filter (`--snip 32`: enlarged passes and tiles keep only boxes
under 32 px, COCO's small). Every variant (single, pyramid, tiles, both, each with and without
SNIP) is those passes merged as `multiscale_detect` merges them (nms for the pyramid alone,
ios with tiles), so its cost is the sum of its passes' times plus its merge time, over the
single pass's. COCO AP by size per variant and seed go to the result file, with the paired Δ
against the single pass (mean and 95% t-interval over seeds).

Sets:
  scenes  Fashion scenes, the `detect` recipe (as in benchmarks/detection_baselines.py, whose
          run folders can be linked in as RUNS/scenes-sN).
  bccd4   BCCD downscaled 4x on disk (160x120 images; boxes measured in the reduced pixels,
          so platelets and many red cells become small), the `detect-bccd` recipe at
          data.image_size=160. The copy is written once under RUNS/bccd4-data.

    python benchmarks/small_objects.py [--sets scenes bccd4] [--seeds 0 1 2]
        [--runs runs/small] [--out docs/results/small_objects.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image
from scipy import stats

from freebies import checkpoint, config, detect
from freebies.detection import multiscale as ms
from freebies.runtime import provenance

REPO = Path(__file__).resolve().parents[1]
PYRAMID, SNIP = (1.5, 2.0), 32.0
VARIANTS = {  # name: (passes, merge)
    "single": (["single"], "nms"),
    "pyramid": (["single", "pyramid"], "nms"),
    "tiles": (["single", "tiles"], "ios"),
    "both": (["single", "pyramid", "tiles"], "ios"),
    "pyramid+snip": (["single", "pyramid_snip"], "nms"),
    "tiles+snip": (["single", "tiles_snip"], "ios"),
    "both+snip": (["single", "pyramid_snip", "tiles_snip"], "ios"),
}
KEYS = ("map", "map_50", "map_small", "map_medium", "map_large", "cost_vs_single")


def bccd_dir() -> Path:
    env = os.environ.get("FREEBIES_BCCD")
    return Path(env) if env else REPO.parent / "shared" / "data" / "bccd"


def downscale_voc(src: Path, dst: Path, factor: int) -> None:
    """A copy of a VOC folder with every image and box shrunk `factor` times (written once)."""
    if (dst / "done").is_file():
        return
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for txt in (src / "ImageSets" / "Main").glob("*.txt"):
        (dst / "ImageSets" / "Main" / txt.name).write_text(txt.read_text())
    for xml in sorted((src / "Annotations").glob("*.xml")):
        tree = ET.parse(xml)
        root = tree.getroot()
        name = root.findtext("filename") or f"{xml.stem}.jpg"
        with Image.open(src / "JPEGImages" / name) as im:
            w, h = im.size
            small = im.convert("RGB").resize((round(w / factor), round(h / factor)), Image.BOX)
        small.save(dst / "JPEGImages" / name, quality=95)
        for tag, value in (("size/width", small.width), ("size/height", small.height)):
            if root.find(tag) is not None:
                root.find(tag).text = str(value)
        for node in root.iter("bndbox"):
            for child in node:
                child.text = f"{float(child.text) / factor:.2f}"
        tree.write(dst / "Annotations" / xml.name)
    (dst / "done").write_text(f"{src} downscaled {factor}x\n")


def freebies(*args: str) -> str:
    cmd = [sys.executable, "-m", "freebies", *args]
    print("+ freebies", " ".join(args), flush=True)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def train(folder: Path, seed: int, recipe: str, extra: list[str]) -> None:
    if (folder / "summary.json").is_file():
        return
    if (folder / "last.pt").is_file():
        freebies("detect", "train", "--resume", str(folder))
    else:
        freebies("detect", "train", "--recipe", recipe, "--seed", str(seed), "--out",
                 str(folder), "--overwrite", *extra)  # fmt: skip


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def evaluate(ckpt_path: Path) -> dict[str, dict]:
    """Every variant's COCO metrics and cost on the checkpoint's test split."""
    ckpt = checkpoint.load(ckpt_path, "detect")
    cfg = config.from_dict(ckpt.config, ckpt.task)
    cfg.data.val_split, cfg.data.limit_train = 0.0, None
    cfg.data.image_size = size = ckpt.data["image_size"]
    data = detect.load_data(cfg)
    model = detect.load_detector(ckpt)
    x = data.test.images.float() / 255
    side = ms.auto_tile_size(ms.small_box_side(data.train.boxes), size, size)
    kw = {"tile_size": side} if side else {"grid": (2, 2)}
    windows = ms.tile_windows(size, size, **kw)
    bs = cfg.train.eval_batch_size
    passes, seconds = {}, {}
    for name, run in {
        "single": lambda: ms.pyramid_parts(model, x, (1.0,), None, bs),
        "pyramid": lambda: ms.pyramid_parts(model, x, PYRAMID, None, bs),
        "pyramid_snip": lambda: ms.pyramid_parts(model, x, PYRAMID, SNIP, bs),
        "tiles": lambda: ms.tile_parts(model, x, windows, size, bs),
        "tiles_snip": lambda: ms.tile_parts(model, x, windows, size, bs, SNIP),
    }.items():
        passes[name], seconds[name] = timed(run)
    out = {}
    for variant, (names, merge) in VARIANTS.items():
        per_image = [
            list(itertools.chain(*p)) for p in zip(*(passes[n] for n in names), strict=True)
        ]
        t0 = time.perf_counter()
        dets = [ms.merge_parts(p, merge, 0.5, 100) for p in per_image]
        merge_s = time.perf_counter() - t0
        preds = [detect.in_original(d, data.test, i) for i, d in enumerate(dets)]
        m = detect.coco_metrics(preds, data.test.orig_boxes, data.test.labels, data.test.sizes,
                                data.classes, data.category_ids)  # fmt: skip
        cost = (sum(seconds[n] for n in names) + merge_s) / seconds["single"]
        out[variant] = {k: m[k] for k in KEYS if k in m} | {"cost_vs_single": cost}
    out["single"]["img_per_s"] = len(x) / seconds["single"]
    out["tiles"]["windows"] = f"{len(windows)} tiles of {windows[0][2] - windows[0][0]} px"
    return out


def paired(values: list[float], base: list[float]) -> dict:
    d = [a - b for a, b in zip(values, base, strict=True)]
    mean = statistics.mean(d)
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "per_seed": d}


def summarize(rows: dict[str, list[dict]]) -> dict:
    out = {}
    for name, results in rows.items():
        out[name] = {}
        for k in KEYS:
            v = [r.get(k) for r in results]
            if any(x is None for x in v):
                continue
            out[name][k] = {
                "mean": statistics.mean(v),
                "std": statistics.stdev(v) if len(v) > 1 else 0,
            }
            if name != "single" and k.startswith("map"):
                out[name][f"delta_{k}"] = paired(v, [r[k] for r in rows["single"]])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["scenes", "bccd4"], choices=["scenes", "bccd4"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/small"))
    p.add_argument("--out", type=Path, default=Path("docs/results/small_objects.json"))
    args = p.parse_args()
    result = {}
    for name in args.sets:
        if name == "bccd4":
            data = args.runs / "bccd4-data"
            downscale_voc(bccd_dir(), data, 4)
            recipe, extra = "detect-bccd", ["--data", f"voc:{data}", "--set", "data.image_size=160"]
        else:
            recipe, extra = "detect", []
        rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for seed in args.seeds:
            folder = args.runs / f"{name}-s{seed}"
            train(folder, seed, recipe, extra)
            trained = json.loads((folder / "summary.json").read_text())
            print(f"+ evaluate {folder}: {', '.join(VARIANTS)}", flush=True)
            for v, r in evaluate(folder / "last.pt").items():
                rows[v].append(r | {"trained_at_commit": trained.get("git_commit")})
        result[name] = {
            "train": f"freebies detect train --recipe {recipe} {' '.join(extra)}".strip(),
            "seeds": args.seeds,
            "pyramid": list(PYRAMID),
            "snip": SNIP,
            "tiles": rows["tiles"][0]["windows"],
            "variants": summarize(rows),
            "per_seed": rows,
            **provenance(),
        }
        for v, s in result[name]["variants"].items():
            print(f"{name} {v:12s} map {s['map']['mean']:.2f} small {s['map_small']['mean']:.2f} "
                  f"cost {s['cost_vs_single']['mean']:.2f}x", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
