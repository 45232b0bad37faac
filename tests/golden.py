"""The golden runs: one per task, a fixed seed, a couple of dozen steps with several tricks on,
on tiny data written in the real formats. tests/data/golden.json holds what the code of commit
cd0c794 (before the one-house refactor, issue 21) trained: a SHA-256 of the final weights and
each tensor's float64 sum, with the machine that recorded them.

`python tests/golden.py TASK "why"` records one task's run again after a meant change of its
behaviour (golden.json's "rerecorded" says why). `python tests/golden.py` records everything,
together with tests/data/format1_classify/ (a checkpoint written mid-run, and its config.yaml)
and tests/data/format1_detect.yaml (a detection run's config.yaml of that format).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden.json"
FORMAT1_CLASSIFY = HERE / "data" / "format1_classify"
FORMAT1_DETECT_CONFIG = HERE / "data" / "format1_detect.yaml"
THREADS = ("--set", "train.threads=1", "--set", "train.precision=fp32")  # sums in one order


def classify_argv(data: Path, out: Path) -> list[str]:
    """24 steps of airnet-8-8-8 (batch 32, 3 epochs) with mixup / cutmix, smoothing, cutout,
    random erasing, TrivialAugment, warmup + cosine, lookahead and EMA."""
    sets = [
        "model.name=airnet-8-8-8",
        "aug.mixup=0.2",
        "aug.cutmix=1.0",
        "loss.label_smoothing=0.1",
        "aug.cutout=6",
        "aug.random_erasing=0.5",
        "aug.autoaugment=trivialaugment",
        "sched.decay=cosine",
        "sched.warmup_epochs=0.5",
        "optim.lookahead_every=3",
        "ema.decay=0.9",
        "data.val_split=0.125",
    ]
    return [
        "train",
        "--recipe",
        "baseline",
        "--data",
        f"fashion-mnist:{data}",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "32",
        *[a for s in sets for a in ("--set", s)],
        *THREADS,
    ]


def detect_argv(data: Path, out: Path) -> list[str]:
    """12 steps of a narrow FCOS (batch 4, 3 epochs) with every detection freebie on."""
    sets = [
        "data.image_size=128",
        "det.fpn_width=16",
        "det.head_convs=1",
        "det.mixup=1.5",
        "det.label_smoothing=0.1",
        "det.hflip=true",
        "det.expand=true",
        "det.crop=true",
        "det.color_jitter=true",
        "det.random_shapes=[96,128]",
        "det.random_shapes_every=2",
        "ema.decay=0.9",
        "sched.warmup_epochs=0.5",
        "train.eval_batch_size=8",
    ]
    return [
        "detect",
        "train",
        "--data",
        f"coco:{data}",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--limit-train",
        "16",
        "--limit-test",
        "8",
        *[a for s in sets for a in ("--set", s)],
        *THREADS,
    ]


def write_data(root: Path) -> tuple[Path, Path]:
    """The tiny IDX set and COCO set the golden runs read."""
    from detfake import make_scenes, write_coco
    from fakedata import write_idx

    write_idx(root / "fmnist", n_train=256, n_test=128)
    splits = {
        "train": make_scenes(16, seed=0, prefix="tr"),
        "val": make_scenes(4, seed=1, prefix="va"),
        "test": make_scenes(8, seed=2, prefix="te"),
    }
    write_coco(root / "coco", splits, ["a", "b", "c"], category_ids=[3, 7, 12])
    return root / "fmnist", root / "coco"


def machine_key() -> str:
    """What decides the bits of an fp32 run: the CPU (model, family, SIMD flags), torch."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    simd = sorted(f for f in info.get("flags", "").split() if f.startswith(("avx", "amx", "fma")))
    cpu = info.get("model name", platform.machine())
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    return f"{cpu} ({family}; {' '.join(simd)}) | torch {torch.__version__}"


def fingerprint(state: dict[str, torch.Tensor]) -> dict:
    """SHA-256 over every tensor's bytes (in key order) and each tensor's float64 sum."""
    h = hashlib.sha256()
    sums = {}
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
        sums[k] = float(t.double().sum()) if t.is_floating_point() else int(t.sum())
    return {"sha256": h.hexdigest(), "sums": sums}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """The trained weights (and EMA weights) of the run in `out`."""
    raw = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    ema = {f"ema.{k}": v for k, v in (raw.get("ema") or {}).items()}
    return {**{f"model.{k}": v for k, v in raw["model"].items()}, **ema}


def interrupted_run(argv: list[str], stop_at: int) -> None:
    """Run `argv` and stop it as Ctrl-C would after `stop_at` steps (a mid-epoch checkpoint)."""
    from freebies import engine
    from freebies.cli import main

    calls = {"n": 0}
    real = engine.any_rank

    def stop(flag: bool, device: torch.device) -> bool:
        calls["n"] += 1
        return real(flag, device) or calls["n"] == stop_at

    engine.any_rank = stop
    try:
        assert main(argv) == 130
    finally:
        engine.any_rank = real


def record() -> None:
    import os

    from freebies.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # relative data paths in the configs, so the fixtures run anywhere
        fmnist, coco = write_data(Path("."))
        runs = {"classify": classify_argv(fmnist, Path("classify")),
                "detect": detect_argv(coco, Path("detect"))}  # fmt: skip
        golden = {"machine": machine_key(), "commit": "cd0c794"}
        for task, argv in runs.items():
            assert main(argv) == 0
            golden[task] = fingerprint(final_weights(Path(task)))
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        # format 1, written by this code: a classification run stopped mid-epoch 2, and the
        # config.yaml of a detection run (its checkpoint is too large to commit).
        interrupted_run(classify_argv(fmnist, Path("mid")), stop_at=11)
        FORMAT1_CLASSIFY.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "config.yaml"):
            shutil.copy(Path("mid") / name, FORMAT1_CLASSIFY / name)
        shutil.copy(Path("detect") / "config.yaml", FORMAT1_DETECT_CONFIG)


def rerecord(task: str, why: str) -> None:
    """Record one task's golden run again after a meant change of its behaviour, keeping the
    other task's entry and the format-1 fixtures (those stay what format-1 code wrote)."""
    import os

    from freebies.cli import main

    golden = json.loads(GOLDEN.read_text())
    if golden["machine"] != machine_key():
        raise SystemExit(f"golden.json was recorded on {golden['machine']}, not this machine")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        fmnist, coco = write_data(Path("."))
        argv = {"classify": classify_argv, "detect": detect_argv}[task]
        assert main(argv(fmnist if task == "classify" else coco, Path(task))) == 0
        golden[task] = fingerprint(final_weights(Path(task)))
    golden.setdefault("rerecorded", {})[task] = why
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import os

    os.environ["FREEBIES_AUTO_PRECISION"] = "fp32"
    if len(sys.argv) == 3:  # python tests/golden.py TASK "why its behaviour changed"
        rerecord(sys.argv[1], sys.argv[2])
    else:
        record()
    print(f"wrote {GOLDEN}")
