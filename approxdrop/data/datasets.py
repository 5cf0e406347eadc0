"""Datasets for the labs, as flattened float tensors in [0, 1] (docs/design.md#data).

``load_dataset("auto")`` takes the first that works, and prints one line saying which:

1. **MNIST**: the four IDX ``.gz`` files in the cache directory, downloaded when missing from
   ``base_url`` (default ``MNIST_URL``, or ``$APPROXDROP_MNIST_URL``) and checked against their
   published MD5 sums. Cache: ``$APPROXDROP_DATA_DIR``, else ``$XDG_CACHE_HOME/approxdrop/data``,
   else ``~/.cache/approxdrop/data``. A download goes to a temporary file in the same directory
   and is renamed into place only once its checksum matches: the cache never holds a partial file
   under a data file's name (the temporary file of a killed download is removed by the next download).
2. **Fashion-MNIST** (same IDX format) from ``FASHION_DIR``, the Debian package ``dataset-fashion-mnist``.
3. **digits**: scikit-learn's bundled 8x8 digits (1797 images), always there.

A file that cannot be read (truncated, not gzip, corrupt, not IDX, the wrong size or shape) makes
its dataset unavailable: ``DataUnavailable`` naming the file. Asking for one by name (``"mnist"``,
``"fashion-mnist"``, ``"digits"``) raises ``DataUnavailable`` with the reason instead of falling back.
Nothing here touches the network at import.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._env import check_int
from .download import DataUnavailable, data_dir, fetch_files, load_first_available

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IDX_FILES = tuple(MNIST_MD5)  # train images, train labels, test images, test labels
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("auto", "mnist", "fashion-mnist", "digits")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset came from and what it holds."""

    name: str  # "mnist", "fashion-mnist" or "digits"
    source: str  # a directory, a URL or "scikit-learn"
    image_shape: tuple[int, int]
    classes: int


