"""Download edges against local servers on 127.0.0.1: a mirror URL given without its trailing slash, a body
one byte short of its Content-Length, and a server slow to answer inside the grace period."""

import gzip
import hashlib
import http.server
import os
import threading
import time
from functools import partial

import pytest

from approxdrop.data import IDX_FILES, DataUnavailable, download, fetch_mnist


def serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def stop(httpd) -> None:
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_mirror_url_without_a_trailing_slash_is_joined_with_one(tmp_path):
    """APPROXDROP_MNIST_URL=http://host/mnist (no slash) fetches http://host/mnist/<file>."""
    served = tmp_path / "served" / "mnist"
    served.mkdir(parents=True)
    sums = {}
    for name in IDX_FILES:
        path = served / name
        path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])))
        sums[name] = hashlib.md5(path.read_bytes()).hexdigest()
    httpd, url = serve(partial(Quiet, directory=str(tmp_path / "served")))
    try:
        root = fetch_mnist(tmp_path / "cache", f"{url}/mnist", sums)
    finally:
        stop(httpd)
    assert sorted(os.listdir(root)) == sorted(IDX_FILES)


class Short(http.server.BaseHTTPRequestHandler):
    """Announces ``server.body``'s length and sends all of it but the last byte."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body[:-1])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_body_one_byte_short_is_reported_as_ended_early(tmp_path):
    httpd, url = serve(Short)
    httpd.body = bytes(range(100))
    try:
        with pytest.raises(DataUnavailable, match="failed: the body ended after 99 of 100 bytes"):
            download(f"{url}/file", tmp_path / "file", hashlib.md5(httpd.body).hexdigest())
    finally:
        stop(httpd)
    assert os.listdir(tmp_path) == []


class Late(http.server.BaseHTTPRequestHandler):
    """Waits 0.3 s, then answers 100 bytes at once."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        time.sleep(0.3)
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(bytes(100))

    def log_message(self, *args):
        pass


def test_a_slow_start_inside_the_grace_period_is_not_cut_off(tmp_path):
    """100 bytes after 0.3 s is below 1000 bytes/s, but the rate counts only once the grace period is over."""
    httpd, url = serve(Late)
    try:
        dest = download(
            f"{url}/file",
            tmp_path / "file",
            hashlib.md5(bytes(100)).hexdigest(),
            min_rate=1000,
            grace=30,
        )
    finally:
        stop(httpd)
    assert dest.read_bytes() == bytes(100)


@pytest.mark.parametrize("url", ["http:/mnist/file", "https:///file"])
def test_a_url_without_a_host_is_refused_as_a_bad_url_before_anything_is_written(tmp_path, url):
    """A one-slash typo leaves no host: named as a bad download URL, and no cache folder is made for it."""
    with pytest.raises(DataUnavailable, match=f"bad download URL {url!r}: expected https://HOST/PATH"):
        download(url, tmp_path / "cache" / "file", "0" * 32)
    assert not (tmp_path / "cache").exists()
