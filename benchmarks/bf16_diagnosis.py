"""Where does bf16 autocast lose accuracy in a trained `fast` (AirNet) model?

Takes a checkpoint trained in fp32 and compares bf16 autocast with fp32, on validation images
and on one training batch:

- forward: the relative error ||a_bf16 - a_fp32|| / ||a_fp32|| after the whitening layer,
  each block and the logits, the accuracy, and how many predictions change;
- backward: the relative error of each parameter group's gradient under the recipe's own loss
  (label-smoothed cross-entropy), the gradients that the 64x bias LR multiplies included.

Each comparison runs with the whitening conv in bf16 (plain autocast) and in fp32 (autocast off
for that one layer, AirNet's default). Forward only, then one step: cheap even on a CPU without
native bf16.

    python benchmarks/bf16_diagnosis.py RUN_DIR [--images 2000] [--out FILE]

Writes docs/results/bf16_diagnosis.json (machine, torch version, the checkpoint's seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from freebies import checkpoint, config
from freebies.data.loader import normalize
from freebies.data.splits import prepare
from freebies.deploy import load_model
from freebies.runtime import BF16_FLAGS, cpu_flags, machine
from freebies.tricks import one_hot, smooth_targets


def stages(net: nn.Module) -> dict[str, nn.Module]:
    """The modules whose outputs are compared: whitening, each block's last GELU, the head."""
    gelus = [m for m in net.layers if isinstance(m, nn.GELU)]
    return {"whitening": net.whiten, **{f"block {i + 1}": g for i, g in enumerate(gelus[1::2])}}


def forward(net: nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    """Every stage's output (fp32 copies) and the logits."""
    acts: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, k=k: acts.__setitem__(k, out.float()))
        for k, m in stages(net).items()
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        acts["logits"] = net(x).float()
    for h in hooks:
        h.remove()
    return acts


def grads(net: nn.Module, x: torch.Tensor, target: torch.Tensor, bf16: bool) -> dict:
    """Gradients of the recipe's loss, per parameter group (weights, norm biases, whitening)."""
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
    F.cross_entropy(logits.float(), target).backward()
    named = [(n, p) for n, p in net.named_parameters() if p.grad is not None]
    groups = {
        "whitening bias": [p for n, p in named if "whiten" in n],
        "conv weights": [p for n, p in named if p.ndim == 4],
        "norm biases (64x LR)": [p for n, p in named if p.ndim == 1 and "whiten" not in n],
        "head": [p for n, p in named if p.ndim == 2],
    }
    return {k: torch.cat([p.grad.flatten() for p in ps]).clone() for k, ps in groups.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder of an fp32 airnet run (last.pt)")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("docs/results/bf16_diagnosis.json"))
    args = p.parse_args()
    ckpt = checkpoint.load(args.run / "last.pt", "classify")
    cfg = config.from_dict(ckpt.config, ckpt.task)
    data = prepare(cfg.data)
    mean, std = ckpt.data["mean"], ckpt.data["std"]
    val_x = data.val_x if data.val_x is not None else data.test_x
    val_y = data.val_y if data.val_y is not None else data.test_y
    x = normalize(val_x[: args.images], mean, std, True)
    y = val_y[: args.images]
    train_x = normalize(data.train_x[:512], mean, std, True)
    target = smooth_targets(one_hot(data.train_y[:512], len(data.classes)), 0.2)

    result: dict = {"machine": machine(), "torch": torch.__version__, "run": str(args.run)}
    result["native_bf16_flags"] = sorted(cpu_flags() & BF16_FLAGS)
    result["seed"], result["images"] = cfg.train.seed, len(y)
    for whiten in ("bf16", "fp32"):
        net = load_model(ckpt).train(False).to(memory_format=torch.channels_last)
        net.whiten_fp32 = whiten == "fp32"
        ref, low = forward(net, x, False), forward(net, x, True)
        pred_ref, pred_low = ref["logits"].argmax(1), low["logits"].argmax(1)
        row = {
            "forward_rel_error": {k: rel(low[k], ref[k]) for k in ref},
            "acc_fp32": 100 * float((pred_ref == y).float().mean()),
            "acc_bf16": 100 * float((pred_low == y).float().mean()),
            "predictions_changed_pct": 100 * float((pred_ref != pred_low).float().mean()),
        }
        net.train()  # batch statistics, as in training
        g32, g16 = grads(net, train_x, target, False), grads(net, train_x, target, True)
        row["grad_rel_error"] = {k: rel(g16[k], g32[k]) for k in g32}
        result[f"whitening in {whiten}"] = row
        print(whiten, json.dumps(row, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
