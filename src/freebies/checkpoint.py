"""The checkpoint schema, and atomic writes (temporary file, then rename).

One schema for every task and for deploy checkpoints; docs/run-folder.md describes it for
people. Files are read with `torch.load(weights_only=True)`: tensors and plain data only.
Checkpoints written before the schema had a version number are format 1; format 2 holds a
per-task config (a `task` key, only that task's sections). Format 1 still loads: its config
is migrated when read (`config.from_dict`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from freebies.config import EVAL_COMMANDS
from freebies.errors import UsageError

FORMAT = 2  # bump when a field changes meaning; load() refuses formats it does not know
READS = (1, 2)


@dataclass
class Checkpoint:
    """A freebies checkpoint (format 2).

    The engine writes one as `last.pt` after every epoch and on Ctrl-C / SIGTERM (and copies
    it to `best.pt` after the best validation epoch so far);
    `freebies fuse` writes a deploy checkpoint (`deploy=True`, no training state).
    """

    model: dict[str, torch.Tensor]  # state_dict of the unwrapped network (fused when deploy)
    config: dict[str, Any]  # the resolved recipe, as in config.yaml (format 1: both tasks')
    data: dict[str, Any]  # what it was trained on; the task's keys, "fingerprint" and "classes"
    recipe: str = "custom"
    task: str = "classify"
    # Training state; None in a deploy checkpoint.
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    ema: dict[str, torch.Tensor] | None = None  # AveragedModel state_dict, when ema.decay > 0
    rng: dict[str, Any] | None = None  # {"aug": [state of each rank], "torch": state}
    device_type: str = "cpu"  # RNG states only continue on the same kind of device
    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished inside epoch `epoch` (an interrupted epoch), else 0
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl rows
    partial: dict[str, float] = field(default_factory=dict)  # loss_sum, steps, train_s so far
    times: dict[str, float] = field(default_factory=dict)  # train_s, wall_s so far
    precision: list[str] | None = None  # [what train.precision trained in, why]
    deploy: bool = False
    fuse_report: dict[str, Any] | None = None
    format: int = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.data["classes"])


FIELDS = {f.name for f in dataclasses.fields(Checkpoint)}


def save(ckpt: Checkpoint, path: Path) -> None:
    """Write `ckpt` to `path` so that a crash never leaves a half-written file behind."""
    # Fields, not dataclasses.asdict: that would deep-copy every tensor on each save.
    plain = {k: getattr(ckpt, k) for k in FIELDS if getattr(ckpt, k) is not None}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(plain, tmp)
    os.replace(tmp, path)


def load(path: Path, task: str | None = None) -> Checkpoint:
    """Read a freebies checkpoint on the CPU, refusing anything but tensors and plain data,
    and, when `task` is given, a checkpoint of another task."""
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UsageError(
            f"cannot read checkpoint {path} ({type(e).__name__}); is it a "
            "freebies checkpoint and complete?"
        ) from None
    if not isinstance(raw, dict) or not {"model", "config", "data"} <= raw.keys():
        raise UsageError(f"{path} is not a freebies checkpoint (no model/config/data inside)")
    version = raw.get("format", 1)  # files from before the schema was versioned
    if version not in READS:
        raise UsageError(
            f"{path} is checkpoint format {version!r}; this freebies reads formats "
            f"{', '.join(map(str, READS))}. Use the freebies version that wrote it"
        )
    unknown = sorted(raw.keys() - FIELDS)
    if unknown:
        raise UsageError(f"{path} has keys this format does not define: {', '.join(unknown)}")
    if not isinstance(raw["data"], dict) or not isinstance(raw["data"].get("classes"), list):
        raise UsageError(f"{path} does not say which classes it predicts (data.classes)")
    ckpt = Checkpoint(**{**raw, "format": version})
    if task is not None and ckpt.task != task:
        raise UsageError(
            f"{path} is a {ckpt.task} checkpoint, not a {task} one; evaluate it with "
            f"`{EVAL_COMMANDS.get(ckpt.task, ckpt.task)}`"
        )
    return ckpt
