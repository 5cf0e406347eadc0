"""``scripts/labs.sh`` turns JupyterLab's news popup and update check off: it merges binder/overrides.json
into the venv's JupyterLab settings (keeping other plugins' settings) and starts the server without a
news feed. Run against a stub venv whose pip and jupyter only record what they were asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTIFICATION = "@jupyterlab/apputils-extension:notification"


def stub_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    for tool in ("pip", "jupyter"):
        script = venv / "bin" / tool
        script.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{tmp_path}/{tool}.args"\n')
        script.chmod(0o755)
    return venv


def run_labs(venv: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(venv)}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "labs.sh"), "--no-browser"], env=env, capture_output=True, text=True, timeout=60
    )


def test_labs_script_turns_the_news_popup_off(tmp_path):
    venv = stub_venv(tmp_path)
    settings = venv / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}}))
    done = run_labs(venv)
    assert done.returncode == 0, done.stderr
    merged = json.loads(settings.read_text())
    assert merged[NOTIFICATION] == {"fetchNews": "false", "checkForUpdates": False}
    assert merged["@jupyterlab/notebook-extension:tracker"] == {"windowingMode": "none"}, "other settings kept"
    args = (tmp_path / "jupyter.args").read_text()
    assert args.startswith("lab labs/") and "--LabApp.news_url=None" in args and "--no-browser" in args


def test_the_overrides_name_a_setting_that_jupyterlab_has():
    """fetchNews / checkForUpdates are properties of the installed JupyterLab's notification schema."""
    overrides = json.loads((ROOT / "binder" / "overrides.json").read_text())[NOTIFICATION]
    schema_path = Path(sys.prefix, "share", "jupyter", "lab", "schemas", "@jupyterlab", "apputils-extension")
    schema = json.loads((schema_path / "notification.json").read_text())
    assert set(overrides) <= set(schema["properties"])
    assert overrides["fetchNews"] in {choice["const"] for choice in schema["properties"]["fetchNews"]["oneOf"]}
    assert overrides["fetchNews"] != schema["properties"]["fetchNews"]["default"], "the default asks (the popup)"
