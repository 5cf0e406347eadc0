"""Language-modelling corpora: the PTB download path against a local HTTP server (success, cache,
corrupt cache, bad checksum, unreadable files, HTTP 500, connection refused, fallback), the offline
pydoc corpus, the vocabulary, and batching for truncated backpropagation through time."""

import hashlib
import http.server
import os
import random
import socket
import threading
from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from approxdrop.data import DataUnavailable, corpus
from approxdrop.data.corpus import (
    EOS,
    NAMES,
    PTB_MD5,
    UNK,
    Vocabulary,
    batchify,
    bptt_batches,
    load_corpus,
    pydoc_lines,
    tokenize_lines,
)

WORDS = "the of and to a in is that for it as was with on by he at from his an".split()
TRAIN, VALID, TEST = PTB_MD5  # the file names


def ptb_text(lines: int, seed: int, extra: str = "") -> str:
    """PTB-like text: a leading space, words from WORDS (frequent ones first), ``<unk>`` and ``N``;
    ``extra`` opens the first line."""
    rng = random.Random(seed)
    vocab = [*WORDS, "<unk>", "N"]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    body = "".join(" " + " ".join(rng.choices(vocab, weights, k=rng.randint(3, 12))) + " \n" for _ in range(lines))
    return f" {extra}{body}"


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server API)
        self.server.requests.append(self.path)
        if self.server.fail_with is not None:
            self.send_error(self.server.fail_with)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    """Every test gets an empty cache directory and no mirror from the environment."""
    monkeypatch.setenv("APPROXDROP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("APPROXDROP_PTB_URL", raising=False)
    return tmp_path / "data" / "ptb"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving three small ptb.*.txt files whose MD5 sums replace
    PTB_MD5; yields (base_url, served directory, httpd) with ``httpd.requests`` the paths asked for."""
    served = tmp_path / "served"
    served.mkdir()
    texts = {TRAIN: ptb_text(60, 0), VALID: ptb_text(8, 1, "zebra"), TEST: ptb_text(8, 2, "yak")}
    for name, text in texts.items():
        (served / name).write_text(text, encoding="utf-8")
    monkeypatch.setattr(
        corpus, "PTB_MD5", {name: hashlib.md5(text.encode()).hexdigest() for name, text in texts.items()}
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    httpd.fail_with, httpd.requests = None, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, httpd
    httpd.shutdown()
    httpd.server_close()


def test_ptb_lines_end_at_newlines_only(cache, monkeypatch):
    """A form feed, U+2028 or U+0085 inside a line separates words but ends no line (str.splitlines would
    add an <eos> at each); CRLF and LF end lines alike, as reading the file line by line does."""
    text = " a b\x0cc d \r\n x y\u2028z \n p\x85q \n"
    cache.mkdir(parents=True)
    for name in PTB_MD5:
        (cache / name).write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(corpus, "PTB_MD5", {name: hashlib.md5(text.encode("utf-8")).hexdigest() for name in PTB_MD5})
    ptb = corpus.load_ptb(cache, download_ok=False)
    assert ptb.vocab.decode(ptb.train) == ["a", "b", "c", "d", EOS, "x", "y", "z", EOS, "p", "q", EOS]


@pytest.fixture(scope="module")
def pydoc():
    return load_corpus("pydoc", verbose=False)


def test_ptb_is_downloaded_verified_cached_and_then_read_from_the_cache(server, cache, capsys):
    url, served, httpd = server
    ptb = load_corpus("ptb", base_url=url)
    assert sorted(httpd.requests) == sorted("/" + name for name in PTB_MD5)
    assert sorted(os.listdir(cache)) == sorted(PTB_MD5)  # no temporary file left
    assert ptb.info.name == "ptb" and ptb.info.source == str(cache) and ptb.info.vocab_size == len(ptb.vocab)
    for split, name in zip(ptb[:3], PTB_MD5):
        tokens = tokenize_lines((served / name).read_text().splitlines())
        assert split.dtype == torch.long and split.shape == (len(tokens),)
        assert ptb.vocab.decode(split) == [t if t in ptb.vocab.words else UNK for t in tokens]
    assert (ptb.info.train_tokens, ptb.info.valid_tokens, ptb.info.test_tokens) == tuple(map(len, ptb[:3]))
    assert set(ptb.vocab.words) == set(WORDS) | {UNK, EOS, "N"}  # from train only: no zebra, no yak
    train_tokens = tokenize_lines((served / TRAIN).read_text().splitlines())
    assert ptb.vocab.index(UNK) == 0 and int((ptb.train == 0).sum()) == train_tokens.count(UNK) > 0  # PTB's own <unk>
    assert (served / VALID).read_text().startswith(" zebra") and int(ptb.valid[0]) == 0  # unseen in train
    assert capsys.readouterr().out.startswith("corpus: ptb from ")
    httpd.fail_with = 500  # from now on the cache must be enough
    again = load_corpus("ptb", base_url=url, verbose=False)
    assert len(httpd.requests) == 3 and all(torch.equal(a, b) for a, b in zip(again[:3], ptb[:3]))
    assert load_corpus("auto", base_url=url, download=False, verbose=False).info.name == "ptb"


def test_a_corrupt_cached_file_is_downloaded_again(server, cache):
    url, served, httpd = server
    load_corpus("ptb", base_url=url, verbose=False)
    (cache / VALID).write_text(" garbage \n")
    ptb = load_corpus("ptb", base_url=url, verbose=False)
    assert httpd.requests[3:] == ["/" + VALID]
    assert (cache / VALID).read_bytes() == (served / VALID).read_bytes()
    assert "garbage" not in ptb.vocab.decode(ptb.valid)


def test_a_checksum_mismatch_leaves_nothing_in_the_cache(server, cache, monkeypatch):
    url, _, _ = server
    monkeypatch.setitem(corpus.PTB_MD5, VALID, "0" * 32)
    with pytest.raises(DataUnavailable, match="checksum mismatch.*ptb.valid.txt"):
        load_corpus("ptb", base_url=url)
    assert os.listdir(cache) == [TRAIN]  # the train file came before and was fine; nothing else


@pytest.mark.parametrize(
    "content, message",
    [
        (b" the cat \xff\xfe sat \n", "cannot read .*ptb.valid.txt .*UnicodeDecodeError"),
        (b" \n\n", ".*ptb.valid.txt holds no words"),
    ],
)
def test_an_unreadable_ptb_file_with_a_matching_checksum_is_unavailable_and_auto_falls_back(
    server, cache, monkeypatch, content, message, capsys
):
    url, served, _ = server
    (served / VALID).write_bytes(content)
    monkeypatch.setitem(corpus.PTB_MD5, VALID, hashlib.md5(content).hexdigest())  # the mirror serves it as valid
    with pytest.raises(DataUnavailable, match=f"ptb: {message}"):
        load_corpus("ptb", base_url=url, verbose=False)
    assert load_corpus("auto", base_url=url).info.name == "pydoc"
    out = capsys.readouterr().out
    assert str(cache / VALID) in out and "falling back to pydoc" in out


def test_a_directory_in_place_of_a_cached_ptb_file_is_unavailable_not_a_crash(server, cache):
    url, _, _ = server
    (cache / TRAIN).mkdir(parents=True)  # cannot be read, nor replaced by the download
    with pytest.raises(DataUnavailable, match="could not download"):
        load_corpus("ptb", base_url=url, verbose=False)


@pytest.mark.parametrize("failure", ["http 500", "connection refused"])
def test_a_failing_server_raises_a_clear_error_and_auto_falls_back_to_pydoc(server, cache, failure, capsys):
    url, _, httpd = server
    if failure == "http 500":
        httpd.fail_with = 500
    else:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with pytest.raises(DataUnavailable, match="could not download" + (".*500" if failure == "http 500" else "")):
        load_corpus("ptb", base_url=url)
    assert not cache.exists() or os.listdir(cache) == []
    fallback = load_corpus("auto", base_url=url)
    out = capsys.readouterr().out.splitlines()
    assert fallback.info.name == "pydoc" and len(out) == 2
    assert out[0].startswith("ptb unavailable (could not download") and out[0].endswith("falling back to pydoc")
    assert out[1].startswith("corpus: pydoc from pydoc_data.topics")


def test_without_downloads_only_the_cache_counts(server, cache, capsys):
    url, _, httpd = server
    with pytest.raises(DataUnavailable, match="missing or corrupt and downloads are off"):
        load_corpus("ptb", base_url=url, download=False)
    assert load_corpus("auto", base_url=url, download=False).info.name == "pydoc"
    assert "downloads are off); falling back to pydoc" in capsys.readouterr().out and httpd.requests == []


def test_the_mirror_can_be_set_by_environment(server, cache, monkeypatch):
    url, _, httpd = server
    monkeypatch.setenv("APPROXDROP_PTB_URL", url)
    assert load_corpus("ptb", verbose=False).info.name == "ptb" and len(httpd.requests) == 3


def test_ptb_max_vocab_caps_the_vocabulary(server):
    url, _, _ = server
    ptb = load_corpus("ptb", base_url=url, max_vocab=5, verbose=False)
    assert len(ptb.vocab) == 5 == ptb.info.vocab_size and ptb.vocab.words[:2] == [UNK, EOS]
    assert int(ptb.train.max()) == 4


def test_a_bad_name_lists_the_names():
    with pytest.raises(ValueError, match="name must be one of.*'pydoc'.*got 'wikitext'"):
        load_corpus("wikitext")
    assert NAMES == ("auto", "ptb", "pydoc")


def test_the_pydoc_corpus_is_offline_sizeable_and_split_contiguously(pydoc):
    info = pydoc.info
    assert info.name == "pydoc" and info.source == "pydoc_data.topics"
    assert info.train_tokens > 40_000 and info.valid_tokens > 1_500 and info.test_tokens > 1_500
    assert (info.train_tokens, info.valid_tokens, info.test_tokens) == tuple(map(len, pydoc[:3]))
    total = info.train_tokens + info.valid_tokens + info.test_tokens
    assert abs(info.train_tokens / total - 0.9) < 0.01 and abs(info.valid_tokens / total - 0.05) < 0.01
    assert 2_000 < len(pydoc.vocab) == info.vocab_size < 10_000  # below the default cap: every train word kept
    stream = tokenize_lines(pydoc_lines())
    assert torch.equal(torch.cat(pydoc[:3]), pydoc.vocab.encode(stream))  # train, valid, test in order
    assert all(pydoc.vocab.decode(split[-1:]) == [EOS] for split in pydoc[:3])  # cut on line boundaries
    assert set(pydoc.vocab.words) == set(stream[: info.train_tokens]) | {UNK}  # built from train only
    assert int((pydoc.train == 0).sum()) == 0 and int((pydoc.valid == 0).sum()) > 0  # unseen words are <unk>
    words = set(pydoc.vocab.words)
    assert {"the", "class", "def", "return", "doesn't"} <= words and not any("_" in w or w != w.lower() for w in words)


def test_the_pydoc_corpus_is_deterministic_and_its_vocabulary_can_be_capped(pydoc):
    again = load_corpus("pydoc", verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(again[:3], pydoc[:3])) and again.vocab.words == pydoc.vocab.words
    small = load_corpus("pydoc", max_vocab=500, verbose=False)
    assert len(small.vocab) == 500 and small.vocab.words == pydoc.vocab.words[:500]
    assert small.info == corpus.CorpusInfo("pydoc", "pydoc_data.topics", 500, *map(len, pydoc[:3]))
    unk_rate = float((small.train == 0).float().mean())
    assert 0.05 < unk_rate < 0.5
    kept = pydoc.train < 500
    assert torch.equal(small.train[kept], pydoc.train[kept]) and bool((small.train[~kept] == 0).all())


def test_tokenize_lines_ends_each_non_empty_line_with_eos():
    lines = [" the cat <unk> sat ", "", "   \t", "a\tdog\n"]
    assert tokenize_lines(lines) == ["the", "cat", UNK, "sat", EOS, "a", "dog", EOS]
    assert tokenize_lines([]) == []


def test_vocabulary_orders_by_frequency_then_first_appearance_and_round_trips():
    tokens = "b a c a <eos> c d <unk> a".split()  # a x3, c x2, then b and d once each (b first)
    vocab = Vocabulary(tokens)
    assert vocab.words == [UNK, EOS, "a", "c", "b", "d"] and len(vocab) == 6 and repr(vocab) == "Vocabulary(6 words)"
    assert vocab.index("c") == 3 and vocab.index(EOS) == 1
    ids = vocab.encode(["d", "a", "zebra", EOS])
    assert ids.dtype == torch.long and ids.tolist() == [5, 2, 0, 1]
    assert vocab.decode(ids) == ["d", "a", UNK, EOS] and vocab.decode([4, 3]) == ["b", "c"]
    assert vocab.encode([]).shape == (0,) and vocab.decode(torch.tensor([], dtype=torch.long)) == []
    assert Vocabulary([]).words == [UNK, EOS]
    capped = Vocabulary(tokens, max_size=4)
    assert capped.words == [UNK, EOS, "a", "c"] and capped.encode(["b", "d", "c"]).tolist() == [0, 0, 3]
    assert Vocabulary(tokens, max_size=100).words == vocab.words


def test_vocabulary_errors():
    vocab = Vocabulary(["x", "y"])
    with pytest.raises(ValueError, match="'zebra' is not in the vocabulary"):
        vocab.index("zebra")
    with pytest.raises(ValueError, match=r"ids \[4, -1\] are outside the vocabulary of 4 words"):
        vocab.decode([0, 4, -1])
    with pytest.raises(ValueError, match="max_size must be at least 2.*got 1"):
        Vocabulary(["x"], max_size=1)
    for size in (2.5, True, "3"):  # 2.5 was a TypeError from slicing
        with pytest.raises(ValueError, match=f"max_size must be .*an int or None, got {size!r}"):
            Vocabulary(["x"], max_size=size)


def test_batchify_lays_contiguous_streams_in_columns_and_drops_the_tail():
    ids = torch.arange(103)
    data = batchify(ids, 4)
    assert data.shape == (25, 4) and data.dtype == torch.long and data.is_contiguous()
    for b in range(4):
        assert torch.equal(data[:, b], ids[b * 25 : (b + 1) * 25])
    assert int(data.max()) == 99  # tokens 100..102 dropped
    assert torch.equal(batchify(ids, 1), ids[:, None])
    assert batchify(torch.arange(8), 4).shape == (2, 4)  # the smallest: one input and one target per column


@pytest.mark.parametrize(
    "ids, batch, message",
    [
        (torch.arange(7), 4, "7 tokens make 1 time steps per column at batch 4; need at least 2"),
        (torch.arange(10), 0, r"batch must be in \[1, inf\), got 0"),
        (torch.arange(10), 2.0, "batch must be an int, got 2.0"),
        (torch.arange(10.0), 2, "ids must be a tensor of integer token ids, got Tensor torch.float32"),
        ([1, 2, 3, 4], 2, "ids must be a tensor of integer token ids, got list"),
        (torch.arange(12).view(3, 4), 2, r"ids must be 1-D, got shape \(3, 4\)"),
        (
            torch.tensor([True, False, True, True]),
            2,
            "ids must be a tensor of integer token ids, got Tensor torch.bool",
        ),
    ],
)
def test_batchify_errors(ids, batch, message):
    with pytest.raises(ValueError, match=message):
        batchify(ids, batch)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_batchify_returns_long_ids_whatever_integer_dtype_it_is_given(dtype):
    """Long[N] -> Long[T, B]: int32 ids came back as int32, which the LSTM models then refused."""
    data = batchify(torch.arange(10, dtype=dtype), 2)
    assert data.dtype == torch.long and torch.equal(data, batchify(torch.arange(10), 2)) and data.is_contiguous()


def test_bptt_batches_shift_targets_by_one_and_cover_every_position_once():
    data = batchify(torch.arange(103), 4)  # [25, 4]
    chunks = bptt_batches(data, 7)
    pairs = list(chunks)
    assert len(chunks) == len(pairs) == 4 and [x.shape for x, _ in pairs] == [(7, 4)] * 3 + [(3, 4)]
    assert len(list(chunks)) == 4 and all(torch.equal(a, b) for (a, _), (b, _) in zip(chunks, pairs))  # re-iterable
    for x, y in pairs:
        assert x.shape == y.shape and torch.equal(y, x + 1)  # arange: the next token is the id plus one
    assert torch.equal(torch.cat([x for x, _ in pairs]), data[:-1]) and torch.equal(
        torch.cat([y for _, y in pairs]), data[1:]
    )


@pytest.mark.parametrize(
    "rows, steps, lengths", [(2, 1, [1]), (2, 5, [1]), (10, 9, [9]), (10, 3, [3, 3, 3]), (10, 4, [4, 4, 1])]
)
def test_bptt_batches_edge_lengths(rows, steps, lengths):
    data = torch.arange(rows * 3).view(rows, 3)
    chunks = bptt_batches(data, steps)
    assert len(chunks) == len(lengths) and [len(x) for x, _ in chunks] == lengths


@given(n=st.integers(2, 400), batch=st.integers(1, 9), steps=st.integers(1, 40))
def test_every_target_is_the_next_token_of_its_column_stream_exactly_once(n, batch, steps):
    ids = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(n))
    if n // batch < 2:
        with pytest.raises(ValueError, match="need at least 2"):
            batchify(ids, batch)
        return
    data = batchify(ids, batch)  # [T, B]
    rows = n // batch
    hits = torch.zeros(rows, batch, dtype=torch.long)  # how often each position is a target
    start = 0
    for x, y in bptt_batches(data, steps):
        t = len(x)
        assert 1 <= t <= steps and x.shape == y.shape == (t, batch)
        for b in range(batch):  # x and y are consecutive windows of column b's stream ids[b*T:(b+1)*T]
            assert torch.equal(x[:, b], ids[b * rows + start : b * rows + start + t])
            assert torch.equal(y[:, b], ids[b * rows + start + 1 : b * rows + start + 1 + t])
        hits[start + 1 : start + 1 + t] += 1
        start += t
    assert start == rows - 1 and hits[0].sum() == 0 and bool((hits[1:] == 1).all())


@pytest.mark.parametrize(
    "data, steps, message",
    [
        (torch.arange(20).view(10, 2), 0, r"steps must be in \[1, inf\), got 0"),
        (torch.arange(20).view(10, 2), 3.0, "steps must be an int, got 3.0"),
        (torch.arange(20), 3, r"data must be \[T, B\] with T >= 2, got shape \(20,\)"),
        (torch.arange(4).view(1, 4), 3, r"got shape \(1, 4\)"),
        ([[1, 2], [3, 4]], 1, r"data must be a tensor \[T, B\] \(as batchify makes\), got list"),  # was AttributeError
    ],
)
def test_bptt_batches_errors(data, steps, message):
    with pytest.raises(ValueError, match=message):
        bptt_batches(data, steps)
