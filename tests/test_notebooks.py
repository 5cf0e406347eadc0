"""The labs: committed without outputs, and each runs top to bottom under nbval in CI mode.

Cells tagged ``nbval-check-output`` (nbval's cell tag: no plumbing in the learner's code) print
deterministic text; their expected output is kept in ``labs/expected_outputs.json`` (see
tests/notebook_outputs.py) and put back into a temporary copy of the notebook, so that nbval compares
it while git holds the notebooks stripped. ``--nbval-lax`` runs
every other cell without comparing. Every labs/*.ipynb is picked up, whoever wrote it.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
from notebook_outputs import LABS, is_checked, load_expected, with_expected_outputs

NOTEBOOKS = sorted(LABS.glob("[!.]*.ipynb"))  # not the .nbval-* copies a running test leaves beside them
SANITIZE = LABS / "nbval_sanitize.cfg"
BOUND_S = 60  # a bound that catches a lab left at full size in CI mode, not a speed claim


def test_there_are_labs():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_stripped(path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("execution_count") is None, f"{path.name} cell {i}: execution count"
            assert cell.get("outputs") == [], f"{path.name} cell {i}: outputs must be stripped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_checked_cell_has_exactly_one_expected_output(path):
    checked = {c["id"] for c in json.loads(path.read_text())["cells"] if is_checked(c)}
    assert checked, f"{path.name}: no cell checks its output"
    assert set(load_expected().get(path.name, {})) == checked


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_output_checks_are_cell_tags_not_comments(path):
    """nbval also honours a ``# NBVAL_CHECK_OUTPUT`` comment; the labs keep that plumbing off the page."""
    sources = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]
    assert not [s for s in sources if "NBVAL_" in s], f"{path.name}: an nbval comment in a cell"


EXERCISE_HEADING = re.compile(r"^#+ .*\b(Exercise|Warm-up)\b", re.M)
HEADER = re.compile(r"\*\*Difficulty:\*\* (easy|medium|hard) · \*\*Time:\*\* about \d+ minutes")
HINT = re.compile(r"<details><summary>Hint[^<]*</summary>\n\n.+?\n\n</details>", re.S)


def exercises(cells: list[dict]) -> list[tuple[str, str]]:
    """(code cell id, the markdown cell before it) for every exercise: a code cell the learner completes
    (it raises NotImplementedError until then)."""
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and "raise NotImplementedError" in "".join(cell["source"]):
            spec = next((c for c in reversed(cells[:i]) if c["cell_type"] == "markdown"), None)
            found.append((cell["id"], "".join(spec["source"]) if spec else ""))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_header_and_a_hint(path):
    """Each exercise: a heading, its difficulty and time, and at least one collapsed hint, in the markdown cell
    right before the code the learner completes."""
    found = exercises(json.loads(path.read_text())["cells"])
    if path.name[:2] != "00":
        assert found, f"{path.name}: no exercise"
    for cell_id, spec in found:
        assert EXERCISE_HEADING.search(spec), f"{path.name} {cell_id}: no exercise heading before it"
        assert HEADER.search(spec), f"{path.name} {cell_id}: no '**Difficulty:** ... · **Time:** about N minutes'"
        assert HINT.search(spec), f"{path.name} {cell_id}: no <details><summary>Hint</summary> block"


def test_the_exercise_scan_finds_a_missing_hint():
    cells = [
        {"cell_type": "markdown", "source": ["### Exercise 1: x\n\n**Difficulty:** easy · **Time:** about 5 minutes"]},
        {"cell_type": "code", "id": "c", "source": ["def f():\n", "    raise NotImplementedError"]},
    ]
    ((_, spec),) = exercises(cells)
    assert HEADER.search(spec) and not HINT.search(spec)
    assert HINT.search(spec + "\n\n<details><summary>Hint</summary>\n\nuse x\n\n</details>")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_ci_mode(path, capsys):
    filled = with_expected_outputs(json.loads(path.read_text()), load_expected()[path.name])
    copy = LABS / f".nbval-{path.name}"  # beside the original: the kernel runs in labs/
    copy.write_text(json.dumps(filled))
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q"]
    command += ["--nbval-sanitize-with", str(SANITIZE), str(copy)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            cwd=LABS.parent,
            env={**os.environ, "APPROXDROP_CI": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        copy.unlink()
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n  nbval {path.name}: {elapsed:.1f} s", end="")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert elapsed < BOUND_S, f"{path.name} took {elapsed:.1f} s in CI mode (bound {BOUND_S} s)"
