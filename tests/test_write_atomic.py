"""Atomic file writes (``_env.write_atomic``): every writer's file gets the umask's mode (not
mkstemp's 0600), a failure leaves neither a file nor a descriptor behind, and text is UTF-8."""

import os
import subprocess
import sys

import pytest

from approxdrop._env import write_atomic
from approxdrop.distribution import PatternDistribution
from approxdrop.search import cache


@pytest.fixture
def umask_027():
    """Run the test under umask 0o027 (files 0o640), and restore the old one."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_a_search_cache_file_gets_the_umask_mode(tmp_path, monkeypatch, umask_027):
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path))
    key = {"p": 0.5, "n": 12, "test": "file mode"}
    cache.store(key, PatternDistribution(((2, 1),), (1.0,), n=12, target_p=0.5))  # drops 1 row in 2: rate 0.5
    path = cache.entry_path(key)
    assert path.parent == tmp_path / "search" and path.stat().st_mode & 0o777 == umask_027


@pytest.mark.parametrize("binary", [False, True])
def test_write_atomic_gives_the_umask_mode(tmp_path, umask_027, binary):
    write_atomic(tmp_path / "f", lambda f: f.write(b"x" if binary else "x"), binary=binary)
    assert (tmp_path / "f").stat().st_mode & 0o777 == umask_027


def test_a_failed_write_leaves_no_file_and_no_descriptor(tmp_path, monkeypatch):
    fds = set(os.listdir("/proc/self/fd"))

    def refuse(fd, mode):
        raise PermissionError("fchmod refused")

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(PermissionError, match="fchmod refused"):
        write_atomic(tmp_path / "f", lambda f: f.write("x"))
    assert os.listdir(tmp_path) == [] and set(os.listdir("/proc/self/fd")) == fds


def test_text_is_utf8_in_an_ascii_locale(tmp_path):
    path = tmp_path / "results.md"
    text = "83.00 \u00b1 1.41"  # what results.md holds
    code = f"from approxdrop._env import write_atomic; write_atomic({str(path)!r}, lambda f: f.write({ascii(text)}))"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert path.read_bytes() == text.encode("utf-8")
