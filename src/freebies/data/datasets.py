"""Load a whole image-classification dataset into memory as uint8 tensors.

Four on-disk formats are understood, chosen by a spec string, each read by its own module:

* ``fashion-mnist[:DIR]`` and ``mnist[:DIR]``: the four IDX files (:mod:`freebies.data.idx`).
* ``cifar10:DIR`` and ``cifar100:DIR``: the python-pickle batches (:mod:`freebies.data.cifar`).
* ``folder:DIR``: ``DIR/train`` and ``DIR/test`` (or ``DIR/val``), one subfolder per class
  (:mod:`freebies.data.folder`).

Every mistake in the input raises :class:`~freebies.errors.UsageError` with a one-line message
that names the file at fault and says what to do.
"""

from __future__ import annotations

from pathlib import Path

from freebies.data.cifar import load_cifar
from freebies.data.folder import load_folder
from freebies.data.idx import load_idx
from freebies.data.images import ImageData, resize_batch
from freebies.errors import UsageError, nearest

__all__ = ["VALID_FORMS", "load_dataset"]

VALID_FORMS = "fashion-mnist[:DIR], mnist[:DIR], cifar10:DIR, cifar100:DIR, folder:DIR"
_NAMES = ["fashion-mnist", "mnist", "cifar10", "cifar100", "folder"]


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
        data = load_idx(name, directory)
    elif name in ("cifar10", "cifar100"):
        if directory is None:
            raise UsageError(
                f"{name} needs the directory that holds its batches: --data {name}:DIR"
                f" (valid forms: {VALID_FORMS})"
            )
        data = load_cifar(name, directory)
    elif name == "folder":
        if directory is None:
            raise UsageError(
                "folder needs a directory with train/ and test/ inside: --data folder:DIR"
            )
        return load_folder(directory, image_size, stream)
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
        data.train_x = resize_batch(data.train_x, image_size)
        data.test_x = resize_batch(data.test_x, image_size)
    return data
