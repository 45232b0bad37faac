"""Load a whole image-classification dataset into memory as uint8 tensors.

Four on-disk formats are understood, chosen by a spec string:

* ``fashion-mnist[:DIR]`` and ``mnist[:DIR]``: the four IDX files (gzipped or not).
* ``cifar10:DIR`` and ``cifar100:DIR``: the python-pickle batches, read with a restricted
  unpickler that can only rebuild numpy arrays (pickle can otherwise run arbitrary code).
* ``folder:DIR``: ``DIR/train`` and ``DIR/test`` (or ``DIR/val``), one subfolder per class.

Every mistake in the input raises :class:`~freebies.errors.UsageError` with a one-line message
that names the file at fault and says what to do.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freebies.errors import UsageError, nearest

__all__ = ["FolderImages", "ImageData", "load_dataset"]


@dataclass
class ImageData:
    """A labelled train/test split held in memory."""

    train_x: torch.Tensor | FolderImages  # uint8 (N, C, H, W), contiguous, CPU; or on disk
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor | FolderImages  # uint8 (M, C, H, W)
    test_y: torch.Tensor  # int64 (M,)
    classes: list[str]  # class names, len = number of classes


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

VALID_FORMS = "fashion-mnist[:DIR], mnist[:DIR], cifar10:DIR, cifar100:DIR, folder:DIR"
_NAMES = ["fashion-mnist", "mnist", "cifar10", "cifar100", "folder"]

# Where Debian's dataset-* packages install; a module constant so tests can point it elsewhere.
SYSTEM_DATASETS = Path("/usr/share/datasets")


def load_dataset(spec: str, image_size: int | None = None, stream: bool = False) -> ImageData:
    """Load the dataset named by ``spec`` (see the module docstring for the forms).

    ``image_size``, when given, resizes every image to ``image_size x image_size``; it is what
    lets a folder of differently sized images load at all. ``stream`` (folders only) leaves the
    images on disk as :class:`FolderImages`, decoded batch by batch by a DataLoader.
    """
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise UsageError(
            f"data.image_size must be a positive whole number of pixels, got {image_size!r}"
        )
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    directory = Path(arg).expanduser() if arg else None
    if sep and not arg:
        raise UsageError(f"dataset spec {spec!r} has nothing after ':'; give a directory")

    if name in ("fashion-mnist", "mnist"):
        data = _load_idx_dataset(name, directory)
    elif name in ("cifar10", "cifar100"):
        if directory is None:
            raise UsageError(
                f"{name} needs the directory that holds its batches: --data {name}:DIR"
                f" (valid forms: {VALID_FORMS})"
            )
        data = _load_cifar(name, directory)
    elif name == "folder":
        if directory is None:
            raise UsageError(
                "folder needs a directory with train/ and test/ inside: --data folder:DIR"
            )
        return _load_folder(directory, image_size, stream)
    else:
        raise UsageError(
            f"unknown dataset {spec!r}{nearest(name, _NAMES)}; valid forms: {VALID_FORMS}"
        )
    if stream:
        raise UsageError(
            f"data.stream is for folder: datasets too large for memory; {name} fits,"
            " so drop data.stream"
        )
    if image_size is not None:
        data.train_x = _resize_batch(data.train_x, image_size)
        data.test_x = _resize_batch(data.test_x, image_size)
    return data


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

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


def _load_idx_dataset(name: str, directory: Path | None) -> ImageData:
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
        _check_labels(y, len(classes), yp)
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
                f"{path} is a truncated or corrupt gzip file ({_one_line(e)}); delete it and"
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


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size == 0:
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise UsageError(
            f"{path} has label {int(bad[0])}, outside 0..{num_classes - 1} for {num_classes}"
            " classes; the file is corrupt or belongs to another dataset"
        )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle batches)

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
            f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {_one_line(e)});"
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


def _load_cifar(name: str, directory: Path) -> ImageData:
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
            _check_labels(y, len(classes), path)
            # Rows are the R, G and B planes one after another, so this is already (C, H, W).
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(y)
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
        return x, torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read([directory / f for f in train_files])
    test_x, test_y = read([directory / test_file])
    return ImageData(train_x, train_y, test_x, test_y, classes)


# --------------------------------------------------------------------------------------------
# Image folders

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
# Modes that carry a single gray channel (LA's alpha is dropped).
_GRAY_MODES = {"1", "L", "LA", "I", "F"}


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES or mode.startswith("I;16")


def _list_split(split_dir: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image paths, for one split folder."""
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UsageError(
            f"{split_dir} has no class subfolders; put each class's images in its own"
            f" subfolder, e.g. {split_dir / 'cat'}/001.png"
        )
    out = {}
    for d in class_dirs:
        images = sorted(
            p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise UsageError(
                f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))});"
                " add some or remove the folder"
            )
        out[d.name] = images
    return out


