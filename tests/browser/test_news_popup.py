"""JupyterLab's news popup ("Would you like to get notified about official Jupyter news?") stays off with the
course's settings: binder/overrides.json, which scripts/labs.sh merges into the venv's JupyterLab settings and
binder/postBuild copies there. A bare JupyterLab (no overrides) shows the popup, so the test can tell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import _free_port, _stop, _wait_until_up
from notebook_outputs import LABS

pytestmark = pytest.mark.browser
QUESTION = "official Jupyter news"
SETTLE_S = 6  # the popup appears once the app has restored; give it time to


def news_popup_shown(browser, tmp_path, overrides: bool) -> bool:
    """Start JupyterLab with empty user settings and its own app settings folder (holding the course's
    overrides.json or nothing), open it in the browser, and say whether the news question appears."""
    app_settings = tmp_path / "app-settings"
    app_settings.mkdir(parents=True)
    if overrides:
        shutil.copy(LABS.parent / "binder" / "overrides.json", app_settings / "overrides.json")
    token = "news-check"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1"]
    command += [f"--ServerApp.port={_free_port()}", f"--IdentityProvider.token={token}"]
    command += [f"--ServerApp.root_dir={LABS}", f"--LabApp.app_settings_dir={app_settings}"]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = _wait_until_up(server, tmp_path / "runtime", token, log)
        page = browser.new_page()
        try:
            page.goto(f"{base}lab?token={token}", timeout=90_000)
            page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and QUESTION not in page.content():
                time.sleep(0.5)
            return QUESTION in page.content()
        finally:
            page.close()
    finally:
        _stop(server)


def test_the_course_settings_keep_the_news_popup_off(browser, tmp_path):
    assert news_popup_shown(browser, tmp_path / "bare", overrides=False), "control: a bare JupyterLab asks"
    assert not news_popup_shown(browser, tmp_path / "course", overrides=True), "the course's overrides.json"
