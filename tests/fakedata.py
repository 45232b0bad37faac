"""Write small datasets in the real on-disk formats, for tests.

Each writer returns a :class:`Written` holding exactly what it wrote, in the order the loader
returns it, so tests can compare pixel for pixel. Images are learnable: each class has its own
bright block at a fixed place plus noise, so a tiny model beats chance within a few steps.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@dataclass
class Written:
    """What a writer put on disk: uint8 (N, C, H, W) images and int64 labels per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    root: Path  # the folder the loader should be pointed at


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """n int64 labels, each class about equally often, shuffled."""
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def make_images(
    labels: np.ndarray, classes: int, channels: int, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 (N, C, H, W) images where class k lights up cell k of a grid, over noise."""
    x = rng.integers(0, 60, size=(len(labels), channels, h, w), dtype=np.uint8)
    grid = math.ceil(math.sqrt(classes))
    ch, cw = max(1, h // grid), max(1, w // grid)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), grid)
        top, left = min(r * ch, h - ch), min(c * cw, w - cw)
        block = rng.integers(180, 256, size=(channels, ch, cw), dtype=np.uint8)
        if channels == 3:
            block[k % 3] //= 2  # a colour cue as well, so RGB classes differ in hue too
        x[i, :, top : top + ch, left : left + cw] = block
    return x


# --------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST / MNIST file names)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: big-endian magic 0x0000 08 NDIM, then dims, then data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(
    directory: Path,
    n_train: int = 128,
    n_test: int = 64,
    h: int = 28,
    w: int = 28,
    classes: int = 10,
    seed: int = 0,
    gz: bool = True,
) -> Written:
    """Write the four Fashion-MNIST IDX files (gzipped unless ``gz=False``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_y, test_y = balanced_labels(n_train, classes, rng), balanced_labels(n_test, classes, rng)
    train_x = make_images(train_y, classes, 1, h, w, rng)
    test_x = make_images(test_y, classes, 1, h, w, rng)
    for stem, array in (
        ("train-images-idx3-ubyte", train_x[:, 0]),
        ("train-labels-idx1-ubyte", train_y),
        ("t10k-images-idx3-ubyte", test_x[:, 0]),
        ("t10k-labels-idx1-ubyte", test_y),
    ):
        data = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (directory / stem).write_bytes(data)
    names = [str(i) for i in range(classes)]
    return Written(train_x, train_y, test_x, test_y, names, directory)


# --------------------------------------------------------------------------------------------
# CIFAR python pickles


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch we can extend
    """Pickles str and bytes as Python 2 byte strings (BINSTRING), as the real files were.

    The real CIFAR batches were written by Python 2's cPickle, so every string in them, keys,
    names and the array's raw data alike, comes back as bytes under encoding="bytes".
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def cifar_pickle(obj: object, style: str = "py2") -> bytes:
    """Pickle like the real files (``py2``), or as Python 3 would (``py3-2``, ``py3-5``)."""
    if style == "py3-2":
        return pickle.dumps(obj, protocol=2)
    if style == "py3-5":
        return pickle.dumps(obj, protocol=5)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 2 names numpy._core; the real (numpy 1) files name numpy.core. Protocol-2 GLOBAL
    # opcodes are newline-terminated text, so the swap is a plain byte replacement.
    return buf.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")


def write_cifar(
    directory: Path,
    kind: str = "cifar10",
    n_train: int = 100,
    n_test: int = 50,
    seed: int = 0,
    style: str = "py2",
) -> Written:
    """Write CIFAR batches into ``directory/cifar-10-batches-py`` (or ``cifar-100-python``).

    Layout and keys follow the real archives: images are (N, 3072) uint8 rows holding the R, G
    and B planes in turn; cifar10 splits train over data_batch_1..5 with b'labels', cifar100
    has one ``train`` file with b'fine_labels' (and b'coarse_labels').
    """
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        names = CIFAR10_NAMES
        root = Path(directory) / "cifar-10-batches-py"
    elif kind == "cifar100":
        names = [f"fine_{i:02d}" for i in range(100)]
        root = Path(directory) / "cifar-100-python"
    else:
        raise ValueError(kind)
    root.mkdir(parents=True, exist_ok=True)
    train_y = balanced_labels(n_train, len(names), rng)
    test_y = balanced_labels(n_test, len(names), rng)
    train_x = make_images(train_y, len(names), 3, 32, 32, rng)
    test_x = make_images(test_y, len(names), 3, 32, 32, rng)

    def batch(x: np.ndarray, y: np.ndarray, label: str, start: int) -> dict:
        d = {
            b"batch_label": label.encode(),
            b"data": x.reshape(len(x), 3072),
            b"filenames": [f"img_{start + i:05d}.png".encode() for i in range(len(x))],
        }
        if kind == "cifar10":
            d[b"labels"] = [int(v) for v in y]
        else:
            d[b"fine_labels"] = [int(v) for v in y]
            d[b"coarse_labels"] = [int(v) // 5 for v in y]
        return d

    def dump(name: str, obj: object) -> None:
        (root / name).write_bytes(cifar_pickle(obj, style))

    if kind == "cifar10":
        start = 0
        for i, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            dump(
                f"data_batch_{i}",
                batch(train_x[idx], train_y[idx], f"training batch {i} of 5", start),
            )
            start += len(idx)
        dump("test_batch", batch(test_x, test_y, "testing batch 1 of 1", 0))
        dump(
            "batches.meta",
            {
                b"label_names": [n.encode() for n in names],
                b"num_cases_per_batch": max(1, n_train // 5),
                b"num_vis": 3072,
            },
        )
    else:
        dump("train", batch(train_x, train_y, "training batch 1 of 1", 0))
        dump("test", batch(test_x, test_y, "testing batch 1 of 1", 0))
        dump(
            "meta",
            {
                b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
            },
        )
    return Written(train_x, train_y, test_x, test_y, list(names), root)


# --------------------------------------------------------------------------------------------
# Image folders


def write_folder(
    directory: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    n_per_class: int = 8,
    size: tuple[int, int] = (16, 16),
    split_names: tuple[str, ...] = ("train", "test"),
    mode: str = "RGB",
    ext: str = "png",
    seed: int = 0,
) -> Written:
    """Write ``directory/SPLIT/CLASS/NNNN.EXT`` images with PIL; ``size`` is (height, width).

    ``mode`` is "RGB" or "L". The returned arrays follow the loader's order (classes sorted,
    files sorted within a class); train is ``split_names[0]``, test ``split_names[1]``. Use a
    lossless ``ext`` (png, bmp) when comparing pixels exactly.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory = Path(directory)
    names = sorted(classes)
    channels = 3 if mode == "RGB" else 1
    h, w = size
    out = []
    for split in split_names:
        # Sorted by class, as the loader lists them (folders sorted, then files sorted).
        y = np.repeat(np.arange(len(names)), n_per_class).astype(np.int64)
        x = make_images(y, len(names), channels, h, w, rng)
        for i, k in enumerate(y):
            folder = directory / split / names[k]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = x[i, 0] if channels == 1 else x[i].transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(pixels), mode).save(
                folder / f"{i % n_per_class:04d}.{ext}"
            )
        out.append((x, y))
    (train_x, train_y), (test_x, test_y) = out[0], out[1] if len(out) > 1 else out[0]
    return Written(train_x, train_y, test_x, test_y, names, directory)
