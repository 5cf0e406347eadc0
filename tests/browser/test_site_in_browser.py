"""The course site (``scripts/site.sh``, built at CI size) opened in headless Chromium from file://, with
every network request refused: the plotly figures of two pages must be drawn, with no page error."""

from __future__ import annotations

import os
import re

import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError as missing:
    if os.environ.get("CI"):
        pytest.fail(
            f"CI is set but {missing}: the browser tests cannot run (.ci/run installs playwright)", pytrace=False
        )
    pytest.skip(f"{missing} (pip install playwright)", allow_module_level=True)

pytestmark = pytest.mark.browser

PAGES = ["05_training", "07_lstm_language_model", "08_ard_in_your_own_model"]  # the race labs: the largest figures
DRAW_S = 60
# per plotly figure div: drawn by plotly.js (an SVG of non-zero size) with the traces plotly laid out
FIGURES = """() => [...document.querySelectorAll('.plotly-graph-div')].map(div => {
  const svg = div.matches('.js-plotly-plot') ? div.querySelector('.main-svg') : null;
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {drawn: !!svg && box.width > 0 && box.height > 0, traces: (div._fullData || []).length};
})"""
ALL_DRAWN = f"() => {{ const f = ({FIGURES})(); return f.length > 0 && f.every(x => x.drawn && x.traces > 0); }}"


@pytest.fixture(scope="module")
def site(browser, ci_site):  # browser first: no build when the suite skips
    return ci_site


@pytest.mark.parametrize("name", PAGES)
def test_site_page_draws_its_plotly_figures_offline(browser, site, screenshots, name):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    refused: list[str] = []
    errors: list[str] = []
    try:
        # offline, as CI and learners may be: every http(s) request is refused (the pages' MathJax and
        # require.js from a CDN fail; plotly.js must be in the page)
        context.route(re.compile(r"^https?://"), lambda route: (refused.append(route.request.url), route.abort()))
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)[:300]))
        page.goto((site / f"{name}.html").as_uri(), wait_until="load", timeout=DRAW_S * 1000)
        try:
            page.wait_for_function(ALL_DRAWN, timeout=DRAW_S * 1000, polling=250)
        except PlaywrightTimeout:
            pass  # reported below, figure by figure
        figures = page.evaluate(FIGURES)
        page.screenshot(path=screenshots / f"site_{name}.png", full_page=True)
    finally:
        context.close()
    assert figures, f"{name}: no plotly figure in the page"
    undrawn = [i for i, f in enumerate(figures) if not (f["drawn"] and f["traces"] > 0)]
    assert not undrawn, f"{name}: figures {undrawn} of {len(figures)} not drawn: {figures}; page errors: {errors}"
    assert not errors, f"{name}: page errors {errors}"
    assert not [url for url in refused if "plot" in url.lower()], f"{name}: plotly fetched from the network"
