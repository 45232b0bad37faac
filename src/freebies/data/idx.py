"""MNIST and Fashion-MNIST: the four IDX files (gzipped or not) -> uint8 tensors.

Without a DIR the files are looked for in ``$FREEBIES_DATA``, Debian's dataset packages, ./data
(torchvision's download layout too) and ~/.cache/freebies, in that order.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from freebies.data.images import ImageData, check_labels
from freebies.data.io import one_line
from freebies.errors import UsageError

__all__ = ["FASHION_MNIST_CLASSES", "MNIST_CLASSES", "SYSTEM_DATASETS", "load_idx"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]

# Where Debian's dataset-* packages install; a module constant so tests can point it elsewhere.
SYSTEM_DATASETS = Path("/usr/share/datasets")

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _idx_search_dirs(name: str) -> list[Path]:
    """Where ``fashion-mnist`` / ``mnist`` without a DIR are looked for, in order."""
    torchvision_name = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    dirs = []
    env = os.environ.get("FREEBIES_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs += [
        SYSTEM_DATASETS / name,
        Path("data") / name,
        Path("data") / torchvision_name / "raw",  # torchvision's download layout
        Path.home() / ".cache" / "freebies" / name,
    ]
    return dirs


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: torchvision leaves both, and it is faster to read.
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx(name: str, directory: Path | None) -> ImageData:
    """``fashion-mnist`` or ``mnist`` from ``directory``, or from the first place that has it."""
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    how = (
        "run `make data` (installs Debian's dataset-fashion-mnist or downloads it with torchvision)"
        if name == "fashion-mnist"
        else "download it with torchvision.datasets.MNIST('data', download=True)"
    )
    if directory is not None:
        if not directory.is_dir():
            raise UsageError(f"{name} directory {directory} does not exist; {how}")
        missing = [s for s in _IDX_FILES.values() if _find_idx_file(directory, s) is None]
        if missing:
            raise UsageError(
                f"{directory} lacks {', '.join(f'{m}[.gz]' for m in missing)}; {name} needs"
                f" all four IDX files ({', '.join(_IDX_FILES.values())})"
            )
    else:
        looked = _idx_search_dirs(name)
        found = [
            d for d in looked if all(_find_idx_file(d, s) is not None for s in _IDX_FILES.values())
        ]
        if not found:
            raise UsageError(
                f"{name} not found; looked in {', '.join(str(d) for d in looked)}; {how},"
                f" or pass --data {name}:DIR"
            )
        directory = found[0]

    paths = {key: _find_idx_file(directory, stem) for key, stem in _IDX_FILES.items()}
    assert all(paths.values())  # checked above
    train_x = _read_idx(paths["train_x"], _IMAGES_MAGIC)
    train_y = _read_idx(paths["train_y"], _LABELS_MAGIC)
    test_x = _read_idx(paths["test_x"], _IMAGES_MAGIC)
    test_y = _read_idx(paths["test_y"], _LABELS_MAGIC)
    for x, y, xp, yp in (
        (train_x, train_y, paths["train_x"], paths["train_y"]),
        (test_x, test_y, paths["test_x"], paths["test_y"]),
    ):
        if len(x) != len(y):
            raise UsageError(
                f"{xp} holds {len(x)} images but {yp} holds {len(y)} labels; the counts must"
                " match (mixed-up or partly downloaded files?)"
            )
        check_labels(y, len(classes), yp)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UsageError(
            f"{paths['train_x']} has {train_x.shape[1]}x{train_x.shape[2]} images but"
            f" {paths['test_x']} has {test_x.shape[1]}x{test_x.shape[2]}; they must match"
        )
    return ImageData(
        train_x=torch.from_numpy(train_x).unsqueeze(1),  # (N, H, W) -> (N, 1, H, W)
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=torch.from_numpy(test_x).unsqueeze(1),
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        classes=list(classes),
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes into a writable numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; decide by content, not by the file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UsageError(
                f"{path} is a truncated or corrupt gzip file ({one_line(e)}); delete it and"
                " download it again"
            ) from None
    elif path.suffix == ".gz" and int.from_bytes(raw[:4], "big") != magic:
        # A .gz holding plain IDX (a browser may have unpacked it) is fine; anything else is not.
        raise UsageError(
            f"{path} is not a valid gzip file (corrupt or not what its name says); delete it"
            " and download it again"
        )
    kind = "images" if magic == _IMAGES_MAGIC else "labels"
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise UsageError(
            f"{path} has IDX magic number {found}, expected {magic} ({kind}); is it the right file?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f"{path} is shorter than its IDX header; download it again")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise UsageError(
            f"{path} should hold {' x '.join(map(str, dims))} = {expected} bytes of data after"
            f" its header but holds {len(raw) - header}; the file is truncated or corrupt,"
            " download it again"
        )
    # Copy out of the immutable bytes so the tensor built on it is writable.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()
