"""Fixtures of the browser suite: JupyterLab on 127.0.0.1 (token on, CI mode, a temporary copy of the
labs) and Debian's Chromium driven by Playwright. Both are always shut down, also when a test fails."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from notebook_outputs import LABS

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 90
SERVER_STOP_S = 20
# JupyterLab user settings: every cell attached to the page (no windowing), no news or update checks
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
SCREENSHOTS = pytest.StashKey[Path]()


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: JupyterLab in headless Chromium (tests/browser)")


def pytest_terminal_summary(terminalreporter, config):
    if SCREENSHOTS in config.stash:
        terminalreporter.write_line(f"browser screenshots: {config.stash[SCREENSHOTS]}")


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the browser suite cannot run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}: the browser tests cannot run (.ci/run installs them)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory, pytestconfig) -> Path:
    """A temporary directory for the screenshots, named in the terminal summary."""
    path = tmp_path_factory.mktemp("lab-screenshots")
    pytestconfig.stash[SCREENSHOTS] = path
    return path


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright  # the test module skips (or fails under CI) without it

    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} not found (Debian package chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM (JupyterLab then shuts its kernels down), SIGKILL what is left, kernels included."""
    try:
        family = psutil.Process(server.pid).children(recursive=True)  # kernels run in sessions of their own
    except psutil.NoSuchProcess:
        family = []
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(SERVER_STOP_S)
    for process in family:
        try:
            process.kill()  # psutil checks that the pid was not reused
        except psutil.NoSuchProcess:
            pass


class JupyterServer:
    """A running JupyterLab: ``base`` its URL, ``url(path)`` with the token."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"


def _wait_until_up(server: subprocess.Popen, runtime: Path, token: str, log: Path) -> str:
    """The server's base URL (from its jpserver-<pid>.json) once /api/status answers."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        info = runtime / f"jpserver-{server.pid}.json"
        if info.exists():
            try:
                base = json.loads(info.read_text())["url"]
                with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        return base
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.25)
    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory, browser):
    """JupyterLab serving a copy of labs/ (autosave never touches the committed notebooks), in CI mode."""
    if importlib.util.find_spec("jupyterlab") is None:
        unavailable("JupyterLab is not installed in this environment")
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "labs"
    shutil.copytree(LABS, root, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    for name, values in SETTINGS.items():
        (base / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (base / "settings" / name).write_text(json.dumps(values))
    token = secrets.token_hex(24)
    env = {
        **os.environ,
        "APPROXDROP_CI": "1",
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
    }
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root"]
    command += ["--ServerApp.ip=127.0.0.1", f"--ServerApp.port={_free_port()}", f"--IdentityProvider.token={token}"]
    command += [
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",
    ]
    log = base / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = _wait_until_up(server, base / "runtime", token, log)
        yield JupyterServer(url, token)
    finally:
        _stop(server)
