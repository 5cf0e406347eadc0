"""The course site (``scripts/site.sh``) built at CI size, for tests/test_site.py and the browser suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from notebook_outputs import LABS

SCRIPT = LABS.parent / "scripts" / "site.sh"
BUILD_S = 600  # the whole CI-size build: about 90 s on two busy cores


def lab_names() -> list[str]:
    """The labs' stems (``00_start_here``, ...): one page each."""
    return sorted(path.stem for path in LABS.glob("[0-9]*.ipynb"))


def build_site(out: Path) -> subprocess.CompletedProcess:
    """``APPROXDROP_CI=1 bash scripts/site.sh --ci out`` with this interpreter's venv; fails the test on error."""
    env = {**os.environ, "APPROXDROP_CI": "1", "VENV": sys.prefix}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--ci", str(out)], env=env, capture_output=True, text=True, timeout=BUILD_S
    )
    assert done.returncode == 0, f"site.sh failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done
