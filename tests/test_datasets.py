"""Tests for freebies.data.datasets: every on-disk format, the search order, and each error."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakedata import (
    cifar_pickle,
    idx_bytes,
    write_cifar,
    write_folder,
    write_idx,
)
from freebies.data import ImageData, idx, load_dataset
from freebies.data.datasets import VALID_FORMS
from freebies.errors import UsageError

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@contextmanager
def usage_error(*patterns: str) -> Iterator[pytest.ExceptionInfo]:
    """pytest.raises(UsageError) whose one-line message matches every regex in ``patterns``."""
    with pytest.raises(UsageError, match=patterns[0]) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns[1:]:
        assert re.search(pattern, message), (pattern, message)


def esc(path: Path) -> str:
    return re.escape(str(path))


def check_shapes(data: ImageData, channels: int, h: int, w: int) -> None:
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.is_contiguous() and x.device.type == "cpu"
        assert x.shape == (len(y), channels, h, w)


def assert_same(data: ImageData, written) -> None:
    assert np.array_equal(data.train_x.numpy(), written.train_x)
    assert np.array_equal(data.train_y.numpy(), written.train_y)
    assert np.array_equal(data.test_x.numpy(), written.test_x)
    assert np.array_equal(data.test_y.numpy(), written.test_y)


@pytest.fixture
def no_default_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every default search place into an empty tmp tree; returns the new cwd."""
    monkeypatch.delenv("FREEBIES_DATA", raising=False)
    monkeypatch.setattr(idx, "SYSTEM_DATASETS", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# --------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_round_trip(tmp_path: Path, name: str, gz: bool) -> None:
    written = write_idx(tmp_path, n_train=96, n_test=40, h=28, w=24, gz=gz)
    data = load_dataset(f"{name}:{tmp_path}")
    check_shapes(data, 1, 28, 24)
    assert len(data.train_y) == 96 and len(data.test_y) == 40
    assert_same(data, written)
    expected = idx.FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    assert data.classes == expected
    assert data.classes[0] == ("T-shirt/top" if name == "fashion-mnist" else "0")


def test_fake_images_are_learnable(tmp_path: Path) -> None:
    # Nearest class mean must beat chance (10%) by far, so a tiny model can learn them too.
    data = load_dataset(f"fashion-mnist:{write_idx(tmp_path, n_train=200, n_test=100).root}")
    x, xt = data.train_x.flatten(1).float(), data.test_x.flatten(1).float()
    means = torch.stack([x[data.train_y == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == data.test_y).float().mean().item()
    assert accuracy > 0.9


def test_idx_image_size_resizes(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=20, n_test=10)
    data = load_dataset(f"fashion-mnist:{tmp_path}", image_size=14)
    check_shapes(data, 1, 14, 14)


def test_search_order(tmp_path: Path, no_default_dirs: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    places = [
        tmp_path / "env" / "fashion-mnist",  # $FREEBIES_DATA/fashion-mnist
        tmp_path / "system" / "fashion-mnist",  # /usr/share/datasets/fashion-mnist
        no_default_dirs / "data" / "fashion-mnist",
        no_default_dirs / "data" / "FashionMNIST" / "raw",
        home / ".cache" / "freebies" / "fashion-mnist",
    ]
    monkeypatch.setenv("FREEBIES_DATA", str(tmp_path / "env"))
    # A distinct train size per place tells which one was loaded.
    for i, place in enumerate(places):
        write_idx(place, n_train=20 + i, n_test=10, gz=i % 2 == 0)
    for i, place in enumerate(places):
        assert len(load_dataset("fashion-mnist").train_y) == 20 + i
        shutil.rmtree(place)
    with usage_error("fashion-mnist not found"):
        load_dataset("fashion-mnist")


def test_search_skips_partial_dir(tmp_path: Path, no_default_dirs: Path, monkeypatch) -> None:
    monkeypatch.setenv("FREEBIES_DATA", str(tmp_path / "env"))
    write_idx(tmp_path / "env" / "mnist", n_train=20, n_test=10)
    (tmp_path / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(no_default_dirs / "data" / "MNIST" / "raw", n_train=30, n_test=10)
    assert len(load_dataset("mnist").train_y) == 30


def test_missing_dataset_says_where_and_how(tmp_path: Path, no_default_dirs: Path) -> None:
    with usage_error("fashion-mnist not found", "make data", "--data fashion-mnist:DIR") as info:
        load_dataset("fashion-mnist")
    for place in (
        tmp_path / "system" / "fashion-mnist",
        Path("data") / "FashionMNIST" / "raw",
        tmp_path / "home" / ".cache" / "freebies" / "fashion-mnist",
    ):
        assert str(place) in str(info.value)
    with usage_error("mnist not found", "--data mnist:DIR", esc(Path("data") / "MNIST" / "raw")):
        load_dataset("mnist")


def test_idx_explicit_dir_missing(tmp_path: Path) -> None:
    with usage_error("does not exist", esc(tmp_path / "nope")):
        load_dataset(f"fashion-mnist:{tmp_path / 'nope'}")


def test_idx_explicit_dir_lacks_a_file(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=10, n_test=10)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with usage_error("lacks t10k-images-idx3-ubyte"):
        load_dataset(f"fashion-mnist:{tmp_path}")


@pytest.mark.parametrize("damage", ["half", "garbage", "gzip-header-then-garbage"])
def test_idx_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    write_idx(tmp_path, n_train=64, n_test=16)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(
        {
            "half": raw[: len(raw) // 2],
            "garbage": os.urandom(500),
            "gzip-header-then-garbage": raw[:10] + os.urandom(500),
        }[damage]
    )
    with usage_error(esc(path), "gzip"):
        load_dataset(f"fashion-mnist:{tmp_path}")


@pytest.mark.parametrize(
    "file, magic, expected",
    [("train-images-idx3-ubyte", 2049, 2051), ("t10k-labels-idx1-ubyte", 2051, 2049)],
)
def test_idx_wrong_magic(tmp_path: Path, file: str, magic: int, expected: int) -> None:
    write_idx(tmp_path, n_train=16, n_test=16, gz=False)
    path = tmp_path / file
    raw = bytearray(path.read_bytes())
    raw[:4] = magic.to_bytes(4, "big")
    path.write_bytes(bytes(raw))
    with usage_error(esc(path), f"magic number {magic}, expected {expected}"):
        load_dataset(f"fashion-mnist:{tmp_path}")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_shorter_than_header_says(tmp_path: Path, gz: bool) -> None:
    write_idx(tmp_path, n_train=16, n_test=16, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    short = path.read_bytes()[:-100]
    if gz:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(short))
    else:
        path.write_bytes(short)
    with usage_error(esc(path), r"16 x 28 x 28 = 12544 bytes .* holds 12444"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=64, n_test=16)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(60, np.uint8))))
    with usage_error("64 images", "60 labels", esc(labels)):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=64, n_test=16)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    values = np.full(16, 3, np.uint8)
    values[5] = 12
    labels.write_bytes(gzip.compress(idx_bytes(values)))
    with usage_error("label 12", esc(labels), "0..9"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_idx_writer_classes_beyond_ten_are_refused(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=48, n_test=24, classes=12)
    with usage_error(r"label 1[01]"):
        load_dataset(f"mnist:{tmp_path}")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    data = load_dataset(f"fashion-mnist:{REAL_FASHION_MNIST}")
    check_shapes(data, 1, 28, 28)
    assert data.train_x.shape == (60000, 1, 28, 28)
    assert data.test_x.shape == (10000, 1, 28, 28)
    for y in (data.train_y, data.test_y):
        assert y.min() == 0 and y.max() == 9
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert data.classes[9] == "Ankle boot"


# --------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("style", ["py2", "py3-2", "py3-5"])
@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path: Path, kind: str, style: str) -> None:
    written = write_cifar(tmp_path, kind, n_train=60, n_test=20, style=style)
    # DIR may be the extracted folder itself or its parent.
    for directory in (written.root, tmp_path):
        data = load_dataset(f"{kind}:{directory}")
        check_shapes(data, 3, 32, 32)
        assert_same(data, written)
        assert data.classes == written.classes
        assert len(data.classes) == (10 if kind == "cifar10" else 100)


def test_cifar_pixel_layout_is_planar_rgb(tmp_path: Path) -> None:
    # One image whose row is the R plane (all 10), then G (all 20), then B (all 30).
    root = write_cifar(tmp_path, "cifar10", n_train=5, n_test=1).root
    row = np.repeat(np.array([10, 20, 30], np.uint8), 1024)[None]
    batch = {b"data": row, b"labels": [7], b"batch_label": b"x", b"filenames": [b"a.png"]}
    (root / "test_batch").write_bytes(cifar_pickle(batch))
    data = load_dataset(f"cifar10:{root}")
    assert data.test_x[0, :, 5, 9].tolist() == [10, 20, 30]
    assert data.test_y.tolist() == [7]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_code_in_pickle(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, "cifar10", n_train=10, n_test=5).root
    marker = tmp_path / "pwned"
    path = root / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with usage_error(r"refusing to unpickle (os|posix)\.system", esc(path)):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


@pytest.mark.parametrize("kind, file", [("cifar10", "data_batch_3"), ("cifar100", "meta")])
def test_cifar_missing_file(tmp_path: Path, kind: str, file: str) -> None:
    root = write_cifar(tmp_path, kind, n_train=10, n_test=5).root
    (root / file).unlink()
    with usage_error(esc(root / file) + " is missing"):
        load_dataset(f"{kind}:{tmp_path}")


def test_cifar_dir_missing_or_empty(tmp_path: Path) -> None:
    with usage_error("does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    with usage_error(esc(tmp_path / "data_batch_1") + " is missing", "cifar-10-batches-py"):
        load_dataset(f"cifar10:{tmp_path}")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_cifar_corrupt_pickle(tmp_path: Path, damage: str) -> None:
    root = write_cifar(tmp_path, "cifar10", n_train=50, n_test=10).root
    path = root / "test_batch"
    raw = path.read_bytes()
    path.write_bytes(b"\x99garbage" * 20 if damage == "garbage" else raw[: len(raw) // 2])
    with usage_error("not a readable CIFAR pickle", esc(path)):
        load_dataset(f"cifar10:{root}")


@pytest.mark.parametrize("bad", [-1, 10])
def test_cifar_label_out_of_range(tmp_path: Path, bad: int) -> None:
    root = write_cifar(tmp_path, "cifar10", n_train=10, n_test=2).root
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, bad]}
    (root / "test_batch").write_bytes(cifar_pickle(batch))
    with usage_error(f"label {bad}", esc(root / "test_batch")):
        load_dataset(f"cifar10:{root}")


def test_cifar_wrong_array_shape(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, "cifar100", n_train=10, n_test=2).root
    batch = {b"data": np.zeros((2, 1000), np.uint8), b"fine_labels": [3, 4]}
    (root / "test").write_bytes(cifar_pickle(batch))
    with usage_error(r"shape \(N, 3072\)", esc(root / "test")):
        load_dataset(f"cifar100:{root}")


# --------------------------------------------------------------------------------------------
# Image folders


def test_folder_round_trip_rgb_non_square(tmp_path: Path) -> None:
    written = write_folder(tmp_path, classes=("dog", "cat", "bird"), n_per_class=5, size=(20, 30))
    data = load_dataset(f"folder:{tmp_path}")
    check_shapes(data, 3, 20, 30)
    assert data.classes == ["bird", "cat", "dog"]
    assert data.train_y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert_same(data, written)


def test_folder_grayscale_keeps_one_channel(tmp_path: Path) -> None:
    written = write_folder(tmp_path, mode="L", n_per_class=4, size=(12, 10))
    data = load_dataset(f"folder:{tmp_path}")
    check_shapes(data, 1, 12, 10)
    assert_same(data, written)


def test_folder_mixed_gray_and_rgb_becomes_rgb(tmp_path: Path) -> None:
    written = write_folder(tmp_path, mode="L", n_per_class=4, size=(12, 12))
    color = np.zeros((12, 12, 3), np.uint8)
    color[..., 2] = 200
    Image.fromarray(color, "RGB").save(tmp_path / "test" / "dog" / "0000.png")
    data = load_dataset(f"folder:{tmp_path}")
    check_shapes(data, 3, 12, 12)
    # Gray images are repeated over the three channels; the colour one is kept as is.
    assert np.array_equal(data.train_x[0].numpy(), np.repeat(written.train_x[0], 3, axis=0))
    assert data.test_x[4, :, 0, 0].tolist() == [0, 0, 200]


def test_folder_16_bit_gray_is_scaled(tmp_path: Path) -> None:
    write_folder(tmp_path, mode="L", n_per_class=2, size=(8, 8))
    wide = np.full((8, 8), 65535, np.uint16)
    wide[0, 0] = 257 * 100
    Image.fromarray(wide).save(tmp_path / "train" / "cat" / "0000.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.train_x.shape[1] == 1
    assert data.train_x[0, 0, 0, :2].tolist() == [100, 255]


def test_folder_val_extensions_and_junk(tmp_path: Path) -> None:
    written = write_folder(
        tmp_path, n_per_class=3, size=(8, 8), split_names=("train", "val"), ext="BMP"
    )
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    data = load_dataset(f"folder:{tmp_path}")
    assert_same(data, written)


def test_folder_test_may_lack_a_class(tmp_path: Path) -> None:
    write_folder(tmp_path, classes=("a", "b", "c"), n_per_class=2, size=(8, 8))
    shutil.rmtree(tmp_path / "test" / "b")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.classes == ["a", "b", "c"]
    assert data.test_y.tolist() == [0, 0, 2, 2]


def test_folder_image_size_resizes(tmp_path: Path) -> None:
    from torchvision.transforms.v2 import functional as F

    written = write_folder(tmp_path, n_per_class=3, size=(16, 16))
    odd = np.arange(24 * 20 * 3, dtype=np.uint8).reshape(24, 20, 3)
    Image.fromarray(odd, "RGB").save(tmp_path / "train" / "dog" / "0001.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    check_shapes(data, 3, 16, 16)
    assert np.array_equal(data.train_x[0].numpy(), written.train_x[0])  # already 16x16
    expected = F.resize(torch.from_numpy(odd).permute(2, 0, 1), [16, 16], antialias=True)
    assert torch.equal(data.train_x[4], expected)


def test_folder_sizes_differ_without_image_size(tmp_path: Path) -> None:
    write_folder(tmp_path, n_per_class=3, size=(16, 16))
    odd = tmp_path / "test" / "dog" / "0002.png"
    Image.new("RGB", (20, 24)).save(odd)
    first = tmp_path / "train" / "cat" / "0000.png"
    with usage_error("set data.image_size=N", esc(first), "16x16", esc(odd), "20x24"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_dir_missing(tmp_path: Path) -> None:
    with usage_error("does not exist", esc(tmp_path / "nope")):
        load_dataset(f"folder:{tmp_path / 'nope'}")


def test_folder_train_missing(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    with usage_error("no train/ folder", esc(tmp_path)):
        load_dataset(f"folder:{tmp_path}")


def test_folder_test_missing(tmp_path: Path) -> None:
    write_folder(tmp_path, n_per_class=2, size=(8, 8), split_names=("train", "other"))
    with usage_error("neither test/ nor val/"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_no_class_subfolders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "train" / "loose.png")
    with usage_error("no class subfolders", esc(tmp_path / "train")):
        load_dataset(f"folder:{tmp_path}")


def test_folder_class_without_images(tmp_path: Path) -> None:
    write_folder(tmp_path, n_per_class=2, size=(8, 8))
    empty = tmp_path / "train" / "emu"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with usage_error(esc(empty), "holds no images"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_test_class_not_in_train(tmp_path: Path) -> None:
    write_folder(tmp_path, n_per_class=2, size=(8, 8))
    (tmp_path / "test" / "cats").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "test" / "cats" / "x.png")
    with usage_error("'cats'", "did you mean 'cat'"):
        load_dataset(f"folder:{tmp_path}")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_folder_corrupt_image(tmp_path: Path, damage: str) -> None:
    write_folder(tmp_path, n_per_class=3, size=(32, 32))
    path = tmp_path / "train" / "dog" / "0001.png"
    raw = path.read_bytes()
    path.write_bytes(b"definitely not a png" if damage == "garbage" else raw[: len(raw) // 2])
    with usage_error("cannot read image", esc(path)):
        load_dataset(f"folder:{tmp_path}")


# --------------------------------------------------------------------------------------------
# Spec parsing


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("fashion_mnist", "did you mean 'fashion-mnist'"),
        ("imagenet:/x", "unknown dataset 'imagenet:/x'"),
        ("cifar10", "cifar10:DIR"),
        ("folder", "folder:DIR"),
        ("mnist:", "nothing after ':'"),
    ],
)
def test_bad_spec(spec: str, pattern: str) -> None:
    with usage_error(pattern):
        load_dataset(spec)


def test_unknown_spec_lists_valid_forms() -> None:
    with usage_error(re.escape(VALID_FORMS)):
        load_dataset("svhn")


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size(size) -> None:
    with usage_error("image_size"):
        load_dataset("folder:/nonexistent", image_size=size)
