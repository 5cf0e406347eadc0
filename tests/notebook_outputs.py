"""Expected outputs of the labs' checked cells, kept beside the notebooks so that git holds them stripped.

Cells tagged ``nbval-check-output`` (a cell tag, nbval's own, not a comment in the learner's code) print
deterministic text. Their expected stdout lives in
``labs/expected_outputs.json`` (notebook name -> cell id -> text); ``with_expected_outputs`` puts it
back into a copy of a stripped notebook for nbval to compare. After changing such a cell, record
its output again (needs the lab extras, for nbclient):

    APPROXDROP_CI=1 python tests/notebook_outputs.py [LAB ...]

(``LAB``: notebook names such as ``00_start_here.ipynb``; only those are recorded again, the others kept.)
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

LABS = Path(__file__).resolve().parents[1] / "labs"
EXPECTED = LABS / "expected_outputs.json"
CHECK_TAG = "nbval-check-output"


def is_checked(cell: dict) -> bool:
    return cell["cell_type"] == "code" and CHECK_TAG in cell.get("metadata", {}).get("tags", [])


def load_expected() -> dict[str, dict[str, str]]:
    return json.loads(EXPECTED.read_text())


def with_expected_outputs(notebook: dict, expected: dict[str, str]) -> dict:
    """A copy of ``notebook`` whose checked cells carry their expected stdout (and an execution
    count, without which nbval ignores stored outputs)."""
    filled = copy.deepcopy(notebook)
    for count, cell in enumerate((c for c in filled["cells"] if is_checked(c)), start=1):
        cell["execution_count"] = count
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": expected[cell["id"]]}]
    return filled


def record(path: Path) -> dict[str, str]:
    """Run a notebook in CI mode and return the stdout of each checked cell."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(LABS)}}).execute()
    return {
        cell["id"]: "".join(o.get("text", "") for o in cell["outputs"] if o.get("name") == "stdout")
        for cell in notebook["cells"]
        if is_checked(cell)
    }


def main() -> int:
    if os.environ.get("APPROXDROP_CI") != "1":
        print("set APPROXDROP_CI=1: expected outputs are those of CI mode", file=sys.stderr)
        return 2
    names = sys.argv[1:]
    paths = sorted(LABS.glob("[!.]*.ipynb"))
    unknown = set(names) - {path.name for path in paths}
    if unknown:
        print(f"no such lab: {sorted(unknown)}", file=sys.stderr)
        return 2
    expected = load_expected() if names else {}
    expected.update({path.name: record(path) for path in paths if not names or path.name in names})
    expected = dict(sorted(expected.items()))
    EXPECTED.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED} ({sum(map(len, expected.values()))} checked cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
