"""From a dataset spec to the train / validation / test tensors a run uses.

Validation is a seeded split of the training set (`data.val_split`): anything that chooses
(tuning, early stopping, picking tricks) looks at it, never at the test set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import torch

from freebies.data.datasets import load_dataset
from freebies.data.folder import FolderImages


class DataSettings(Protocol):
    """The data settings `prepare` reads (the recipe's `data` section has them)."""

    spec: str
    image_size: int | None
    stream: bool
    val_split: float
    split_seed: int
    limit_train: int | None
    limit_test: int | None


@dataclass
class Splits:
    train_x: torch.Tensor | FolderImages  # uint8 (N, C, H, W), or streamed from disk
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor | FolderImages | None
    val_y: torch.Tensor | None
    test_x: torch.Tensor | FolderImages
    test_y: torch.Tensor
    classes: list[str]

    def to(self, device: torch.device) -> Splits:
        """The same splits with in-memory images and all labels on `device`."""
        from freebies.data.loader import to_device

        def move(x: torch.Tensor | FolderImages | None) -> torch.Tensor | FolderImages | None:
            return None if x is None else to_device(x, device)

        return Splits(
            move(self.train_x),
            move(self.train_y),
            move(self.val_x),
            move(self.val_y),
            move(self.test_x),
            move(self.test_y),
            self.classes,
        )

    @property
    def fingerprint(self) -> str:
        """A cheap identity of the data, so a resumed run can refuse different data."""
        h = hashlib.sha1()
        for t in (self.train_y, self.test_y, self.train_x[:64], self.test_x[:64]):
            h.update(str(tuple(t.shape)).encode())
            if isinstance(t, FolderImages):
                h.update("\n".join(map(str, t.paths)).encode())
            else:
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def prepare(cfg: DataSettings) -> Splits:
    """The train / validation / test splits the settings `cfg` describe."""
    data = load_dataset(cfg.spec, cfg.image_size, cfg.stream)
    train_x, train_y = data.train_x, data.train_y
    val_x = val_y = None
    if cfg.val_split > 0:
        order = torch.randperm(
            len(train_x), generator=torch.Generator().manual_seed(cfg.split_seed)
        )
        n_val = round(cfg.val_split * len(train_x))
        val_x, val_y = train_x[order[:n_val]], train_y[order[:n_val]]
        keep = order[n_val:].sort().values  # keep the original order of the training images
        train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = data.test_x, data.test_y
    if cfg.limit_train is not None:
        train_x, train_y = train_x[: cfg.limit_train], train_y[: cfg.limit_train]
    if cfg.limit_test is not None:
        test_x, test_y = test_x[: cfg.limit_test], test_y[: cfg.limit_test]
        if val_x is not None:
            val_x, val_y = val_x[: cfg.limit_test], val_y[: cfg.limit_test]
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, data.classes)
