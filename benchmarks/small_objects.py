"""What the image pyramid and tiles buy on small objects, and what they cost.

For each set and seed: train the baseline detector (skipped when its run folder is finished,
resumed when interrupted), then evaluate its checkpoint with `freebies detect eval` four ways:
a single pass, a 1,1.5,2 pyramid, tiles (`--auto-tiles`, or `--tiles 2x2` where auto finds
that no tiling pays) and both. Each variant's COCO AP by size, img/s and cost against the
single pass (measured inside the same `detect eval` call) go to the result file, with the
paired Δ against the single pass (mean and 95% interval over seeds).

Sets:
  scenes  Fashion scenes, the `detect` recipe (as in benchmarks/detection_baselines.py).
  bccd4   BCCD downscaled 4x on disk (160x120 images; boxes measured in the reduced pixels,
          so platelets and many red cells become small), the `detect-bccd` recipe at
          data.image_size=160. The copy is written once under RUNS/bccd4-data.

    python benchmarks/small_objects.py [--sets scenes bccd4] [--seeds 0 1 2]
        [--runs runs/small] [--out docs/results/small_objects.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "single": [],
    "pyramid": ["--pyramid", "1,1.5,2"],
    "tiles": ["--auto-tiles"],
    "both": ["--pyramid", "1,1.5,2", "--auto-tiles"],
}
KEYS = ("map", "map_50", "map_small", "map_medium", "map_large", "img_per_s", "cost_vs_single")


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


def evaluate(ckpt: Path, options: list[str]) -> dict:
    out = freebies("detect", "eval", str(ckpt), *options)
    result = json.loads(out.strip().splitlines()[-1])
    if options and "inference" not in result and "--auto-tiles" in options:  # no tiling paid
        return evaluate(ckpt, [o if o != "--auto-tiles" else "--tiles=2x2" for o in options])
    result["options"] = " ".join(options) or "single pass"
    return result


def paired(values: list[float], base: list[float]) -> dict:
    d = [a - b for a, b in zip(values, base, strict=True)]
    mean = statistics.mean(d)
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "per_seed": d}


def summarize(rows: dict[str, list[dict]]) -> dict:
    out = {}
    for name, results in rows.items():
        out[name] = {"options": results[0]["options"]}
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
            for v, options in VARIANTS.items():
                rows[v].append(evaluate(folder / "last.pt", options))
        summary = json.loads((args.runs / f"{name}-s{args.seeds[0]}" / "summary.json").read_text())
        result[name] = {
            "train": f"freebies detect train --recipe {recipe} {' '.join(extra)}".strip(),
            "seeds": args.seeds,
            "machine": summary["machine"],
            "torch": summary["torch"],
            "variants": summarize(rows),
            "per_seed": rows,
        }
        for v, s in result[name]["variants"].items():
            print(f"{name} {v:8s} map {s['map']['mean']:.2f} small {s['map_small']['mean']:.2f} "
                  f"cost {s.get('cost_vs_single', {}).get('mean', 1.0):.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
