"""Cache of searched distributions: in memory, and on disk as JSON in a user cache directory.

Directory: ``search/`` under the approxdrop cache directory (``_env.cache_root``). Each entry is one
file ``search-<sha256 of the key, 16 hex>.json`` holding
``{"key": {...}, "distribution": PatternDistribution.to_dict()}``; the key holds every search
input and the search version. Files are written atomically (a temporary file in the same
directory, then ``os.replace``). An unreadable, corrupt or mismatching file counts as a miss and
is rewritten; so does a law that was not built for its key (``fits``: its rate, and the recorded
target p, n, kind and tile, against the key's). A directory that cannot be written gives a warning
and no disk copy. Nothing here is fatal.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

from .._env import cache_root, write_json_atomic
from ..distribution import RATE_TOL, PatternDistribution

_memory: dict[str, PatternDistribution] = {}


def cache_dir() -> Path:
    """The search cache's directory (not created here)."""
    return cache_root() / "search"


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def entry_path(key: dict) -> Path:
    """The file an entry with this key lives in."""
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]
    return cache_dir() / f"search-{digest}.json"


_RECORDED = {"p": "target_p", "n": "n", "kind": "kind", "tile": "tile"}  # key field -> law attribute


def fits(key: dict, dist: PatternDistribution) -> bool:
    """True when ``dist`` was built for ``key``: its expected rate is the key's ``p`` (to ``RATE_TOL``)
    and it records the key's ``p``, ``n``, ``kind`` and ``tile`` (each checked when the key has it)."""
    if "p" in key and not abs(dist.expected_rate - key["p"]) <= RATE_TOL:
        return False
    return all(getattr(dist, attr) == key[field] for field, attr in _RECORDED.items() if field in key)


def load(key: dict) -> PatternDistribution | None:
    """The cached distribution for ``key`` (memory first, then disk), or None."""
    text = _canonical(key)
    if text in _memory:
        return _memory[text]
    try:
        data = json.loads(entry_path(key).read_text())
        if _canonical(data["key"]) != text:
            return None
        dist = PatternDistribution.from_dict(data["distribution"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested past the stack
        return None
    if not fits(key, dist):
        return None
    _memory[text] = dist
    return dist


def store(key: dict, dist: PatternDistribution) -> None:
    """Keep ``dist`` in memory and write it to disk atomically (a failed write only warns).
    A law that does not ``fit`` the key is a ValueError."""
    if not fits(key, dist):
        raise ValueError(
            f"cannot cache a law of rate {dist.expected_rate:.9g} (target_p={dist.target_p}, n={dist.n}, "
            f"kind={dist.kind!r}, tile={dist.tile}) under the key {key}"
        )
    _memory[_canonical(key)] = dist
    path = entry_path(key)
    try:
        write_json_atomic(path, {"key": key, "distribution": dist.to_dict()})
    except (OSError, ValueError) as err:  # ValueError: the entry's path is not a regular file (a directory, a device)
        warnings.warn(f"approxdrop: could not write the search cache {path}: {err}", stacklevel=2)


def cached(key: dict, compute: Callable[[], PatternDistribution]) -> PatternDistribution:
    """``load(key)``, else ``compute()`` and ``store`` it."""
    dist = load(key)
    if dist is None:
        dist = compute()
        store(key, dist)
    return dist


def clear_memory() -> None:
    """Forget the in-memory entries (the disk files stay)."""
    _memory.clear()