def _load_folder(directory: Path, image_size: int | None, stream: bool = False) -> ImageData:
    from PIL import Image

    if not directory.is_dir():
        raise UsageError(f"image folder {directory} does not exist")
    train_dir = directory / "train"
    if not train_dir.is_dir():
        raise UsageError(
            f"{directory} has no train/ folder; folder:DIR needs DIR/train/CLASS/*.png and"
            " DIR/test/CLASS/*.png (or DIR/val/...)"
        )
    test_dir = directory / "test"
    if not test_dir.is_dir():
        test_dir = directory / "val"
        if not test_dir.is_dir():
            raise UsageError(
                f"{directory} has train/ but neither test/ nor val/; add one with the same"
                " class subfolders"
            )
    train = _list_split(train_dir)
    test = _list_split(test_dir)
    classes = sorted(train)
    for name in test:
        if name not in train:
            raise UsageError(
                f"class {name!r} is in {test_dir} but not in {train_dir}{nearest(name, classes)};"
                " test classes must also appear in train"
            )

    def flatten(split: dict[str, list[Path]]) -> tuple[list[Path], list[int]]:
        paths, labels = [], []
        for name in sorted(split):
            paths += split[name]
            labels += [classes.index(name)] * len(split[name])
        return paths, labels

    train_paths, train_labels = flatten(train)
    test_paths, test_labels = flatten(test)
    all_paths = train_paths + test_paths

    # First pass reads only headers (cheap), so a size or mode mismatch is reported before
    # decoding everything, and the output can be allocated once.
    headers = _parallel_map(lambda p: _open_header(p, Image), all_paths)
    channels = 1 if all(_is_gray(mode) for _, mode in headers) else 3
    if image_size is None:
        first_size = headers[0][0]
        for path, (size, _) in zip(all_paths, headers, strict=True):
            if size != first_size:
                raise UsageError(
                    f"images differ in size: {all_paths[0]} is {first_size[0]}x{first_size[1]}"
                    f" and {path} is {size[0]}x{size[1]} (width x height); set"
                    " data.image_size=N to resize all to NxN"
                )
        width, height = first_size
    else:
        width = height = image_size

    if stream:
        return ImageData(
            train_x=FolderImages(train_paths, channels, height, width),
            train_y=torch.tensor(train_labels, dtype=torch.int64),
            test_x=FolderImages(test_paths, channels, height, width),
            test_y=torch.tensor(test_labels, dtype=torch.int64),
            classes=classes,
        )
    n = len(train_paths)
    # Separate arrays, so train and test tensors do not share (and drag along) one storage.
    train_out = np.empty((n, channels, height, width), dtype=np.uint8)
    test_out = np.empty((len(test_paths), channels, height, width), dtype=np.uint8)

    def fill(i: int) -> None:
        array = _decode(all_paths[i], channels, Image)  # (C, h, w)
        if array.shape[1:] != (height, width):
            if image_size is None:  # the header lied about the size
                raise UsageError(
                    f"{all_paths[i]} decodes to {array.shape[2]}x{array.shape[1]} but"
                    f" other images are {width}x{height}; set data.image_size=N to resize all"
                )
            array = _resize_batch(torch.from_numpy(np.ascontiguousarray(array))[None], image_size)
            array = array[0].numpy()
        if i < n:
            train_out[i] = array
        else:
            test_out[i - n] = array

    _parallel_map(fill, range(len(all_paths)))
    return ImageData(
        train_x=torch.from_numpy(train_out),
        train_y=torch.tensor(train_labels, dtype=torch.int64),
        test_x=torch.from_numpy(test_out),
        test_y=torch.tensor(test_labels, dtype=torch.int64),
        classes=classes,
    )


class FolderImages(torch.utils.data.Dataset):
    """Images left on disk and decoded on demand: the path for folders too large for memory.

    Indexing with an int decodes one uint8 (C, H, W) image; indexing with a slice or an index
    tensor gives the subset, like a tensor would, so splits and limits work unchanged.
    """

    def __init__(self, paths: list[Path], channels: int, height: int, width: int) -> None:
        self.paths, self.channels, self.height, self.width = paths, channels, height, width

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.height, self.width)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return FolderImages(self.paths[index], self.channels, self.height, self.width)
        if isinstance(index, torch.Tensor) and index.ndim == 1:
            picked = [self.paths[i] for i in index.tolist()]
            return FolderImages(picked, self.channels, self.height, self.width)
        from PIL import Image

        x = torch.from_numpy(np.ascontiguousarray(_decode(self.paths[index], self.channels, Image)))
        if tuple(x.shape[1:]) != (self.height, self.width):
            from torchvision.transforms.v2 import functional as F

            x = F.resize(x, [self.height, self.width], antialias=True)
        return x


def _parallel_map(fn: Callable[[Any], Any], items: Any) -> list:
    # PIL decoding and zlib release the GIL, so threads give a real speed-up here.
    workers = min(8, os.cpu_count() or 1)
    if workers == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _unreadable(path: Path, e: BaseException) -> UsageError:
    return UsageError(
        f"cannot read image {path} ({type(e).__name__}: {_one_line(e)}); delete or replace it"
    )


def _open_header(path: Path, image_module: Any) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode of an image, read from its header only."""
    try:
        with image_module.open(path) as im:
            return im.size, im.mode
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


def _decode(path: Path, channels: int, image_module: Any) -> np.ndarray:
    """Decode one image to uint8 (channels, H, W); gray is repeated when 3 channels are wanted."""
    try:
        with image_module.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "L", "LA"):
                gray = np.asarray(im.convert("L"))
            elif mode.startswith("I") or mode == "F":
                # 16/32-bit gray: convert("L") would clip at 255, so scale 0..65535 instead.
                wide = np.asarray(im).astype(np.float64)
                gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            else:
                if mode == "P" and "transparency" in im.info:
                    im = im.convert("RGBA")  # PIL wants palette transparency resolved first
                if channels == 1:  # header said gray but the frame decoded as color
                    gray = np.asarray(im.convert("L"))
                else:
                    return np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    return np.broadcast_to(gray, (channels, *gray.shape))


def _resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size) with antialiasing."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    from torchvision.transforms.v2 import functional as F

    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    # Chunks bound the float scratch memory that resize may use internally.
    for start in range(0, x.shape[0], 4096):
        out[start : start + 4096] = F.resize(x[start : start + 4096], [size, size], antialias=True)
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
