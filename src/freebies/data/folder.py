"""Image folders: ``DIR/train`` and ``DIR/test`` (or ``DIR/val``), one subfolder per class.

Loaded into memory as one uint8 tensor, or left on disk (:class:`FolderImages`) and decoded
batch by batch when the folder is too large for memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from freebies.data.images import ImageData, resize_batch
from freebies.data.io import IMAGE_EXTENSIONS, decode, is_gray, parallel_map, read_header
from freebies.errors import UsageError, nearest

__all__ = ["FolderImages", "load_folder"]


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


def load_folder(directory: Path, image_size: int | None, stream: bool = False) -> ImageData:
    """The folder at ``directory``; ``image_size`` resizes, ``stream`` leaves images on disk."""
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
    headers = parallel_map(read_header, all_paths)
    channels = 1 if all(is_gray(mode) for _, mode in headers) else 3
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
    train_out = torch.empty((n, channels, height, width), dtype=torch.uint8)
    test_out = torch.empty((len(test_paths), channels, height, width), dtype=torch.uint8)

    def fill(i: int) -> None:
        image = decode(all_paths[i], channels)  # (C, h, w)
        if tuple(image.shape[1:]) != (height, width):
            if image_size is None:  # the header lied about the size
                raise UsageError(
                    f"{all_paths[i]} decodes to {image.shape[2]}x{image.shape[1]} but"
                    f" other images are {width}x{height}; set data.image_size=N to resize all"
                )
            image = resize_batch(image[None], image_size)[0]
        if i < n:
            train_out[i] = image
        else:
            test_out[i - n] = image

    parallel_map(fill, range(len(all_paths)))
    return ImageData(
        train_x=train_out,
        train_y=torch.tensor(train_labels, dtype=torch.int64),
        test_x=test_out,
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
        x = decode(self.paths[index], self.channels)
        if tuple(x.shape[1:]) != (self.height, self.width):
            from torchvision.transforms.v2 import functional as F

            x = F.resize(x, [self.height, self.width], antialias=True)
        return x
