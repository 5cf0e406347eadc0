"""Data for the labs and studies: image datasets (MNIST, Fashion-MNIST, digits), text corpora (Penn
Treebank, Python's help texts), and the checked, atomic downloads behind them."""

from .corpus import (
    Corpus,
    CorpusInfo,
    Vocabulary,
    batchify,
    bptt_batches,
    load_corpus,
    load_ptb,
    load_pydoc,
)
from .datasets import (
    FASHION_DIR,
    IDX_FILES,
    MNIST_MD5,
    MNIST_URL,
    NAMES,
    Dataset,
    DatasetInfo,
    fetch_mnist,
    load_dataset,
    load_digits,
    load_idx_dir,
    parse_idx,
    subset,
)
from .download import DataUnavailable, data_dir, download, fetch_files, load_first_available, md5sum

__all__ = [
    "FASHION_DIR",
    "IDX_FILES",
    "MNIST_MD5",
    "MNIST_URL",
    "NAMES",
    "Corpus",
    "CorpusInfo",
    "DataUnavailable",
    "Dataset",
    "DatasetInfo",
    "Vocabulary",
    "batchify",
    "bptt_batches",
    "data_dir",
    "download",
    "fetch_files",
    "fetch_mnist",
    "load_corpus",
    "load_dataset",
    "load_digits",
    "load_first_available",
    "load_idx_dir",
    "load_ptb",
    "load_pydoc",
    "md5sum",
    "parse_idx",
    "subset",
]
