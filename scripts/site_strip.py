"""Strip the plumbing from an executed notebook before it becomes a static page (scripts/site.sh).

A static page has no kernel, so a widget cannot render there; what it leaves is its text fallback:
``FigureWidget({...})`` (hundreds of lines of figure data), ``VBox(children=(HBox(...`` above a panel,
or a progress bar frozen at its first draw (``0%| | 0/40``). Every lab shows a static copy of each
panel right after it (``approxdrop.course.display.show``), so these outputs carry nothing a reader
needs. Dropped: every output that is a widget view (``application/vnd.jupyter.widget-view+json``),
and any output whose only text is a widget repr or a progress bar.

    python scripts/site_strip.py NOTEBOOK.ipynb      (rewrites it in place; prints what it dropped)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# the repr of an ipywidgets / plotly widget: FigureWidget({, VBox(children=, HBox(children=, IntSlider(value=
WIDGET_REPR = re.compile(r"^\s*(FigureWidget\(\{|[A-Z]\w*\((children|value|layout|description)=)")
# a tqdm bar: "  0%|          | 0/40 [00:00<?, ?it/s]", "training: 100%|##########| 40/40 [...]"
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+")


def text_of(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def is_plumbing(output: dict) -> bool:
    """True for a widget view, a widget's text repr, or a progress bar (all a static page can show of them)."""
    data = output.get("data", {})
    if WIDGET_VIEW in data:
        return True
    rich = [key for key in data if key != "text/plain"]
    text = text_of(output)
    if output.get("output_type") in ("display_data", "execute_result") and not rich and WIDGET_REPR.match(text):
        return True
    return bool(text) and all(PROGRESS_BAR.search(line) for line in re.split(r"[\r\n]+", text.strip()))


def strip(notebook: dict) -> int:
    """Drop the plumbing outputs of every code cell in place; return how many were dropped."""
    dropped = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        kept = [o for o in cell.get("outputs", []) if not is_plumbing(o)]
        dropped += len(cell.get("outputs", [])) - len(kept)
        cell["outputs"] = kept
    return dropped


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        notebook = json.loads(path.read_text(encoding="utf-8"))
        dropped = strip(notebook)
        path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
        print(f"  {path.name}: {dropped} widget / progress-bar outputs stripped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
