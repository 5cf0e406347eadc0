"""Downloads with checksums into the data directory, atomically, and the fallback loop of the loaders."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from .._env import data_root, write_atomic


class DataUnavailable(RuntimeError):
    """A dataset cannot be had here (offline, missing files, bad checksum); the message says why."""


def data_dir() -> Path:
    """The download cache directory (not created here): ``_env.data_root``."""
    return data_root()


def md5sum(path: Path) -> str:
    """Hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically: a temporary file in ``dest``'s directory, checked
    against ``md5``, then renamed. Raises DataUnavailable (and leaves nothing) on any failure."""

    def fetch(out) -> None:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != md5:
            raise DataUnavailable(f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}")

    try:
        write_atomic(dest, fetch, binary=True)
    except (OSError, urllib.error.URLError) as err:  # HTTPError and timeouts are URLError / OSError
        raise DataUnavailable(f"could not download {url}: {err}") from err
    return dest


def fetch_files(root: Path, base_url: str, checksums: dict[str, str], download_ok: bool = True) -> Path:
    """``root``, holding every file of ``checksums`` (name: MD5) with a matching checksum; what is
    missing or corrupt is downloaded from ``base_url`` (unless ``download_ok`` is False)."""
    for name, md5 in checksums.items():
        path = root / name
        if path.exists() and md5sum(path) == md5:
            continue
        if not download_ok:
            raise DataUnavailable(f"{path} is missing or corrupt and downloads are off")
        download(base_url.rstrip("/") + "/" + name, path, md5)
    return root


def load_first_available(order: list[str], load, describe, verbose: bool):
    """``load(name)`` for the first name in ``order`` that can be had: a ``DataUnavailable`` moves on
    to the next one (printing why, when ``verbose``), the last one's is raised; on success prints
    ``describe(result)`` when ``verbose``."""
    for candidate, fallback in zip(order, [*order[1:], None]):
        try:
            result = load(candidate)
        except DataUnavailable as err:
            if fallback is None:
                raise
            if verbose:
                print(f"{candidate} unavailable ({err}); falling back to {fallback}")
            continue
        if verbose:
            print(describe(result))
        return result
