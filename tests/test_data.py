"""Data loaders: IDX parsing, the real download path against a local HTTP server (success, bad
checksum, HTTP 500, connection refused, a trickling mirror, file modes), the cache, the fallback
order, corrupt Fashion-MNIST files, and digits."""

import gzip
import hashlib
import http.server
import os
import re
import socket
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from approxdrop._env import write_atomic
from approxdrop.data import IDX_FILES, DataUnavailable, download, fetch_mnist, load_dataset, parse_idx
from approxdrop.data import datasets as data


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file holding a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, train: int = 30, test: int = 10, side: int = 4, seed: int = 0) -> dict[str, str]:
    """The four MNIST-named IDX .gz files of a tiny dataset; returns their MD5 sums."""
    rng = np.random.default_rng(seed)
    arrays = [
        rng.integers(0, 256, (train, side, side)),
        rng.integers(0, 10, train),
        rng.integers(0, 256, (test, side, side)),
        rng.integers(0, 10, test),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, array in zip(IDX_FILES, arrays):
        path = directory / name
        path.write_bytes(gzip.compress(idx_bytes(array)))
        sums[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return sums


class Handler(http.server.SimpleHTTPRequestHandler):
    fail_with: int | None = None

    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.server.fail_with is not None:
            self.send_error(self.server.fail_with)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served; yields (base_url, md5 sums, httpd)."""
    served = tmp_path / "served"
    sums = write_idx_dir(served)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    httpd.fail_with = None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", sums, httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def no_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path / "no-fashion-here")


def test_parse_idx_reads_shape_and_values_and_rejects_bad_files():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(array)), array)
    ints = np.array([[1, -2], [300, 4]], dtype=">i4")
    header = bytes([0, 0, 0x0C, 2]) + np.array([2, 2], dtype=">i4").tobytes()
    assert np.array_equal(parse_idx(header + ints.tobytes()), ints)
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x1f\x8b\x08\x00")
    with pytest.raises(ValueError, match="data bytes"):
        parse_idx(idx_bytes(array)[:-1])


def test_download_verifies_and_caches_the_files(server, tmp_path, capsys):
    url, sums, httpd = server
    root = tmp_path / "cache"
    ds = load_dataset("mnist", root=root, base_url=url, checksums=sums)
    assert ds.train_x.shape == (30, 16) and ds.test_x.shape == (10, 16)
    assert ds.train_x.dtype == torch.float32 and 0.0 <= float(ds.train_x.min()) and float(ds.train_x.max()) <= 1.0
    assert ds.train_y.dtype == torch.int64 and ds.info.name == "mnist" and ds.info.image_shape == (4, 4)
    expected = parse_idx(gzip.decompress((tmp_path / "served" / IDX_FILES[0]).read_bytes())).reshape(30, 16) / 255
    assert torch.allclose(ds.train_x, torch.tensor(expected, dtype=torch.float32))
    assert sorted(os.listdir(root)) == sorted(IDX_FILES)  # no temporary file left
    assert "dataset: mnist" in capsys.readouterr().out
    httpd.fail_with = 500  # from now on the cache must be enough
    again = load_dataset("mnist", root=root, base_url=url, checksums=sums, download=False, verbose=False)
    assert torch.equal(again.train_x, ds.train_x)


def test_a_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    url, sums, _ = server
    root = fetch_mnist(tmp_path / "cache", url, sums)
    (root / IDX_FILES[1]).write_bytes(b"garbage")
    fetch_mnist(root, url, sums)
    assert hashlib.md5((root / IDX_FILES[1]).read_bytes()).hexdigest() == sums[IDX_FILES[1]]


def test_a_checksum_mismatch_leaves_nothing_in_the_cache(server, tmp_path):
    url, sums, _ = server
    root = tmp_path / "cache"
    wrong = {**sums, IDX_FILES[0]: "0" * 32}
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        fetch_mnist(root, url, wrong)
    assert os.listdir(root) == []


def test_checksums_given_in_upper_case_hex_match(server, tmp_path):
    """Some mirrors publish MD5 sums in upper case: a hex digest is the same number."""
    url, sums, _ = server
    root = fetch_mnist(tmp_path / "cache", url, {name: md5.upper() for name, md5 in sums.items()})
    assert sorted(os.listdir(root)) == sorted(IDX_FILES)


def test_download_takes_an_md5_in_upper_case_hex_too(server, tmp_path):
    """The public download() compares a hex digest whatever its case, as fetch_files does."""
    url, sums, _ = server
    dest = download(f"{url}/{IDX_FILES[0]}", tmp_path / IDX_FILES[0], sums[IDX_FILES[0]].upper())
    assert hashlib.md5(dest.read_bytes()).hexdigest() == sums[IDX_FILES[0]]


@pytest.mark.parametrize("failure", ["http 500", "connection refused"])
def test_a_failing_server_raises_a_clear_error_and_auto_falls_back(server, tmp_path, no_fashion, failure, capsys):
    url, sums, httpd = server
    if failure == "http 500":
        httpd.fail_with = 500
    else:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    root = tmp_path / "cache"
    with pytest.raises(DataUnavailable, match="could not download" + (".*500" if failure == "http 500" else "")):
        load_dataset("mnist", root=root, base_url=url, checksums=sums)
    assert not root.exists() or os.listdir(root) == []
    ds = load_dataset("auto", root=root, base_url=url, checksums=sums)
    out = capsys.readouterr().out.splitlines()
    assert ds.info.name == "digits"
    assert out[0].startswith("mnist unavailable") and out[0].endswith("falling back to fashion-mnist")
    assert out[1].startswith("fashion-mnist unavailable") and out[1].endswith("falling back to digits")
    assert out[2].startswith("dataset: digits")


def test_auto_takes_fashion_mnist_when_mnist_is_not_cached_and_downloads_are_off(monkeypatch, tmp_path, capsys):
    fashion = tmp_path / "fashion"
    write_idx_dir(fashion, train=12, test=6, side=5, seed=1)
    monkeypatch.setattr(data, "FASHION_DIR", fashion)
    ds = load_dataset("auto", root=tmp_path / "empty", download=False)
    assert ds.info.name == "fashion-mnist" and ds.train_x.shape == (12, 25) and ds.info.source == str(fashion)
    out = capsys.readouterr().out
    assert "downloads are off" in out and "dataset: fashion-mnist" in out


def test_a_named_dataset_does_not_fall_back(no_fashion):
    with pytest.raises(DataUnavailable, match="fashion-mnist: missing"):
        load_dataset("fashion-mnist")
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("cifar")


@pytest.mark.skipif(not data.FASHION_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_system_fashion_mnist():
    ds = load_dataset("fashion-mnist", train_size=100, test_size=50, verbose=False)
    assert ds.train_x.shape == (100, 784) and ds.test_x.shape == (50, 784) and ds.info.classes == 10
    assert set(ds.train_y.tolist()) <= set(range(10))


def test_digits_are_the_last_resort_and_subsets_are_seeded():
    ds = load_dataset("digits", verbose=False)
    assert ds.train_x.shape == (1438, 64) and ds.test_x.shape == (359, 64) and ds.info.image_shape == (8, 8)
    assert float(ds.train_x.max()) == 1.0 and float(ds.train_x.min()) == 0.0
    small = load_dataset("digits", train_size=100, test_size=20, verbose=False)
    assert small.train_x.shape == (100, 64) and small.test_y.shape == (20,)
    assert torch.equal(small.train_x, load_dataset("digits", train_size=100, test_size=20, verbose=False).train_x)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("APPROXDROP_DATA_DIR", str(tmp_path / "a"))
    assert data.data_dir() == tmp_path / "a"
    monkeypatch.delenv("APPROXDROP_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.data_dir() == tmp_path / "xdg" / "approxdrop" / "data"


def test_a_home_directory_tilde_in_the_environment_is_expanded(monkeypatch, tmp_path):
    """APPROXDROP_DATA_DIR="~/data", as a shell leaves it inside quotes: the home directory's data, not a
    folder named "~" under the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("APPROXDROP_DATA_DIR", "~/data")
    assert data.data_dir() == tmp_path / "home" / "data"
    monkeypatch.delenv("APPROXDROP_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert data.data_dir() == tmp_path / "home" / "xdg" / "approxdrop" / "data"


def test_the_mirror_can_be_set_by_environment(server, tmp_path, monkeypatch):
    url, sums, _ = server
    monkeypatch.setenv("APPROXDROP_MNIST_URL", url)
    root = fetch_mnist(tmp_path / "cache", checksums=sums)
    assert sorted(os.listdir(root)) == sorted(IDX_FILES)


def corrupt(path: Path, kind: str) -> None:
    """Spoil a gzipped IDX file in one of the ways a damaged copy can be wrong."""
    packed = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(packed[: len(packed) // 2])  # EOFError inside gzip
    elif kind == "not gzip":
        path.write_bytes(b"this is no gzip file")  # BadGzipFile
    elif kind == "bad deflate data":
        path.write_bytes(packed[:10] + bytes(len(packed) - 18) + packed[-8:])  # zlib.error
    elif kind == "wrong size":
        path.write_bytes(gzip.compress(gzip.decompress(packed)[:-1]))  # ValueError from parse_idx
    elif kind == "empty":
        path.write_bytes(gzip.compress(b""))  # not an IDX header
    elif kind == "wrong dims":
        path.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 2), dtype=np.uint8))))  # labels must be 1-D
    elif kind == "a directory":
        path.unlink()
        path.mkdir()  # IsADirectoryError


