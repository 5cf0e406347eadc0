"""The course site (``bash scripts/site.sh``) built at CI size: a page per lab, executed without errors, its
plotly figures carried as HTML with plotly.js inlined (no CDN), and an index that links every page."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from notebook_outputs import LABS
from site_build import SCRIPT, lab_names


class Page(HTMLParser):
    """What a page holds: its links (href -> text), script sources, inline scripts, plotly figure divs."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.links: dict[str, str] = {}
        self.sources: list[str] = []
        self.inline: list[str] = []
        self.figures = 0
        self.text: list[str] = []  # what the page shows: every text node outside scripts and styles
        self._href: str | None = None
        self._script = False
        self._style = False
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self._href = attrs["href"]
            self.links[self._href] = ""
        elif tag == "script":
            self._script = "src" not in attrs
            if "src" in attrs:
                self.sources.append(attrs["src"])
            else:
                self.inline.append("")
        elif tag == "div" and "plotly-graph-div" in (attrs.get("class") or "").split():
            self.figures += 1
        elif tag == "style":
            self._style = True

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None
        elif tag == "script":
            self._script = False
        elif tag == "style":
            self._style = False

    def handle_data(self, data):
        if self._href is not None:
            self.links[self._href] += data
        if self._script:
            self.inline[-1] += data
        elif not self._style:
            self.text.append(data)


SPEC = importlib.util.spec_from_file_location("site_strip", SCRIPT.parent / "site_strip.py")
site_strip = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(site_strip)
# what a widget leaves in a static page: its repr, or a progress bar frozen at its first draw
PLUMBING = re.compile(r"FigureWidget\(|VBox\(children|HBox\(children|\d+%\|[^|\n]*\|\s*\d+/\d+")


def first_heading(name: str) -> str:
    notebook = nbformat.read(LABS / f"{name}.ipynb", as_version=4)
    return next(
        line.lstrip("#").strip()
        for cell in notebook.cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("#")
    )


@pytest.fixture(scope="module")
def site(ci_site) -> Path:
    return ci_site


def test_every_lab_has_a_page_and_the_index_links_it_by_its_title(site):
    assert sorted(p.stem for p in site.glob("*.html") if p.name != "index.html") == lab_names()
    links = Page(site / "index.html").links
    assert links == {f"{name}.html": first_heading(name) for name in lab_names()}


@pytest.mark.parametrize("name", lab_names())
def test_page_holds_plotly_figures_with_plotlyjs_inlined_and_no_errors(site, name):
    path = site / f"{name}.html"
    page, text = Page(path), path.read_text(encoding="utf-8")
    assert page.figures > 0, f"{name}: no plotly figure div"
    assert sum("Plotly.newPlot(" in s for s in page.inline) == page.figures, f"{name}: a figure is not drawn"
    plotlyjs = [s for s in page.inline if "window.Plotly = Plotly" in s]
    assert len(plotlyjs) == 1, f"{name}: plotly.js inlined {len(plotlyjs)} times"
    # (the bundle itself names cdn.plot.ly, as a default for map data: only script sources count)
    assert not [src for src in page.sources if "plot.ly" in src or "plotly" in src.lower()], page.sources
    assert "Traceback" not in text, f"{name}: an error output"
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in text, f"{name}: a cell wrote to stderr"
    assert "application/vnd.jupyter.widget-state+json" not in text, f"{name}: widget state (a CDN widget manager)"


@pytest.mark.parametrize("name", lab_names())
def test_page_shows_no_widget_repr_or_frozen_progress_bar(site, name):
    shown = "".join(Page(site / f"{name}.html").text)
    assert "plotly" in shown.lower() or "lab" in shown.lower(), f"{name}: the page's text was not read"
    found = sorted({m[0] for m in PLUMBING.finditer(shown)})
    assert not found, f"{name}: widget plumbing on the page: {found}"


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


MAX_FIGURE_WIDTH = 900  # px: a notebook's output area; wider figures are cut off or scroll


