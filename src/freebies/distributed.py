"""Multi-process set-up through PyTorch's own engine: `torchrun` + DDP (gloo on CPU, NCCL on GPU).

Under torchrun the environment carries RANK / WORLD_SIZE / LOCAL_RANK; without it the run is a
single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from freebies.errors import UsageError


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def setup(device_name: str) -> Dist:
    """Join the process group when launched by torchrun; pick this rank's device."""
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returns it)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_rank0(obj: object) -> object:
    """Rank 0's `obj` on every rank (a decision only rank 0 makes, such as the precision)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(*modules: torch.nn.Module | None) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats).

    DDP broadcasts buffers at the start of each forward, so after the last training step each
    rank holds the statistics of its own last batch; without this, evaluation shards would run
    slightly different models and the gathered metrics would not be the checkpoint's.
    """
    if not dist.is_initialized():
        return
    for module in modules:
        for buf in module.buffers() if module is not None else ():
            dist.broadcast(buf, 0)
