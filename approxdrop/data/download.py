"""Downloads with checksums into the data directory, atomically, and the fallback loop of the loaders.

A download is bounded: ``timeout`` per read, an overall deadline (``DEADLINE_S``) and a minimum
average rate (``MIN_RATE`` bytes/s after ``GRACE_S`` seconds), so a mirror that trickles bytes
cannot block a loader forever; each is an argument of ``download``."""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .._env import check_number, check_positive, data_root, remove_stale_temps, write_atomic

DEADLINE_S = 600.0  # default limit on a whole download, seconds
MIN_RATE = 1000.0  # default minimum average rate, bytes/s, checked once GRACE_S seconds have passed
GRACE_S = 30.0


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


class _Watchdog:
    """Shuts the sockets of one download down when its deadline passes, so that no read (status
    line, headers or body) blocks beyond it; ``fired`` says it did. A context manager: the timer
    runs inside the ``with`` block only."""

    def __init__(self, seconds: float):
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self._timer.join()

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: wakes a blocked read
        except OSError:
            pass  # already closed

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (now, if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener (proxies, redirects, HTTPS as ``urlopen``'s) whose connections are watched."""
        watchdog = self

        class Watched:
            def connect(self) -> None:
                super().connect()
                watchdog.watch(self.sock)

        class HTTP(Watched, http.client.HTTPConnection):
            pass

        class HTTPS(Watched, http.client.HTTPSConnection):
            pass

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(HTTP, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(HTTPS, req)

        return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


SCHEMES = ("http", "https", "ftp", "file")  # what the download opener reads


def check_url(url: str) -> str:
    """``url`` if it is one a download can open (a scheme of ``SCHEMES``, and a host unless it is a file
    URL), else DataUnavailable naming it, so a bad mirror setting falls back like an offline one."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as err:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise DataUnavailable(f"bad download URL {url!r}: {err}") from err
    if parts.scheme not in SCHEMES or (parts.scheme != "file" and not parts.hostname):
        raise DataUnavailable(f"bad download URL {url!r}: expected https://HOST/PATH or another of {SCHEMES}")
    return url


def check_md5(md5: object, name: str = "md5") -> str:
    """``md5`` in lower case if it is an MD5 sum in hex (32 hex digits, either case), else ValueError naming it."""
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"{name} must be an MD5 sum of 32 hex digits, got {md5!r}")
    return md5.lower()


def _content_length(response) -> int | None:
    """The body length the server announced (Content-Length), or None when it gave none (or nonsense)."""
    value = response.headers.get("Content-Length")
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def download(
    url: str,
    dest: Path,
    md5: str,
    timeout: float = 30.0,
    deadline: float = DEADLINE_S,
    min_rate: float = MIN_RATE,
    grace: float = GRACE_S,
) -> Path:
    """Download ``url`` to ``dest`` atomically: a temporary file in ``dest``'s directory, checked
    against ``md5`` (32 hex digits, in either case; else ValueError before anything is fetched), then
    renamed. Raises DataUnavailable (and leaves nothing) on any failure; a body shorter than the server's
    Content-Length says so. Temporary files of ``dest`` that a killed download left behind are removed
    first (``_env.remove_stale_temps``).

    Limits: ``timeout`` seconds for the connection and for each read; ``deadline`` seconds for the
    whole download (a trickling server is cut off then, even in the middle of a read); an average
    of at least ``min_rate`` bytes/s (0: no minimum) once ``grace`` seconds have passed. A URL that
    cannot be opened (``check_url``) is DataUnavailable too, naming it."""
    timeout, deadline = check_positive("timeout", timeout), check_positive("deadline", deadline)
    min_rate, grace = check_number("min_rate", min_rate, 0), check_number("grace", grace, 0)
    md5 = check_md5(md5)
    check_url(url)
    late = f"download of {url} passed its deadline of {deadline:g} s"

    def fetch(out, watchdog: _Watchdog) -> None:
        digest, received, start = hashlib.md5(), 0, time.monotonic()
        with watchdog.opener().open(url, timeout=timeout) as response:
            announced = _content_length(response)
            while block := response.read1(1 << 20):  # what has arrived, without waiting for a full block
                digest.update(block)
                out.write(block)
                received += len(block)
                elapsed = time.monotonic() - start
                if elapsed > grace and received < min_rate * elapsed:
                    raise DataUnavailable(
                        f"download of {url} too slow: {received} bytes in {elapsed:.1f} s, below {min_rate:g} bytes/s"
                    )
        if watchdog.fired:  # the socket was shut down: the body ended early
            raise DataUnavailable(f"{late} ({received} bytes)")
        if announced is not None and received < announced:  # the server closed early: read1 just returns b""
            raise DataUnavailable(f"download of {url} failed: the body ended after {received} of {announced} bytes")
        if digest.hexdigest() != md5:
            raise DataUnavailable(f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}")

    remove_stale_temps(dest)
    with _Watchdog(deadline) as watchdog:
        try:
            write_atomic(dest, lambda out: fetch(out, watchdog), binary=True)
        except (OSError, ValueError, urllib.error.URLError, http.client.HTTPException) as err:  # timeouts: OSError
            raise DataUnavailable(f"{late} ({err})" if watchdog.fired else f"could not download {url}: {err}") from err
    return dest


def _matches(path: Path, md5: str) -> bool:
    """Whether ``path`` is a readable file with this MD5 sum."""
    try:
        return md5sum(path) == md5
    except OSError:  # missing, a directory, unreadable
        return False


def fetch_files(root: Path, base_url: str, checksums: dict[str, str], download_ok: bool = True) -> Path:
    """``root``, holding every file of ``checksums`` (name: MD5) with a matching checksum; what is
    missing or corrupt is downloaded from ``base_url`` (unless ``download_ok`` is False). MD5 sums are hex,
    in either case (anything else is a ValueError before any file is read)."""
    checksums = {name: check_md5(md5, f"the MD5 sum of {name}") for name, md5 in checksums.items()}
    for name, md5 in checksums.items():
        path = root / name
        if _matches(path, md5):
            continue
        if not download_ok:
            raise DataUnavailable(f"{path} is missing or corrupt and downloads are off")
        download(base_url.rstrip("/") + "/" + name, path, md5)
    return root


_T = TypeVar("_T")  # what ``load_first_available``'s loader returns


def load_first_available(
    order: list[str], load: Callable[[str], _T], describe: Callable[[_T], str], verbose: bool
) -> _T:
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
