"""The batch loader: the dataset is one uint8 tensor on the device.

Batches are drawn by index from one global shuffled order (seeded by the run seed and the epoch,
the same on every rank); each rank takes its slice. Augmentation, crop and flip included, is
batched tensor code in `freebies.tricks` (airbench's style), not per-sample PIL transforms.

Image folders too large for memory (`data.stream`) go through a `torch.utils.data.DataLoader`
whose workers decode files; it is fed the very same index lists, so the order, the rank shards
and an exact resume are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from freebies.data.folder import FolderImages


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The global shuffled order of `n` indices for `epoch`; identical on every rank."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def normalize(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, standardised per channel with `mean`, `std` of shape (C,)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(memory_format=fmt).float()
    return (x - mean[:, None, None]) / std[:, None, None]


def sample_images(x: torch.Tensor | FolderImages, n: int) -> torch.Tensor:
    """Up to n uint8 images (n, C, H, W) spread evenly over the set (decoded if streamed)."""
    idx = torch.linspace(0, len(x) - 1, min(len(x), n)).long()
    if isinstance(x, torch.Tensor):
        return x[idx]
    return torch.stack([x[i] for i in idx.tolist()])


def channel_stats(x: torch.Tensor | FolderImages) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (float64) of uint8 (N, C, H, W) images, in pixel units.

    Streamed folders are estimated from 1024 images spread evenly over the set.
    """
    if isinstance(x, FolderImages):
        x = sample_images(x, 1024)
    # Sums over chunks of 4096 images: a float64 copy of a whole dataset would be gigabytes.
    total = torch.zeros(2, x.shape[1], dtype=torch.float64)
    for chunk in x.split(4096):
        c = chunk.transpose(0, 1).reshape(x.shape[1], -1).double()
        total += torch.stack([c.sum(1), (c * c).sum(1)])
    n = x.numel() // x.shape[1]
    mean = total[0] / n
    var = (total[1] - n * mean * mean) / (n - 1)
    return mean, var.clamp(min=0).sqrt()


def to_device(x: torch.Tensor | FolderImages, device: torch.device) -> torch.Tensor | FolderImages:
    """Move in-memory images to the device; streamed ones move batch by batch."""
    return x.to(device) if isinstance(x, torch.Tensor) else x


def train_batches(
    x: torch.Tensor | FolderImages,
    y: torch.Tensor,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    start_step: int = 0,
    workers: int = 4,
    groups: torch.Tensor | None = None,
    take: Callable[[torch.Tensor], Any] | None = None,
) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
    """Yield this rank's (dataset indices, uint8 images, labels) for each global batch.

    The last incomplete global batch is dropped so every step sees `batch_size` images and
    every rank the same share. `start_step` skips batches already trained (exact resume).
    With `groups` (an int64 group per image), each batch holds one group (`grouped_batches`).
    In-memory images are `x[idx]` on the device of `y`, or what `take(idx)` reads, given the
    indices on the host; streamed ones come on the device of `y`.
    """
    local = batch_size // world
    order = epoch_order(len(x), seed, epoch)
    if groups is None:
        batches = order[: len(x) // batch_size * batch_size].view(-1, batch_size)
    else:
        batches = grouped_batches(order, groups, batch_size)
    mine = [b[rank * local : (rank + 1) * local] for b in batches[start_step:]]
    if isinstance(x, torch.Tensor):
        for ids in mine:
            idx = ids.to(y.device)
            yield idx, x[idx] if take is None else take(ids), y[idx]
    else:
        streamed = _stream(x, y, [i.tolist() for i in mine], workers)
        for ids, (xb, yb) in zip(mine, streamed, strict=True):
            yield ids.to(y.device), xb, yb


def grouped_batches(order: torch.Tensor, groups: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(steps, batch_size) indices: `order` dealt into one bucket per group, a batch emitted
    whenever a bucket fills (detectron2's aspect-ratio grouping); what is left in a bucket at
    the end is dropped. With one group these are `order`'s consecutive chunks."""
    buckets: dict[int, list[int]] = {}
    out = []
    for i, g in zip(order.tolist(), groups.cpu()[order].tolist(), strict=True):
        bucket = buckets.setdefault(g, [])
        bucket.append(i)
        if len(bucket) == batch_size:
            out.append(bucket)
            buckets[g] = []
    return torch.tensor(out, dtype=torch.int64).reshape(-1, batch_size)


def group_steps(groups: torch.Tensor, batch_size: int) -> int:
    """How many batches `grouped_batches` makes per epoch."""
    return int((torch.bincount(groups) // batch_size).sum()) if len(groups) else 0


def eval_batches(
    x: torch.Tensor | FolderImages,
    y: torch.Tensor,
    batch_size: int,
    *,
    rank: int = 0,
    world: int = 1,
    workers: int = 4,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's strided shard of an evaluation set, in order, as (uint8 images, labels)."""
    mine = list(range(rank, len(x), world))
    index = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    if isinstance(x, torch.Tensor):
        for idx in index:
            yield x[idx], y[idx]
    else:
        yield from _stream(x, y, index, workers)


def _stream(images: FolderImages, y: torch.Tensor, index: list[list[int]], workers: int):
    """Decode the given batches of file indices in DataLoader workers, in order."""
    loader = DataLoader(
        images,
        batch_sampler=index,
        num_workers=workers,
        collate_fn=getattr(images, "collate", None),
        pin_memory=y.device.type == "cuda",
        persistent_workers=False,
    )
    for idx, xb in zip(index, loader, strict=True):
        yield xb.to(y.device, non_blocking=True), y[torch.tensor(idx, device=y.device)]
