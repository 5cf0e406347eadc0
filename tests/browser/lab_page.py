"""One lab open in JupyterLab in the browser: run all cells through the Run menu, wait on the kernel
and the cells' execution counts, list what went wrong, read plotly figures' data from the page.

State is read from JupyterLab's own models (``window.jupyterapp``, exposed by the server fixture);
actions go through the page like a learner's (menu, sliders, dropdowns, buttons).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

OPEN_S = 60  # the page and a first idle kernel
RUN_S = 120  # all cells of one lab in CI mode (nbval's bound is 60 s)
RENDER_S = 30  # widgets and figures drawn after the last cell ran

PANEL = "[...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path)"
KERNEL_IDLE = f"""path => {{
  const panel = window.jupyterapp && {PANEL};
  return !!(panel && panel.sessionContext.session?.kernel && panel.sessionContext.kernelDisplayStatus === 'idle');
}}"""
STATE = f"""path => {{
  const panel = {PANEL};
  const cells = [...panel.content.model.cells].filter(c => c.type === 'code');
  const errors = [];
  cells.forEach((c, i) => c.outputs.toJSON().forEach(o => {{
    if (o.output_type === 'error') errors.push(`code cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`);
  }}));
  const idle = panel.sessionContext.kernelDisplayStatus === 'idle';
  return {{idle, counts: cells.map(c => c.executionCount), errors}};
}}"""
RAN = f"path => {{ const s = ({STATE})(path); return s.idle && (s.errors.length > 0 || s.counts.every(n => n)); }}"
# outputs not drawn yet: a widget view with no content, a plotly div without its SVG
UNDRAWN = f"""path => {{
  const panel = {PANEL};
  const undrawn = [];
  panel.content.widgets.forEach((cell, i) => {{
    if (cell.model.type !== 'code') return;
    const outputs = cell.model.outputs.toJSON();
    const children = cell.outputArea.widgets;
    if (children.length !== outputs.length) {{ undrawn.push(`cell ${{i}}: outputs not attached`); return; }}
    outputs.forEach((o, k) => {{
      const node = children[k].node, data = o.data || {{}};
      if ('application/vnd.jupyter.widget-view+json' in data && !(node.innerText.trim() || node.querySelector('svg')))
        undrawn.push(`cell ${{i}} output ${{k}}: widget`);
      if ('application/vnd.plotly.v1+json' in data && !node.querySelector('.js-plotly-plot .main-svg'))
        undrawn.push(`cell ${{i}} output ${{k}}: plotly figure`);
    }});
    cell.node.querySelectorAll('.js-plotly-plot').forEach(p => {{
      if (!p.querySelector('.main-svg')) undrawn.push(`cell ${{i}}: a plotly figure in a widget`);
    }});
  }});
  return undrawn;
}}"""
WIDGET_ERRORS = f"""path => {{
  const panel = {PANEL};
  return panel.content.widgets.map((c, i) => [i, c.node.innerText])
    .filter(([i, text]) => text.includes('Error displaying widget')).map(([i, text]) => `cell ${{i}}`);
}}"""
# a figure's traces as JSON (typed arrays as lists): what plotly draws, read from the page
FIGURE_DATA = (
    "el => JSON.stringify(el.data.map(t => [t.x, t.y, t.z]), (k, v) => ArrayBuffer.isView(v) ? Array.from(v) : v)"
)


class Lab:
    """``name`` (a notebook in the server's root) open in a fresh browser context."""

    def __init__(self, browser, jupyter, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(30_000)
        self.page: Page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text[:300]))
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"[:300]))
        workspace = Path(name).stem  # one workspace per lab: no tabs restored from another lab's page
        self.page.goto(jupyter.url(f"lab/workspaces/{workspace}/tree/{name}"), timeout=OPEN_S * 1000)
        self.page.wait_for_function(KERNEL_IDLE, arg=name, timeout=OPEN_S * 1000, polling=250)
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

    def run_all(self) -> dict:
        """Run > Run All Cells; wait until the kernel is idle with every code cell run (or one failed)."""
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        self.page.wait_for_function(RAN, arg=self.name, timeout=RUN_S * 1000, polling=250)
        return self.page.evaluate(STATE, self.name)

    def undrawn(self) -> list[str]:
        """Wait (bounded) for every widget and figure to be drawn; what still is not."""
        try:
            self.page.wait_for_function(f"p => ({UNDRAWN})(p).length === 0", arg=self.name, timeout=RENDER_S * 1000)
        except PlaywrightTimeout:
            pass  # reported by the caller, with what is missing
        return self.page.evaluate(UNDRAWN, self.name)

    def widget_errors(self) -> list[str]:
        return self.page.evaluate(WIDGET_ERRORS, self.name)

    def screenshot(self, path: Path) -> None:
        """The whole notebook in one image: a viewport as tall as the notebook, scrolled to the top."""
        scroller = f"{PANEL}.node.querySelector('.jp-WindowedPanel-outer')"
        height = self.page.evaluate(f"path => {scroller}.scrollHeight", self.name)
        self.page.set_viewport_size({"width": 1400, "height": min(height + 200, 15_000)})
        self.page.evaluate(f"path => {scroller}.scrollTo(0, 0)", self.name)
        self.page.screenshot(path=path)
        self.page.set_viewport_size({"width": 1400, "height": 1000})

    def widget(self, control: str) -> Locator:
        """The widget output that holds ``control`` (a CSS selector)."""
        return self.page.locator(".jp-OutputArea-output", has=self.page.locator(control)).first

    def close(self) -> None:
        with contextlib.suppress(PlaywrightError):  # the server shuts it down anyway; wait at most 10 s
            shutdown = f"{PANEL}.sessionContext.shutdown()"
            self.page.evaluate(f"path => Promise.race([{shutdown}, new Promise(r => setTimeout(r, 10000))])", self.name)
        self.context.close()


def figure_data(figure: Locator) -> str:
    return figure.evaluate(FIGURE_DATA)


def wait_until_figure_differs(figure: Locator, before: str, timeout_s: float = 60) -> str:
    """The figure's data once it differs from ``before`` (a ``figure_data`` string)."""
    try:
        figure.page.wait_for_function(
            f"([el, before]) => ({FIGURE_DATA})(el) !== before",
            arg=[figure.element_handle(), before],
            timeout=timeout_s * 1000,
            polling=100,
        )
    except PlaywrightTimeout:
        raise AssertionError(f"the figure's data in the page did not change within {timeout_s} s") from None
    return figure_data(figure)
