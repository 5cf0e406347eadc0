"""The course site (``bash scripts/site.sh``) built at CI size: a page per lab, executed without errors, its
plotly figures carried as HTML with plotly.js inlined (no CDN), and an index that links every page."""

from __future__ import annotations

import os
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
        self._href: str | None = None
        self._script = False
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

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None
        elif tag == "script":
            self._script = False

    def handle_data(self, data):
        if self._href is not None:
            self.links[self._href] += data
        if self._script:
            self.inline[-1] += data


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
