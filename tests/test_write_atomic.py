"""Atomic file writes (``_env.write_atomic``): every writer's file gets the umask's mode (not
mkstemp's 0600), a failure leaves neither a file nor a descriptor behind, and text is UTF-8."""

import os
import subprocess
import sys

import pytest

from approxdrop._env import remove_stale_temps, write_atomic
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


def temp_name(path) -> str:
    """The name ``write_atomic`` gives its temporary file for ``path``, seen from inside the write."""
    seen = []
    write_atomic(path, lambda f: seen.extend(n for n in os.listdir(path.parent) if n.startswith(".tmp-")))
    path.unlink()
    return seen[0]


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_temporary_file_names_its_process_and_its_target(tmp_path):
    name = temp_name(tmp_path / "f.bin")
    assert name.startswith(f".tmp-{os.getpid()}@") and name.endswith("-f.bin")


def test_only_a_dead_process_s_temporary_files_of_the_target_are_swept(tmp_path):
    """A SIGKILLed writer leaves its temporary file behind: ``remove_stale_temps`` removes it, and leaves a
    live process's, another target's, another machine's and a name it does not know."""
    ours = temp_name(tmp_path / "f.bin")  # .tmp-<pid>@<host>-XXXX-f.bin
    rest = ours.split("@", 1)[1]
    host, random_and_name = rest.split("-", 1)
    dead = f".tmp-{dead_pid()}@{host}-{random_and_name}"
    kept = [
        ours,  # this process: alive
        f".tmp-{dead_pid()}@{host}-{random_and_name[: -len('f.bin')]}g.bin",  # another target
        f".tmp-{dead_pid()}@{host}x-{random_and_name}",  # another machine: its pids mean nothing here
        ".tmp-abcd1234f.bin",  # no process id to judge
        "f.bin.tmp-1",
    ]
    for name in [dead, *kept]:
        (tmp_path / name).write_bytes(b"partial")
    assert remove_stale_temps(tmp_path / "f.bin") == [tmp_path / dead]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert remove_stale_temps(tmp_path / "missing-dir" / "f.bin") == []
