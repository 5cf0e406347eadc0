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
