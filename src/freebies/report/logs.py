"""The per-epoch logs beside metrics.jsonl: results.csv (one row per epoch, as Ultralytics and
spreadsheets read it) and, when `train.tensorboard` is on, TensorBoard scalars."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from freebies.config import flatten
from freebies.data.io import write_text
from freebies.errors import UsageError


def write_csv(path: Path, metrics: list[dict[str, Any]]) -> None:
    """results.csv: a column per key any row has (first-seen order), empty where a row lacks
    it (an epoch without evaluation); rewritten atomically each epoch."""
    rows = [flatten(r) for r in metrics]  # nested keys as `ap_per_class.RBC`
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def require_tensorboard() -> type:
    """TensorBoard's SummaryWriter, or a one-line UsageError when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(
            "train.tensorboard=true needs the tensorboard package: pip install "
            "'freebies[tensorboard]' (or tensorboard), or set train.tensorboard=false"
        ) from None
    return SummaryWriter


def tensorboard_writer(folder: Path) -> Any:
    """A TensorBoard SummaryWriter logging into `folder`."""
    return require_tensorboard()(log_dir=str(folder))


def log_scalars(writer: Any, row: dict[str, Any]) -> None:
    """Every numeric value of a metrics row as a scalar at step = its epoch."""
    for key, value in flatten(row).items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
