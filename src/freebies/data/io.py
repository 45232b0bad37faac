"""What every reader shares: image decoding, a thread-parallel map, atomic text writes, and
the one-line form of an exception for error messages.

Decoding is PIL's. ``torchvision.io.decode_image`` was checked to give bit-identical pixels for
8-bit PNG (gray, gray+alpha, 1-bit, RGB, RGBA, palette with and without transparency) and for
JPEG (gray, RGB, CMYK; all BCCD and aerial-drone images), but torchvision 0.29 deprecates its
image decoding in favour of TorchCodec, and it has no header-only read (the folder reader
sizes its output from headers) nor BMP / TIFF, so PIL would stay for those anyway.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freebies.errors import UsageError

__all__ = ["decode", "is_gray", "one_line", "parallel_map", "read_header", "write_text"]

# PIL modes that carry a single gray channel (LA's alpha is dropped).
_GRAY_MODES = {"1", "L", "LA", "I", "F"}


def one_line(e: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def write_text(path: Path, text: str) -> None:
    """Atomic text write (temporary file, then rename), for files rewritten while in use; the
    temporary name carries the pid, so processes sharing a folder never write one file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
    """``[fn(x) for x in items]`` on up to 8 threads, in order."""
    # Image decoding, zlib and torch's resize release the GIL, so threads give a real speed-up.
    workers = min(8, os.cpu_count() or 1)
    if workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def is_gray(mode: str) -> bool:
    """Whether a PIL image mode holds one gray channel."""
    return mode in _GRAY_MODES or mode.startswith("I;16")


def _unreadable(path: Path, e: BaseException, fix: str) -> UsageError:
    return UsageError(f"cannot read image {path} ({type(e).__name__}: {one_line(e)}); {fix}")


def read_header(path: Path, fix: str = "delete or replace it") -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode of an image, from its header only (cheap)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e, fix) from None


def decode(path: Path, channels: int = 3, fix: str = "delete or replace it") -> torch.Tensor:
    """Decode one image to uint8 ``(channels, H, W)``; gray is repeated for 3 channels.

    ``channels`` is 3 (RGB, alpha dropped) or 1 (gray). A file that cannot be decoded raises a
    one-line :class:`UsageError` ending in ``fix``. EXIF orientation is not applied, as COCO's
    own tools do not.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
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
                if channels == 1:  # header said gray but the frame decoded as colour
                    gray = np.asarray(im.convert("L"))
                else:
                    rgb = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
                    return torch.from_numpy(np.array(rgb, order="C"))  # a writable copy
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e, fix) from None
    return torch.from_numpy(np.array(np.broadcast_to(gray, (channels, *gray.shape))))


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def image_paths(inputs: list[str]) -> list[Path]:
    """Image files named by `inputs`: files, folders (every image below, sorted) and glob
    patterns (`**` descends), each file once in the order given. An input that names no
    image is a one-line UsageError."""
    found: dict[Path, None] = {}
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            hits = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            hits = [path]
        else:
            hits = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        hits = [p for p in hits if p.is_file() and not p.name.startswith(".")]
        if not hits:
            raise UsageError(f"{spec}: no image file there; give image files, folders or globs")
        found.update(dict.fromkeys(hits))
    return list(found)


def output_stems(paths: list[Path]) -> list[Path]:
    """A distinct relative name per image, to which an output's suffix is appended: its path
    below the inputs' common folder without the suffix (`a/img`), or with it where two images
    would share that name (`a/img.jpg`, `a/img.png`), so no output overwrites another."""
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    rel = [p.relative_to(root) for p in resolved]
    bare = [r.parent / r.stem for r in rel]
    clash = {b for b in bare if bare.count(b) > 1}
    return [r if b in clash else b for r, b in zip(rel, bare, strict=True)]
