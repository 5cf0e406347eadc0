"""Every lab in JupyterLab in headless Chromium: run all cells, no error, every widget drawn, a
screenshot; then the interactive panels moved through the page, their figures read back from it."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest
from notebook_outputs import LABS

try:
    from lab_page import Lab, figure_data, wait_until_figure_differs
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect
except ImportError as missing:
    if os.environ.get("CI"):
        pytest.fail(
            f"CI is set but {missing}: the browser tests cannot run (.ci/run installs playwright)", pytrace=False
        )
    pytest.skip(f"{missing} (pip install playwright)", allow_module_level=True)

pytestmark = pytest.mark.browser

NOTEBOOKS = sorted(p.name for p in LABS.glob("*.ipynb"))
RACES = [  # a Start button that trains, curves that grow
    "05_training.ipynb",
    "07_lstm_language_model.ipynb",
    "08_ard_in_your_own_model.ipynb",
]
INTERACTIVE = {"02_row_patterns.ipynb", "04_the_search.ipynb", *RACES}
TRAIN_STEPS = 30  # the panel redraws every 10 steps
# every length the first loss curve takes in the page: recorded after each redraw (a DOM mutation)
RECORD_LENGTHS = """el => {
  window.lengths = [el.data[0]?.x?.length ?? 0];
  window.recorder = new MutationObserver(() => {
    const n = el.data[0]?.x?.length ?? 0;
    if (n !== lengths[lengths.length - 1]) lengths.push(n);
  });
  recorder.observe(el, {childList: true, subtree: true, attributes: true});
}"""


class OpenLabs:
    """Each lab opened and run once; the interactive ones stay open for the interaction tests."""

    def __init__(self, browser, jupyter, screenshots) -> None:
        self.browser, self.jupyter, self.screenshots = browser, jupyter, screenshots
        self.open: dict = {}
        self.problems: dict[str, list[str]] = {}

    def run(self, name: str) -> list[str]:
        """Open ``name``, run all cells, save a screenshot; what went wrong (empty when all is well)."""
        lab = self.open[name] = Lab(self.browser, self.jupyter, name)
        try:
            state = lab.run_all()
        except PlaywrightTimeout as timeout:
            problems = [f"cells still running: {timeout}"]
        else:
            problems = state["errors"] + [f"code cell {i} did not run" for i, n in enumerate(state["counts"]) if not n]
            problems += lab.undrawn() + [f"{cell}: Error displaying widget" for cell in lab.widget_errors()]
        lab.screenshot(self.screenshots / name.replace(".ipynb", ".png"))
        if problems and lab.console:
            problems.append("browser console errors:\n" + "\n".join(lab.console[-10:]))
        self.problems[name] = problems
        return problems

    def get(self, name: str):
        """The lab, run without problems (run now if no test ran it yet)."""
        if name not in self.problems:
            self.run(name)
        if self.problems[name]:
            pytest.fail(f"{name} did not run cleanly: {self.problems[name]}")
        return self.open[name]

    def close(self, name: str) -> None:
        self.open.pop(name).close()


@pytest.fixture(scope="module")
def labs(browser, jupyter, screenshots):
    opened = OpenLabs(browser, jupyter, screenshots)
    try:
        yield opened
    finally:
        for name in list(opened.open):
            opened.close(name)


def test_the_server_asks_for_the_token(jupyter):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{jupyter.base}api/contents", timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(jupyter.url("api/contents"), timeout=10) as reply:
        assert reply.status == 200


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_lab_runs_in_the_browser(labs, name):
    problems = labs.run(name)
    if name not in INTERACTIVE:
        labs.close(name)
    assert not problems, "\n".join(problems)


def test_row_pattern_slider_redraws_the_figure(labs, screenshots):
    lab = labs.get("02_row_patterns.ipynb")
    panel = lab.widget(".widget-slider")
    figure = panel.locator(".js-plotly-plot").first
    dp = panel.locator(".widget-slider", has=lab.page.get_by_text("dp", exact=True))
    start = int(dp.locator(".widget-readout").inner_text())
    before = figure_data(figure)
    panel.screenshot(path=screenshots / "02_row_patterns-before.png")
    dp.locator(".noUi-handle").focus()
    dp.locator(".noUi-handle").press("ArrowRight")
    expect(dp.locator(".widget-readout")).to_have_text(str(start + 1), timeout=10_000)
    after = wait_until_figure_differs(figure, before)
    panel.screenshot(path=screenshots / "02_row_patterns-after.png")
    assert after != before


def test_search_dropdown_redraws_the_figure(labs, screenshots):
    lab = labs.get("04_the_search.ipynb")
    panel = lab.widget(".widget-dropdown")
    figure = panel.locator(".js-plotly-plot").first
    units = panel.locator(".widget-dropdown", has=lab.page.get_by_text("n units", exact=True)).locator("select")
    before = figure_data(figure)
    panel.screenshot(path=screenshots / "04_the_search-before.png")
    units.select_option(label="256")
    after = wait_until_figure_differs(figure, before)
    panel.screenshot(path=screenshots / "04_the_search-after.png")
    assert after != before


@pytest.mark.parametrize("name", RACES)
def test_training_start_button_grows_the_live_curves(labs, screenshots, name):
    lab = labs.get(name)
    panel = lab.widget(".widget-button:has-text('Start')")
    figure = panel.locator(".js-plotly-plot").first
    steps = panel.locator(".widget-text", has=lab.page.get_by_text("steps", exact=True)).locator("input")
    steps.fill(str(TRAIN_STEPS))
    steps.press("Enter")
    figure.evaluate(RECORD_LENGTHS)
    panel.get_by_role("button", name="Start").click()
    lab.page.wait_for_function(
        "([el, n]) => el.data[0]?.x?.length === n", arg=[figure.element_handle(), TRAIN_STEPS], timeout=120_000
    )
    expect(panel.get_by_role("button", name="Start")).to_be_enabled(timeout=30_000)
    lengths = figure.evaluate("() => { window.recorder.disconnect(); return window.lengths; }")
    panel.screenshot(path=screenshots / name.replace(".ipynb", "-after.png"))
    grew = lengths[lengths.index(min(lengths)) :]  # from Start's reset on: e.g. 0, 10, 20, 30
    assert grew == sorted(grew) and grew[-1] == TRAIN_STEPS, lengths
    assert len([n for n in grew if 0 < n < TRAIN_STEPS]) >= 2, f"no live redraws while training: lengths {lengths}"