@pytest.mark.parametrize("kind", ["truncated", "not gzip", "bad deflate data", "wrong size", "empty", "wrong dims",
                                  "a directory"])  # fmt: skip
def test_a_corrupt_fashion_mnist_file_is_unavailable_and_auto_falls_back(monkeypatch, tmp_path, kind, capsys):
    fashion = tmp_path / "fashion"
    write_idx_dir(fashion)
    spoiled = fashion / IDX_FILES[1]  # the train labels
    corrupt(spoiled, kind)
    monkeypatch.setattr(data, "FASHION_DIR", fashion)
    with pytest.raises(DataUnavailable, match=f"fashion-mnist: .*{spoiled}"):
        load_dataset("fashion-mnist", verbose=False)
    ds = load_dataset("auto", root=tmp_path / "empty", download=False)
    out = capsys.readouterr().out.splitlines()
    assert ds.info.name == "digits"
    assert out[1].startswith("fashion-mnist unavailable") and str(spoiled) in out[1]
    assert out[1].endswith("falling back to digits")


def test_a_directory_in_place_of_a_cached_file_is_unavailable_not_a_crash(server, tmp_path):
    url, sums, _ = server
    root = tmp_path / "cache"
    (root / IDX_FILES[0]).mkdir(parents=True)  # cannot be read, nor replaced by the download
    with pytest.raises(DataUnavailable, match="could not download"):
        fetch_mnist(root, url, sums)