def figure_layouts(page: Page) -> list[dict]:
    """The layout of every figure drawn on a page: the third argument of each ``Plotly.newPlot(id, data, layout,
    config)`` call, decoded as JSON."""
    decoder, layouts = json.JSONDecoder(), []
    for script in page.inline:
        start = script.find("Plotly.newPlot(")
        if start < 0:
            continue
        at = start + len("Plotly.newPlot(")
        for _ in range(3):  # the id, the data, the layout
            while script[at] in " \n,":
                at += 1
            value, at = decoder.raw_decode(script, at)
        layouts.append(value)
    return layouts


@pytest.mark.parametrize("name", lab_names())
def test_page_figures_fit_a_notebook(site, name):
    page = Page(site / f"{name}.html")
    layouts = figure_layouts(page)
    assert len(layouts) == page.figures, f"{name}: a figure's layout could not be read"
    wide = [(layout.get("title", {}).get("text"), layout["width"]) for layout in layouts if "width" in layout]
    assert all(width <= MAX_FIGURE_WIDTH for _, width in wide), f"{name}: figures wider than 900 px: {wide}"


def output(kind: str, **data) -> dict:
    if kind == "stream":
        return {"output_type": "stream", "name": "stderr", "text": data["text"]}
    return {"output_type": kind, "data": data, "metadata": {}}


@pytest.mark.parametrize(
    "out",
    [
        output(
            "display_data", **{"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "VBox()"}
        ),
        output("display_data", **{"text/plain": "FigureWidget({\n    'data': [...]\n})"}),
        output("execute_result", **{"text/plain": "VBox(children=(HBox(children=(IntSlider(value=3),)),))"}),
        output("stream", text="training:   0%|          | 0/40 [00:00<?, ?it/s]"),
        output("stream", text="  0%|   | 0/40\r 50%|#  | 20/40\r100%|## | 40/40\n"),
    ],
)
def test_site_strip_drops_widget_plumbing(out):
    notebook = {"cells": [{"cell_type": "code", "source": "", "outputs": [out]}]}
    assert site_strip.strip(notebook) == 1 and notebook["cells"][0]["outputs"] == []


@pytest.mark.parametrize(
    "out",
    [
        output("stream", text="row: 0.43x of dropout (50% of the units kept)\n"),
        output("display_data", **{"text/html": "<table></table>", "text/plain": "VBox(children=())"}),
        output("display_data", **{"text/plain": "<IPython.core.display.Markdown object>", "text/markdown": "| a |"}),
        output("execute_result", **{"text/plain": "tensor([1, 5, 9])"}),
    ],
)
def test_site_strip_keeps_what_a_reader_needs(out):
    notebook = {"cells": [{"cell_type": "code", "source": "", "outputs": [out]}]}
    assert site_strip.strip(notebook) == 0 and notebook["cells"][0]["outputs"] == [out]


def test_site_script_help_exits_0_with_usage(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("usage: bash scripts/site.sh"), done
    assert "--ci" in done.stdout and "OUT_DIR" in done.stdout
    assert not list(tmp_path.iterdir()), "--help builds nothing"


def test_site_script_takes_what_follows_double_dash_as_the_out_dir(tmp_path):
    """``-- -odd`` names OUT_DIR ``-odd`` (no 'unknown option'); the missing venv then stops it, before any work."""
    env = {**os.environ, "VENV": str(tmp_path / "no-venv")}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--", "-odd"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and "no-venv/bin/python not found" in done.stderr, done.stderr
    done = subprocess.run(["bash", str(SCRIPT), "--", "a", "b"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "more than one OUT_DIR" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args, message", [(["--bogus"], "unknown option '--bogus'"), (["a", "b"], "more than one OUT_DIR")]
)
def test_site_script_refuses_bad_arguments(tmp_path, args, message):
    done = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not list(tmp_path.iterdir()), "nothing is built on bad arguments"


def test_the_labs_ran_at_the_size_asked_for(site):
    """--ci: the kernel saw CI mode (lab 00 prints it)."""
    assert "ci mode: True" in (site / "00_start_here.html").read_text(encoding="utf-8")


def test_site_script_needs_the_venv(tmp_path):
    env = {**os.environ, "VENV": str(tmp_path / "no-venv")}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "no-venv/bin/python not found" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
