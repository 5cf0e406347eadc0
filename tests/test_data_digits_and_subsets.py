"""The digits split and seeded subsets: every image keeps its own label, both splits hold values k/16 in
[0, 1], the seed decides the split and the subset, and a subset as large as its split is that split."""

import numpy as np
import pytest
import torch

from approxdrop.data import Dataset, DatasetInfo, load_dataset, load_digits, subset

sklearn = pytest.importorskip("sklearn.datasets")


def test_every_digits_image_keeps_its_own_label():
    """Images and labels are permuted together: each image's label is one scikit-learn gives that image."""
    raw = sklearn.load_digits()
    labels_of: dict[bytes, set[int]] = {}
    for image, label in zip(raw.images.astype(np.uint8), raw.target):
        labels_of.setdefault(image.tobytes(), set()).add(int(label))
    ds = load_digits()
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        pixels = (x * 16).round().to(torch.uint8).numpy()  # back to 0..16
        assert all(int(label) in labels_of[p.tobytes()] for p, label in zip(pixels, y))


def test_both_digits_splits_hold_multiples_of_one_sixteenth_up_to_one():
    ds = load_digits()
    for x in (ds.train_x, ds.test_x):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert torch.equal(x * 16, (x * 16).round())


def test_the_digits_seed_decides_the_split():
    a, again, b = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.train_y, again.train_y) and torch.equal(a.test_x, again.test_x)
    assert not torch.equal(a.train_y, b.train_y)
    assert len(b.train_y) == len(a.train_y) and int(b.train_y.bincount().sum()) == int(a.train_y.bincount().sum())


def numbered(train: int, test: int) -> Dataset:
    """A dataset whose example i has x = [i, i] and y = i (test examples numbered from 100)."""
    tr, te = torch.arange(train), torch.arange(100, 100 + test)
    info = DatasetInfo("numbered", "here", (1, 2), 200)
    return Dataset(tr[:, None].float().repeat(1, 2), tr, te[:, None].float().repeat(1, 2), te, info)


def test_a_subset_keeps_each_example_with_its_label():
    small = subset(numbered(50, 20), train_size=10, test_size=5, seed=3)
    assert small.train_y.shape == (10,) and small.test_y.shape == (5,)
    assert torch.equal(small.train_x[:, 0].long(), small.train_y)
    assert torch.equal(small.test_x[:, 1].long(), small.test_y)
    assert len(set(small.train_y.tolist())) == 10  # drawn without repeats


def test_the_subset_seed_decides_the_subset():
    data = numbered(50, 20)
    a, again, b = (subset(data, 10, 5, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train_y, again.train_y) and torch.equal(a.test_y, again.test_y)
    assert not torch.equal(a.train_y, b.train_y)
    digits = [load_dataset("digits", train_size=50, test_size=10, seed=s, verbose=False) for s in (0, 1)]
    assert not torch.equal(digits[0].train_y, digits[1].train_y)


def test_a_subset_as_large_as_its_split_is_the_split_itself():
    """train_size == len(train) keeps the split as it is (as None does), so the test subset drawn after it
    is the one train_size=None gives."""
    data = numbered(50, 20)
    whole = subset(data, train_size=50, test_size=5, seed=2)
    assert torch.equal(whole.train_y, data.train_y)
    assert torch.equal(whole.test_y, subset(data, train_size=None, test_size=5, seed=2).test_y)


def test_the_test_subset_of_a_seed_is_the_same_whatever_the_training_split_keeps():
    """It was drawn after the training subset from one generator: runs on 500 training images and on all of them
    were scored on different test images at the same seed."""
    tests = [load_dataset("digits", train_size=size, test_size=100, seed=0).test_x for size in (None, 500, 1000)]
    assert torch.equal(tests[0], tests[1]) and torch.equal(tests[0], tests[2])
    other = load_dataset("digits", train_size=500, test_size=100, seed=1).test_x
    assert not torch.equal(tests[0], other)
