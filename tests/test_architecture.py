"""The layering contract (pyproject.toml, [tool.importlinter]): the package's folders import one way
only, and the check really fails on a back edge."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[test]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent), "HOME": str(root)}
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_are_kept():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, back_edge",
    [
        ("distribution.py", "from .search import distribution_for"),  # the old cycle, hidden in a function
        ("models/mlp.py", "from ..training import train"),
        ("training/race.py", "from ..course import check"),
    ],
)
def test_a_planted_back_edge_breaks_the_contract(tmp_path, module, back_edge):
    shutil.copytree(ROOT / "approxdrop", tmp_path / "approxdrop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "approxdrop" / module
    planted.write_text(planted.read_text() + f"\n\ndef _planted():\n    {back_edge}\n")
    done = lint(tmp_path)
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout + done.stderr
