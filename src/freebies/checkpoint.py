"""Checkpoints: written atomically (temporary file, then rename), read with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from freebies.errors import UsageError


def save(obj: dict[str, Any], path: Path) -> None:
    """Write `obj` to `path` so that a crash never leaves a half-written file behind."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Read a freebies checkpoint on the CPU, refusing anything but tensors and plain data."""
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UsageError(
            f"cannot read checkpoint {path} ({type(e).__name__}); is it a "
            "freebies checkpoint and complete?"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "config", "data"} <= ckpt.keys():
        raise UsageError(f"{path} is not a freebies checkpoint (no model/config/data inside)")
    return ckpt


def write_text(path: Path, text: str) -> None:
    """Atomic text write, for files rewritten every epoch."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
