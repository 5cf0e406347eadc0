"""The pydoc corpus on help texts of known size (``pydoc_lines`` replaced): lines of equal length split exactly
90/5/5, and a vocabulary larger than ``PYDOC_MAX_VOCAB`` is capped by default."""

import pytest

from approxdrop.data import corpus
from approxdrop.data.corpus import EOS, PYDOC_MAX_VOCAB, load_corpus


def test_twenty_equal_lines_split_90_5_5_exactly(monkeypatch):
    """20 lines of 4 words and <eos>: 100 tokens, 18 lines (90 tokens) train, then one line each."""
    lines = [f"w{i} x{i} y{i} z{i}" for i in range(20)]
    monkeypatch.setattr(corpus, "pydoc_lines", lambda: lines)
    pydoc = load_corpus("pydoc", verbose=False)
    assert (pydoc.info.train_tokens, pydoc.info.valid_tokens, pydoc.info.test_tokens) == (90, 5, 5)
    assert pydoc.vocab.decode(pydoc.valid[:1]) == ["<unk>"] and pydoc.vocab.decode(pydoc.train[-5:]) == [
        "w17", "x17", "y17", "z17", EOS,
    ]  # fmt: skip


@pytest.mark.parametrize("max_vocab, size", [(None, PYDOC_MAX_VOCAB), (300, 300)])
def test_a_pydoc_vocabulary_past_the_cap_is_capped_by_default(monkeypatch, max_vocab, size):
    """max_vocab None caps pydoc at PYDOC_MAX_VOCAB words (the two specials included)."""
    words = [f"word{i}" for i in range(PYDOC_MAX_VOCAB + 2000)]  # the train split's 90% holds > 10,800 of them
    lines = [" ".join(words[i : i + 10]) for i in range(0, len(words), 10)]
    monkeypatch.setattr(corpus, "pydoc_lines", lambda: lines)
    pydoc = load_corpus("pydoc", max_vocab=max_vocab, verbose=False)
    assert len(pydoc.vocab) == size == pydoc.info.vocab_size and int(pydoc.train.max()) == size - 1