class Trickle(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a 1000-byte body, sending one byte every ``server.interval`` seconds
    from the start of the body (or, with ``server.slow_headers``, from the second header line on)
    until the client leaves or the test ends (``server.stop``)."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        status = b"HTTP/1.0 200 OK\r\n"
        head = status + b"Content-Length: 1000\r\n" + b"X-Padding: " + b"a" * 1000 + b"\r\n\r\n"
        response = head + bytes(1000)
        fast = len(status) if self.server.slow_headers else len(head)
        try:
            self.wfile.write(response[:fast])
            for i in range(fast, len(response)):
                if self.server.stop.wait(self.server.interval):
                    return
                self.wfile.write(response[i : i + 1])
        except OSError:  # the client gave up
            return

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle():
    """A local server on 127.0.0.1 that trickles its answer (``Trickle``); yields (url, httpd). Its
    handler threads stop at teardown and ``server_close`` joins them."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.interval, httpd.slow_headers, httpd.stop = 0.05, False, threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file", httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()  # joins the handler threads (block_on_close)
    thread.join(5)


@pytest.mark.parametrize("slow_headers", [False, True])
def test_a_trickling_mirror_is_cut_off_at_the_deadline(trickle, tmp_path, slow_headers):
    url, httpd = trickle
    httpd.slow_headers = slow_headers
    start = time.monotonic()
    with pytest.raises(DataUnavailable, match="passed its deadline of 0.5 s"):
        download(url, tmp_path / "cache" / "file", "0" * 32, timeout=10, deadline=0.5, min_rate=0)
    assert 0.5 <= time.monotonic() - start < 3  # one byte per 0.05 s: 2000 bytes would take 100 s
    assert os.listdir(tmp_path / "cache") == []


def test_a_mirror_below_the_minimum_rate_is_cut_off_after_the_grace_period(trickle, tmp_path):
    url, _ = trickle
    start = time.monotonic()
    with pytest.raises(DataUnavailable, match="too slow: .* below 1000 bytes/s"):
        download(url, tmp_path / "cache" / "file", "0" * 32, timeout=10, deadline=60, min_rate=1000, grace=0.3)
    assert 0.3 <= time.monotonic() - start < 3
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"deadline": 0}, "deadline must be a finite number > 0, got 0"),
        ({"timeout": float("nan")}, "timeout must be a finite number > 0, got nan"),
        ({"min_rate": -1.0}, r"min_rate must be in \[0, inf\], got -1.0"),
        ({"grace": float("inf")}, "grace must be a finite number, got inf"),
    ],
)
def test_download_limits_are_checked(tmp_path, limits, message):
    with pytest.raises(ValueError, match=message):
        download("http://127.0.0.1:9/x", tmp_path / "x", "0" * 32, **limits)


def test_a_downloaded_file_gets_the_umask_mode(server, tmp_path):
    url, sums, _ = server
    old = os.umask(0o027)
    try:
        root = fetch_mnist(tmp_path / "cache", url, sums)
    finally:
        os.umask(old)
    assert {(root / name).stat().st_mode & 0o777 for name in IDX_FILES} == {0o640}  # 0o666 & ~0o027, not 0o600


@pytest.mark.parametrize("sizes", [{"train_size": -5}, {"train_size": 0}, {"test_size": 2.5}])
def test_a_subset_size_below_one_is_refused_before_anything_loads(sizes, monkeypatch):
    """train_size=-5 kept all but 5 examples; 0 an empty split that failed later in training."""
    from approxdrop.data import datasets

    monkeypatch.setattr(datasets, "_load_one", lambda *a: pytest.fail("loaded before the sizes were checked"))
    name = next(iter(sizes))
    with pytest.raises(ValueError, match=f"{name} must be"):
        load_dataset("digits", **sizes, verbose=False)


@pytest.mark.parametrize(
    "code, labels, message",
    [
        (0x09, np.array([3, -1, 2], dtype=np.int8), r"holds a negative label \(-1\); classes start at 0"),
        (0x0D, np.array([1.0, 2.5, 0.0], dtype=">f4"), "holds >f4 labels, expected integer class indices"),
    ],
)
def test_labels_that_are_not_class_indices_are_refused_naming_the_file(tmp_path, code, labels, message):
    write_idx_dir(tmp_path, train=3)
    spoiled = tmp_path / IDX_FILES[1]  # the train labels, as an IDX file of another element type
    header = bytes([0, 0, code, 1]) + np.array(labels.shape, dtype=">i4").tobytes()
    spoiled.write_bytes(gzip.compress(header + labels.tobytes()))
    with pytest.raises(DataUnavailable, match=f"mine: {spoiled} {message}"):
        data.load_idx_dir(tmp_path, "mine")


@pytest.mark.parametrize(
    "code, images, message",
    [
        (0x0D, np.full((3, 2, 2), 300.0, dtype=">f4"), r"holds >f4 images, expected unsigned bytes \(0..255\)"),
        (0x09, np.full((3, 2, 2), -5, dtype=np.int8), r"holds int8 images, expected unsigned bytes \(0..255\)"),
    ],
)
def test_images_that_are_not_unsigned_bytes_are_refused_naming_the_file(tmp_path, code, images, message):
    """Float 300 loaded as 1.18 and int8 -5 as -0.02: outside the promised [0, 1]."""
    write_idx_dir(tmp_path, train=3, side=2)
    spoiled = tmp_path / IDX_FILES[0]  # the train images, as an IDX file of another element type
    header = bytes([0, 0, code, 3]) + np.array(images.shape, dtype=">i4").tobytes()
    spoiled.write_bytes(gzip.compress(header + images.tobytes()))
    with pytest.raises(DataUnavailable, match=f"mine: {spoiled} {message}"):
        data.load_idx_dir(tmp_path, "mine")


class Short(http.server.BaseHTTPRequestHandler):
    """Announces ``server.body``'s length, sends its first 1000 bytes and closes the connection."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body[:1000])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_body_that_ends_early_is_reported_as_such_not_as_a_checksum_mismatch(tmp_path):
    body = bytes(range(256)) * 100
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    httpd.body = body
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/file"
        with pytest.raises(DataUnavailable, match=f"{url} failed: the body ended after 1000 of 25600 bytes"):
            download(url, tmp_path / "cache" / "file", hashlib.md5(body).hexdigest())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.parametrize("md5", ["xyz", "0" * 31, "g" * 32, None])
def test_an_md5_that_is_not_32_hex_digits_is_refused_before_downloading(server, tmp_path, md5):
    """'xyz' was taken: the whole file came down, then 'checksum mismatch ... expected xyz'."""
    url, sums, httpd = server
    httpd.fail_with = 500  # a download would be a DataUnavailable, not the ValueError
    with pytest.raises(ValueError, match=f"md5 must be an MD5 sum of 32 hex digits, got {re.escape(repr(md5))}"):
        download(f"{url}/{IDX_FILES[0]}", tmp_path / IDX_FILES[0], md5)
    with pytest.raises(ValueError, match=f"the MD5 sum of {IDX_FILES[1]} must be an MD5 sum of 32 hex digits"):
        fetch_mnist(tmp_path / "cache", url, {**sums, IDX_FILES[1]: md5})
    assert not (tmp_path / "cache").exists()  # refused before the first file came down


def test_a_download_sweeps_what_a_killed_download_of_the_same_file_left(server, tmp_path):
    """A SIGKILLed download leaves its temporary file (the process cannot clean up): the next download of
    that file removes it, once its process is gone, so the cache holds no partial file for long."""
    url, sums, _ = server
    root = tmp_path / "cache"
    root.mkdir()
    seen = []
    write_atomic(root / "probe", lambda f: seen.extend(os.listdir(root)))  # .tmp-<pid>@<host>-XXXX-probe
    (root / "probe").unlink()
    host = seen[0].split("@", 1)[1].split("-", 1)[0]
    child = subprocess.Popen(["true"])
    child.wait()  # a process id that no longer runs: the killed download's
    stale = root / f".tmp-{child.pid}@{host}-k1ll3d00-{IDX_FILES[0]}"
    live = root / f".tmp-{os.getpid()}@{host}-l1ve0000-{IDX_FILES[0]}"  # a download under way in this process
    for path in (stale, live):
        path.write_bytes(b"partial")
    fetch_mnist(root, url, sums)
    assert sorted(os.listdir(root)) == sorted([*IDX_FILES, live.name])
