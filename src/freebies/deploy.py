"""Deploying a classifier: fold it into plain convolutions, check it, time it, export it.

Every ACNet block (Ding et al. 2019, arXiv:1908.03930) and every conv+BN pair is folded by
`freebies.models.acnet.fuse_model`. The fused model is checked against the unfused one on a
real batch in fp32 eval mode, and compared for speed with the same architecture built plainly
(no ACNet, its conv+BN pairs folded the same way), timed in the same process.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from freebies import config
from freebies.build import build_model
from freebies.checkpoint import Checkpoint
from freebies.config import ClassifyConfig
from freebies.errors import UsageError
from freebies.models.acnet import fuse_model
from freebies.tricks.ema import ema_weights

MAX_ABS_DIFF = 1e-4  # fp32 tolerance between the fused and the unfused model


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of `model` on one image of x: (N, C, H, W), by torch's counter.

    `torch.utils.flop_counter.FlopCounterMode` sees every aten op the forward runs, so a conv
    or matmul called functionally (F.conv2d in a detector head) counts as well as a module.
    It has formulas only for convolutions (2-D, 1-D, transposed, grouped), matrix products
    (mm, addmm, bmm, baddbmm: nn.Linear, matmul, einsum) and the CUDA scaled-dot-product
    attention kernels (torch 2.14 counts 0 for SDPA on the CPU); every other op adds zero:
    elementwise ops, bias adds, norms, activations, pooling, interpolation. Those formulas
    count 2 FLOPs per multiply-add, hence the halving.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    return counter.get_total_flops() // 2


@torch.no_grad()
def time_models(models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 20) -> dict:
    """Median ms per batch of each model, measured interleaved so noise hits all alike."""
    for m in models.values():
        m(x)  # warm-up: kernel selection, allocation
    times: dict[str, list[float]] = {name: [] for name in models}
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for _ in range(repeats):
        for name, m in models.items():
            sync()
            t0 = time.perf_counter()
            m(x)
            sync()  # CUDA runs asynchronously: time the work, not the launch
            times[name].append(1000 * (time.perf_counter() - t0))
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def with_conv_bias(model: nn.Module) -> nn.Module:
    """Give every conv a (zero) bias, so fused models share one layout: a fused ACNet block
    carries a bias even where the plain conv feeds a sum or a GroupNorm instead of a BN."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.out_channels, device=m.weight.device))
    return model


def fuse(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """`fuse_model`, then the common conv-with-bias layout of deploy checkpoints."""
    fused, counts = fuse_model(model)
    return with_conv_bias(fused), counts


def plain_fused(cfg: ClassifyConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The deploy architecture: the model built without ACNet, eval mode, conv+BN folded."""
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.model.acnet = False
    plain_cfg.train.sync_bn = False
    model = build_model(plain_cfg, num_classes, in_channels).eval()
    return fuse(model)[0]


def fuse_and_check(
    model: nn.Module, cfg: ClassifyConfig, x: torch.Tensor, num_classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Fuse `model` (a copy), check it on batch x: (N, C, H, W) fp32, and measure both.

    Returns the fused model and a report: counts of folded blocks, params, MACs, max abs
    difference, ms per batch of the unfused, fused and plain-architecture models.
    """
    model = model.float().eval()
    fused, counts = fuse(copy.deepcopy(model))
    # TF32 convolutions on CUDA would blur a 1e-4 comparison: check in true fp32.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        diff = (fused(x) - model(x)).abs().max().item()
    if not diff <= MAX_ABS_DIFF:
        raise UsageError(
            f"the fused model differs from the trained one by {diff:.3g} (> {MAX_ABS_DIFF}); "
            "refusing to write it. Is a custom module's fuse() wrong?"
        )
    plain = plain_fused(cfg, num_classes, x.shape[1]).to(x.device)
    if sorted(fused.state_dict()) != sorted(plain.state_dict()):
        raise UsageError(
            "the fused model's structure differs from the plain architecture; "
            "it cannot be rebuilt from its config"
        )
    ms = time_models({"unfused": model, "fused": fused, "plain": plain}, x)
    params = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in (("unfused", model), ("fused", fused), ("plain", plain))
    }
    macs = {
        k: count_macs(m, x) for k, m in (("unfused", model), ("fused", fused), ("plain", plain))
    }
    report = {
        **counts,
        "max_abs_diff": diff,
        "params": params,
        "macs": macs,
        "ms_per_batch": ms,
        "batch": len(x),
        "fused_over_plain": ms["fused"] / ms["plain"],
    }
    return fused, report


def report_table(report: dict[str, Any]) -> str:
    """The before/after table `freebies fuse` prints."""
    rows = [
        ("trained (unfused)", "unfused"),
        ("deployed (fused)", "fused"),
        ("plain architecture", "plain"),
    ]
    lines = [
        f"| model | params | MACs/image | ms/batch of {report['batch']} | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key in rows:
        diff = f"{report['max_abs_diff']:.2e}" if key == "fused" else ""
        lines.append(
            f"| {label} | {report['params'][key]:,} | {report['macs'][key]:,} | "
            f"{report['ms_per_batch'][key]:.2f} | {diff} |"
        )
    lines.append(
        f"folded {report['acb']} ACNet block(s) and {report['conv_bn']} conv+BN pair(s); "
        f"fused / plain inference time: {report['fused_over_plain']:.3f}"
    )
    return "\n".join(lines)


EXPORTS = {"onnx": ".onnx", "torch": ".pt2"}  # --export FORMAT -> file suffix


def export(model: nn.Module, x: torch.Tensor, fmt: str, path: Path) -> float:
    """Write the fused model as ONNX (torch.onnx, dynamo exporter) or a torch.export program
    (.pt2), both with a dynamic batch, then run the file on batch x and return its largest
    difference from the eager model's logits (a UsageError above MAX_ABS_DIFF)."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1)
    if fmt == "torch":
        program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
        with torch.no_grad():
            got = torch.export.load(str(path)).module()(x)
    else:
        run = onnx_runner()  # fuse_checkpoint checked it before writing anything
        torch.onnx.export(
            model,
            (x[:2],),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
        )
        got = torch.from_numpy(run(path, {"images": x.numpy()})[0])
    with torch.no_grad():
        diff = float((got - model(x)).abs().max())
    if not diff <= MAX_ABS_DIFF:
        path.unlink()
        raise UsageError(f"the exported {path} differs from the model by {diff:.3g}; not kept")
    return diff


def onnx_runner() -> Any:
    """A function (path, inputs) -> outputs running an ONNX file with onnxruntime; a one-line
    error when the export extra is missing."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it and onnxscript to write the file)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'freebies[export]'"
        ) from None

    def run(path: Path, inputs: dict[str, Any]) -> list[Any]:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, inputs)

    return run


def load_model(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the model of a training or deploy checkpoint and load its weights (eval mode)."""
    cfg = config.from_dict(ckpt.config, "classify")
    cfg.train.sync_bn = False
    num_classes, in_channels = ckpt.num_classes, ckpt.data["shape"][0]
    if ckpt.deploy:
        model = plain_fused(cfg, num_classes, in_channels)
    else:
        model = build_model(cfg, num_classes, in_channels).eval()
    state = ckpt.model
    if ckpt.ema is not None:  # a run with EMA is evaluated and deployed with its EMA weights
        state = ema_weights(ckpt.ema)
    model.load_state_dict(state)
    return model
