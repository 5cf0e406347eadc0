"""The course site (``scripts/site.sh``) built at CI size, for tests/test_site.py and the browser suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_outputs import LABS

SCRIPT = LABS.parent / "scripts" / "site.sh"
BUILD_S = 1500  # the whole CI-size build: about 125 s on two quiet cores; CI once needed over 600 s


def lab_names() -> list[str]:
    """The labs' stems (``00_start_here``, ...): one page each."""
    return sorted(path.stem for path in LABS.glob("[0-9]*.ipynb"))


def build_site(out: Path) -> subprocess.CompletedProcess:
    """``APPROXDROP_CI=1 bash scripts/site.sh --ci out`` with this interpreter's venv; fails the test on error."""
    env = {**os.environ, "APPROXDROP_CI": "1", "VENV": sys.prefix}
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), "--ci", str(out)], env=env, capture_output=True, text=True, timeout=BUILD_S
        )
    except subprocess.TimeoutExpired as late:  # say which lab it was on: the script prints each lab's time
        printed = "".join(_text(t) for t in (late.stdout, late.stderr))
        pytest.fail(f"site.sh did not finish in {BUILD_S} s; its output so far:\n{printed[-3000:]}")
    assert done.returncode == 0, f"site.sh failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")
