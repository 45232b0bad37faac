"""CIFAR-10 / CIFAR-100: the python-pickle batches -> uint8 tensors.

The pickles are read with a restricted unpickler that can only rebuild numpy arrays (pickle can
otherwise run arbitrary code).
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freebies.data.images import ImageData, check_labels
from freebies.data.io import one_line
from freebies.errors import UsageError

__all__ = ["load_cifar"]

_CIFAR = {
    # name: (folder inside the archive, train files, test file, meta file, label key, names key)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: what numpy needs to rebuild an array."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles bytes with protocol <= 2 as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    # The real files name numpy.core (numpy 1); numpy 2 writes numpy._core.
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except the numpy array rebuilders."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UsageError(
                f"refusing to unpickle {module}.{name} from {self._path}: a CIFAR batch holds"
                " only numpy arrays, so the file is corrupt or malicious; delete it and"
                " download the dataset again"
            ) from None


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    except UsageError:
        raise
    except Exception as e:  # anything else is garbage bytes: every step here is data-driven
        raise UsageError(
            f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {one_line(e)});"
            " delete it and download the dataset again"
        ) from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict")
    return obj


def _get(batch: dict, key: str, path: Path) -> Any:
    # Python 2 wrote str keys, which encoding="bytes" gives back as bytes.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise UsageError(f"{path} has no {key!r} entry; is it really a CIFAR batch file?")


def load_cifar(name: str, directory: Path) -> ImageData:
    """``cifar10`` or ``cifar100`` from ``directory`` (the extracted folder or its parent)."""
    folder, train_files, test_file, meta_file, label_key, names_key = _CIFAR[name]
    if not directory.is_dir():
        raise UsageError(f"{name} directory {directory} does not exist")
    files = [*train_files, test_file, meta_file]
    if not any((directory / f).exists() for f in files) and (directory / folder).is_dir():
        directory = directory / folder  # DIR is the parent of the extracted archive
    for f in files:
        if not (directory / f).is_file():
            raise UsageError(
                f"{directory / f} is missing; {name}:DIR must point at the extracted"
                f" {folder} folder (or its parent), e.g. from"
                f" torchvision.datasets.{name.upper()}(DIR,"
                " download=True)"
            )

    meta_path = directory / meta_file
    names = _get(_unpickle(meta_path), names_key, meta_path)
    if not isinstance(names, list | tuple) or not all(isinstance(n, bytes | str) for n in names):
        raise UsageError(f"{meta_path}: {names_key!r} is not a list of class names")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]

    def read(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for path in paths:
            batch = _unpickle(path)
            data = _get(batch, "data", path)
            labels = _get(batch, label_key, path)
            if not (
                isinstance(data, np.ndarray)
                and data.dtype == np.uint8
                and data.ndim == 2
                and data.shape[1] == 3 * 32 * 32
            ):
                got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
                raise UsageError(
                    f"{path}: 'data' should be a uint8 array of shape (N, 3072), got {got}"
                )
            try:
                y = np.asarray(labels, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise UsageError(f"{path}: {label_key!r} is not a list of integers") from None
            if len(y) != len(data):
                raise UsageError(
                    f"{path} holds {len(data)} images but {len(y)} labels; the counts must match"
                )
            check_labels(y, len(classes), path)
            # Rows are the R, G and B planes one after another, so this is already (C, H, W).
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(y)
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
        return x, torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read([directory / f for f in train_files])
    test_x, test_y = read([directory / test_file])
    return ImageData(train_x, train_y, test_x, test_y, classes)
