"""What a classification reader returns: a labelled train / test split held in memory, and
the checks and resizing every reader shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from freebies.errors import UsageError

if TYPE_CHECKING:
    from freebies.data.folder import FolderImages

__all__ = ["ImageData", "check_labels", "resize_batch"]


@dataclass
class ImageData:
    """A labelled train/test split held in memory."""

    train_x: torch.Tensor | FolderImages  # uint8 (N, C, H, W), contiguous, CPU; or on disk
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor | FolderImages  # uint8 (M, C, H, W)
    test_y: torch.Tensor  # int64 (M,)
    classes: list[str]  # class names, len = number of classes


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Refuse a label outside 0..num_classes - 1, naming ``path``."""
    if labels.size == 0:
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise UsageError(
            f"{path} has label {int(bad[0])}, outside 0..{num_classes - 1} for {num_classes}"
            " classes; the file is corrupt or belongs to another dataset"
        )


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size) with antialiasing."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    from torchvision.transforms.v2 import functional as F

    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    # Chunks bound the float scratch memory that resize may use internally.
    for start in range(0, x.shape[0], 4096):
        out[start : start + 4096] = F.resize(x[start : start + 4096], [size, size], antialias=True)
    return out