class Dataset(NamedTuple):
    """``train_x`` Float[N, H*W] in [0, 1], ``train_y`` Long[N], the same for test, and ``info``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo


def parse_idx(data: bytes) -> np.ndarray:
    """Decode one IDX file (uncompressed bytes): magic ``0 0 dtype ndim``, big-endian int32 dims, data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"not an IDX file (header {data[:4]!r})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = 4 + 4 * ndim
    if len(data) - body != int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"IDX file of shape {dims} has {len(data) - body} data bytes")
    return np.frombuffer(data, dtype, offset=body).reshape(dims)


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped IDX file."""
    with gzip.open(path, "rb") as f:
        return parse_idx(f.read())


def _read_idx_file(path: Path, name: str, ndim: int) -> np.ndarray:
    """``read_idx_gz(path)``, an array of ``ndim`` dimensions with at least one entry; DataUnavailable
    naming the file when it cannot be read (truncated, not gzip, corrupt, not IDX, wrong size)."""
    try:
        array = read_idx_gz(path)
    except (OSError, EOFError, zlib.error, ValueError) as err:  # BadGzipFile is an OSError
        raise DataUnavailable(f"{name}: cannot read {path} ({type(err).__name__}: {err})") from err
    if array.ndim != ndim or array.size == 0:
        raise DataUnavailable(
            f"{name}: {path} holds an array of shape {array.shape}, expected a non-empty {ndim}-D one"
        )
    return array


def _check_labels(labels: np.ndarray, path: Path, name: str) -> None:
    """DataUnavailable naming the file unless ``labels`` are class indices: integers >= 0 (an IDX label file
    may hold signed or floating-point values; a negative index would wrap around in the loss)."""
    if labels.dtype.kind not in "iu":
        raise DataUnavailable(f"{name}: {path} holds {labels.dtype} labels, expected integer class indices")
    if labels.min() < 0:
        raise DataUnavailable(f"{name}: {path} holds a negative label ({int(labels.min())}); classes start at 0")


def _check_images(images: np.ndarray, path: Path, name: str) -> None:
    """DataUnavailable naming the file unless ``images`` are unsigned bytes (0..255, scaled to [0, 1] as the
    Dataset promises): an IDX image file may hold signed or floating-point values, which would fall outside."""
    if images.dtype != np.uint8:
        raise DataUnavailable(f"{name}: {path} holds {images.dtype} images, expected unsigned bytes (0..255)")


def fetch_mnist(
    root: Path | None = None,
    base_url: str | None = None,
    checksums: dict[str, str] | None = None,
    download_ok: bool = True,
) -> Path:
    """The directory holding the four MNIST files with matching checksums, downloading what is
    missing or corrupt (unless ``download_ok`` is False)."""
    root = Path(root) if root is not None else data_dir() / "mnist"
    base_url = base_url or os.environ.get("APPROXDROP_MNIST_URL") or MNIST_URL
    return fetch_files(root, base_url, checksums or MNIST_MD5, download_ok)


def _to_float(images: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / scale)  # [N, H*W]


def load_idx_dir(directory: Path, name: str, source: str | None = None) -> Dataset:
    """An MNIST-layout directory (the four ``IDX_FILES``) as a Dataset."""
    paths = [Path(directory) / f for f in IDX_FILES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataUnavailable(f"{name}: missing {', '.join(missing)}")
    train_x, train_y, test_x, test_y = (_read_idx_file(p, name, ndim) for p, ndim in zip(paths, (3, 1, 3, 1)))
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or train_x.shape[1:] != test_x.shape[1:]:
        raise DataUnavailable(f"{name}: image and label files in {directory} do not match")
    for path, images in ((paths[0], train_x), (paths[2], test_x)):
        _check_images(images, path, name)
    for path, labels in ((paths[1], train_y), (paths[3], test_y)):
        _check_labels(labels, path, name)
    classes = int(max(train_y.max(), test_y.max())) + 1
    return Dataset(
        _to_float(train_x, 255.0),
        torch.from_numpy(train_y.astype(np.int64)),
        _to_float(test_x, 255.0),
        torch.from_numpy(test_y.astype(np.int64)),
        DatasetInfo(name, source or str(directory), tuple(train_x.shape[1:]), classes),
    )


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16 scaled to [0, 1]), split by a seeded permutation."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as err:
        raise DataUnavailable("digits need scikit-learn: pip install scikit-learn") from err
    digits = sk_digits()
    order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(seed)).numpy()
    x, y = digits.images[order], digits.target[order].astype(np.int64)  # [N, 8, 8], [N]
    cut = len(y) - int(round(test_fraction * len(y)))
    info = DatasetInfo("digits", "scikit-learn", (8, 8), 10)
    return Dataset(
        _to_float(x[:cut], 16.0), torch.from_numpy(y[:cut]), _to_float(x[cut:], 16.0), torch.from_numpy(y[cut:]), info
    )


def _check_sizes(train_size: object, test_size: object) -> None:
    """ValueError unless each size is None or an int >= 1."""
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None:
            check_int(name, size, 1)


def subset(data: Dataset, train_size: int | None = None, test_size: int | None = None, seed: int = 0) -> Dataset:
    """A seeded random subset (sizes None or larger than the split keep everything; at least 1). Each split draws
    from its own generator: the test subset of a seed is the same whatever the training split keeps, so runs on
    more or less training data are scored on the same test examples."""
    _check_sizes(train_size, test_size)

    def take(x, y, size):
        if size is None or size >= len(y):
            return x, y
        index = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
        return x[index], y[index]

    return Dataset(*take(data.train_x, data.train_y, train_size), *take(data.test_x, data.test_y, test_size), data.info)


def _load_one(name: str, download_ok: bool, root, base_url, checksums) -> Dataset:
    if name == "mnist":
        directory = fetch_mnist(root, base_url, checksums, download_ok)
        return load_idx_dir(directory, "mnist")
    if name == "fashion-mnist":
        return load_idx_dir(FASHION_DIR, "fashion-mnist")
    return load_digits()


def load_dataset(
    name: str = "auto",
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    download: bool = True,
    root: Path | None = None,
    base_url: str | None = None,
    checksums: dict[str, str] | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> Dataset:
    """Load a dataset by name, or ``"auto"``: MNIST, then Fashion-MNIST, then digits (module docstring).

    Args:
        name: one of ``NAMES``.
        train_size, test_size: keep a seeded random subset of this many examples (CI mode).
        download: allow MNIST downloads (False: only what the cache holds).
        root, base_url, checksums: MNIST cache directory, mirror and MD5 sums (tests point these
            at a local server).
        verbose: print one line per choice (what was loaded, or why a fallback was taken).
    """
    if name not in NAMES:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    _check_sizes(train_size, test_size)  # before anything loads
    order = ["mnist", "fashion-mnist", "digits"] if name == "auto" else [name]

    def load(candidate: str) -> Dataset:
        return subset(_load_one(candidate, download, root, base_url, checksums), train_size, test_size, seed)

    def describe(data: Dataset) -> str:
        info = data.info
        return (
            f"dataset: {info.name} from {info.source}, {len(data.train_y)} train / {len(data.test_y)} test, "
            f"{info.image_shape[0]}x{info.image_shape[1]} images, {info.classes} classes"
        )

    return load_first_available(order, load, describe, verbose)
