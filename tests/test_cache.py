"""The search cache: directory choice, round trips, atomic writes, corrupt files never fatal."""

import json
from pathlib import Path

import pytest

from approxdrop import PatternDistribution
from approxdrop.ops import cuda_build as build
from approxdrop.search import cache as store
from approxdrop.search import search_distribution

KEY = {"p": 0.5, "n": 12, "family": "paper"}
DIST = PatternDistribution(((1, 1), (3, 1)), (0.25, 0.75), n=12, target_p=0.5, distance=0.1, loss_history=(2.0, 1.0))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path / "cache"))
    store.clear_memory()
    yield
    store.clear_memory()


def test_every_cache_follows_one_rule(tmp_path, monkeypatch):
    """The search cache and the kernel builds live in their own folders of ONE cache directory:
    $APPROXDROP_CACHE_DIR, else $XDG_CACHE_HOME/approxdrop, else ~/.cache/approxdrop."""

    def dirs():
        return store.cache_dir(), build._cache_root()

    assert dirs() == (tmp_path / "cache" / "search", tmp_path / "cache" / "kernels")
    monkeypatch.delenv("APPROXDROP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dirs() == (tmp_path / "xdg" / "approxdrop" / "search", tmp_path / "xdg" / "approxdrop" / "kernels")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".cache" / "approxdrop"
    assert dirs() == (home / "search", home / "kernels")


def test_round_trip_through_memory_and_disk():
    assert store.load(KEY) is None
    store.store(KEY, DIST)
    assert store.load(KEY) is DIST
    store.clear_memory()
    assert store.load(KEY) == DIST and store.load(KEY).loss_history == (2.0, 1.0)
    data = json.loads(store.entry_path(KEY).read_text())
    assert data["key"] == KEY and data["distribution"]["probs"] == [0.25, 0.75]
    assert store.load({**KEY, "n": 13}) is None


BAD_DIST = json.dumps({"key": KEY, "distribution": {"pairs": [[2, 1]], "probs": [0.5]}})


BAD_TEXTS = [
    "{not json",
    "[]",
    '{"key": {"p": 0.5}}',
    '{"key": null, "distribution": {}}',
    BAD_DIST,
    "[" * 200_000 + "]" * 200_000,
]  # nested past the parser's stack: a RecursionError, also a miss


@pytest.mark.parametrize("text", BAD_TEXTS)
def test_corrupt_or_foreign_file_is_a_miss_and_is_rewritten(text):
    path = store.entry_path(KEY)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert store.load(KEY) is None
    calls = []
    assert store.cached(KEY, lambda: calls.append(1) or DIST) == DIST
    assert calls == [1]
    store.clear_memory()
    assert store.load(KEY) == DIST  # the file was rewritten


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(monkeypatch):
    store.store(KEY, DIST)
    before = store.entry_path(KEY).read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.json, "dump", disk_full)
    other = PatternDistribution(((2, 1),), (1.0,), n=12, target_p=0.5)
    with pytest.warns(UserWarning, match="could not write"):
        store.store(KEY, other)
    assert store.entry_path(KEY).read_text() == before
    assert [p.name for p in store.cache_dir().iterdir()] == [store.entry_path(KEY).name]
    assert store.load(KEY) is other  # memory still serves this session


def test_an_unwritable_directory_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write"):
        assert store.cached(KEY, lambda: DIST) is DIST


def test_search_distribution_cache(tmp_path):
    first = search_distribution(0.6, 50, family="extended", cache=True)
    files = list(Path(tmp_path / "cache" / "search").glob("search-*.json"))
    assert len(files) == 1 and first == search_distribution(0.6, 50, family="extended")
    assert search_distribution(0.6, 50, family="extended", cache=True) is first
    store.clear_memory()
    again = search_distribution(0.6, 50, family="extended", cache=True)
    assert again == first and again is not first
    assert search_distribution(0.6, 50, family="extended", cache=True, steps=10) != first  # settings are in the key


FOREIGN = [  # laws that were not built for KEY (p = 0.5, n = 12) or SEARCH_KEY (kind, tile)
    PatternDistribution(((2, 1), (3, 1)), (0.25, 0.75), n=12, target_p=0.5),  # rate 0.625
    PatternDistribution(((2, 1),), (1.0,), n=13, target_p=0.5),  # another site size
    PatternDistribution(((2, 1),), (1.0,), n=12, target_p=0.4),  # recorded for another p
]


@pytest.mark.parametrize("law", FOREIGN)
def test_a_cached_law_that_does_not_fit_its_key_is_a_miss_and_is_recomputed(law):
    path = store.entry_path(KEY)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": KEY, "distribution": law.to_dict()}))
    assert not store.fits(KEY, law)
    assert store.load(KEY) is None
    assert store.cached(KEY, lambda: DIST) == DIST
    store.clear_memory()
    assert store.load(KEY) == DIST  # the file was rewritten


@pytest.mark.parametrize("changes", [dict(kind="tile"), dict(tile=16)])
def test_a_cached_law_of_another_kind_or_tile_is_a_miss(changes):
    key = {**KEY, "kind": "row", "tile": 32}
    law = PatternDistribution(((2, 1),), (1.0,), n=12, target_p=0.5, **{"kind": "row", "tile": 32, **changes})
    store.entry_path(key).parent.mkdir(parents=True)
    store.entry_path(key).write_text(json.dumps({"key": key, "distribution": law.to_dict()}))
    assert not store.fits(key, law) and store.load(key) is None


def test_storing_a_law_under_a_key_it_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="cannot cache a law of rate 0.625"):
        store.store(KEY, FOREIGN[0])
    assert store.load(KEY) is None and not store.entry_path(KEY).exists()


def test_search_recomputes_a_tampered_cache_entry(tmp_path):
    first = search_distribution(0.5, 40, cache=True)
    (path,) = Path(tmp_path / "cache" / "search").glob("search-*.json")
    data = json.loads(path.read_text())
    data["distribution"] = PatternDistribution(((16, 1),), (1.0,), n=40, target_p=0.5).to_dict()  # rate 0.9375
    path.write_text(json.dumps(data))
    store.clear_memory()
    again = search_distribution(0.5, 40, cache=True)
    assert again == first and abs(again.expected_rate - 0.5) <= 1e-9
    assert json.loads(path.read_text())["distribution"] == first.to_dict()


def test_an_entry_path_that_is_not_a_regular_file_is_not_fatal():
    """A directory (or a device) where the entry would go: a warning, and the law from memory."""
    store.entry_path(KEY).mkdir(parents=True)
    with pytest.warns(UserWarning, match="not a regular file"):
        assert store.cached(KEY, lambda: DIST) is DIST
    assert store.entry_path(KEY).is_dir()
