"""MNIST-layout directories whose four IDX files disagree with each other, or whose test files (not only the
train files) are spoiled: each is unavailable naming the file, and what loads keeps the values, classes and
image shape the files hold. The header check of ``parse_idx`` on its own."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from approxdrop.data import IDX_FILES, DataUnavailable, load_dataset, parse_idx
from approxdrop.data import datasets as data

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = IDX_FILES


def idx_gz(array: np.ndarray, code: int = 0x08) -> bytes:
    """A gzipped IDX file holding ``array`` with element type ``code`` (0x08: uint8, 0x09: int8)."""
    dtype = {0x08: np.uint8, 0x09: np.int8}[code]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return gzip.compress(header + array.astype(dtype).tobytes())


def write_dir(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """The four MNIST-named files: small defaults (30 train, 10 test 4x4 images), ``arrays`` replacing some."""
    rng = np.random.default_rng(0)
    files = {
        TRAIN_IMAGES: rng.integers(0, 256, (30, 4, 4)),
        TRAIN_LABELS: rng.integers(0, 10, 30),
        TEST_IMAGES: rng.integers(0, 256, (10, 4, 4)),
        TEST_LABELS: rng.integers(0, 10, 10),
        **arrays,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in files.items():
        (directory / name).write_bytes(idx_gz(array))


def test_a_header_whose_second_byte_is_not_zero_is_not_an_idx_file():
    """The magic number is 0 0 dtype ndim: a second byte of 1 is another format, not an IDX file."""
    body = np.array([3], dtype=">i4").tobytes() + bytes([7, 8, 9])
    assert parse_idx(bytes([0, 0, 0x08, 1]) + body).tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(bytes([0, 1, 0x08, 1]) + body)


def test_an_idx_file_of_zero_images_is_unavailable_naming_it(tmp_path):
    write_dir(tmp_path, {TRAIN_IMAGES: np.zeros((0, 4, 4)), TRAIN_LABELS: np.zeros(0)})
    with pytest.raises(DataUnavailable, match=rf"mine: {tmp_path / TRAIN_IMAGES} holds an array of shape \(0, 4, 4\)"):
        data.load_idx_dir(tmp_path, "mine")


@pytest.mark.parametrize(
    "arrays",
    [
        {TRAIN_LABELS: np.zeros(29)},  # one label short: every image after the gap would get its neighbour's label
        {TEST_LABELS: np.zeros(11)},
        {TEST_IMAGES: np.zeros((10, 5, 5))},  # 25 pixels against the train images' 16
    ],
    ids=["train labels", "test labels", "test image size"],
)
def test_image_and_label_files_that_do_not_match_are_unavailable(tmp_path, arrays):
    write_dir(tmp_path, arrays)
    with pytest.raises(DataUnavailable, match=f"mine: image and label files in {tmp_path} do not match"):
        data.load_idx_dir(tmp_path, "mine")


def test_the_test_files_are_checked_like_the_train_files(tmp_path):
    """Signed images and negative labels in the *test* files are refused naming them, as in the train files."""
    write_dir(tmp_path, {})
    (tmp_path / TEST_IMAGES).write_bytes(idx_gz(np.full((10, 4, 4), -5), code=0x09))
    with pytest.raises(DataUnavailable, match=f"mine: {tmp_path / TEST_IMAGES} holds int8 images"):
        data.load_idx_dir(tmp_path, "mine")
    write_dir(tmp_path, {})
    (tmp_path / TEST_LABELS).write_bytes(idx_gz(np.array([1, 2, -1, 0, 0, 0, 0, 0, 0, 0]), code=0x09))
    with pytest.raises(DataUnavailable, match=rf"mine: {tmp_path / TEST_LABELS} holds a negative label \(-1\)"):
        data.load_idx_dir(tmp_path, "mine")


def test_test_images_are_scaled_to_0_1_as_the_train_images_are(tmp_path):
    test_images = np.arange(160).reshape(10, 4, 4)  # 0..159
    test_images[0, 0, 0] = 255
    write_dir(tmp_path, {TEST_IMAGES: test_images})
    ds = data.load_idx_dir(tmp_path, "mine")
    want = torch.tensor(test_images.reshape(10, 16) / 255.0, dtype=torch.float32)
    assert torch.equal(ds.test_x, want) and float(ds.test_x.max()) == 1.0


def test_classes_count_a_label_seen_only_in_the_test_file(tmp_path):
    """Train labels 0..2 and a test label 5: six classes, else the model's output layer misses class 5."""
    write_dir(tmp_path, {TRAIN_LABELS: np.arange(30) % 3, TEST_LABELS: np.array([5, 0, 1, 2, 0, 1, 2, 0, 1, 2])})
    ds = data.load_idx_dir(tmp_path, "mine")
    assert ds.info.classes == 6 and int(ds.test_y[0]) == 5


def test_a_non_square_dataset_reports_height_by_width_and_its_sizes(tmp_path, monkeypatch, capsys):
    """Images of 3 rows by 5 columns: image_shape (3, 5), and the line said gives 12 train / 6 test, 3x5."""
    rng = np.random.default_rng(1)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (12, 3, 5)),
        TRAIN_LABELS: np.arange(12) % 4,
        TEST_IMAGES: rng.integers(0, 256, (6, 3, 5)),
        TEST_LABELS: np.arange(6) % 4,
    }
    write_dir(tmp_path / "fashion", arrays)
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path / "fashion")
    ds = load_dataset("fashion-mnist")
    assert ds.info.image_shape == (3, 5) and ds.train_x.shape == (12, 15) and ds.test_x.shape == (6, 15)
    assert f"dataset: fashion-mnist from {tmp_path / 'fashion'}, 12 train / 6 test, 3x5 images, 4 classes" in (
        capsys.readouterr().out
    )
