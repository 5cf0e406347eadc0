"""The README's code runs as written (docs that match the code)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README shows the library in code"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_gives_the_two_commands():
    text = README.read_text()
    assert "bash scripts/labs.sh" in text and "bash scripts/test.sh" in text
    for script in ("scripts/labs.sh", "scripts/test.sh", ".ci/run"):
        assert (README.parent / script).exists(), script


def test_labs_command_serves_the_labs(tmp_path):
    """`bash scripts/labs.sh` (the README's main command) starts JupyterLab on the labs."""
    import contextlib
    import json
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "approxdrop-test"
    args = ["--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}"]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(
        ["bash", str(README.parent / "scripts" / "labs.sh"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, names = time.monotonic() + 180, None
        while time.monotonic() < deadline and names is None:
            assert server.poll() is None, f"scripts/labs.sh exited with {server.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
                    names = {item["name"] for item in json.load(r)["content"]}
            except OSError:
                time.sleep(1)
        assert names is not None, "JupyterLab did not answer within 180 s"
        assert {"00_start_here.ipynb", "06_inside_the_kernels.ipynb"} <= names
    finally:
        with contextlib.suppress(ProcessLookupError):  # it exited already: the assertion above says how
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
