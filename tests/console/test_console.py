"""The console in a real browser: headless Chromium (Debian's) driven by
Playwright, over a running `adpipe demo`.

While the demo's chain runs, the page must name every stage in its graph,
show non-zero rates that change from second to second, and, after the run,
the reconciliation per hour with no unexplained difference. Two screenshots
are saved (CI artefacts): the page while the chain runs
(ADPIPE_CONSOLE_SCREENSHOT with `-live` before its extension) and after the
run (ADPIPE_CONSOLE_SCREENSHOT).

  ADPIPE_BIN=target/debug/adpipe python -m pytest tests/console
"""

import os
import re
import select
import subprocess
import time

import pytest
from playwright.sync_api import sync_playwright

ADPIPE = os.environ.get("ADPIPE_BIN", "target/debug/adpipe")
BROWSER = os.environ.get("ADPIPE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = os.environ.get("ADPIPE_CONSOLE_SCREENSHOT", ".adpipe/console.png")
# Chromium's own connections to Google's services are refused on a closed
# network, many at a time: turned off.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STAGES = ["merger", "deduplicator", "joiner", "dispatcher", "loader (files)",
          "profiles (dc1)", "profiles (dc2)"]


@pytest.fixture()
def demo():
    """A demo run whose console lingers a minute after the run; its URL."""
    process = subprocess.Popen(
        [ADPIPE, "demo", "--events", "20000", "--console", "127.0.0.1:0", "--console-linger", "60s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    output = []
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            found = re.match(r"console: (http://\S+)", line)
            if found:
                url = found.group(1)
    assert url, "the demo printed no console address:\n" + "".join(output)
    yield process, url, output
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def cell(page, stage, column):
    return page.locator(f'#stages tr[data-stage="{stage}"] td.{column}').inner_text()


def test_the_console_shows_the_live_chain_and_its_reconciliation(demo):
    process, url, output = demo
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url)
        assert page.title() == "adpipe console"
        page.wait_for_function("document.body.dataset.updated > 0", timeout=30_000)
        assert page.locator("#title").inner_text() == "adpipe demo"

        # Every stage is drawn, with an edge from what feeds it.
        for stage in STAGES:
            assert page.locator(f'#graph g.node[data-stage="{stage}"]').count() == 1, stage
        assert page.locator('#graph g.edge[data-from="DC topics"][data-to="merger"]').count() == 1
        assert page.locator('#graph g.edge[data-from="merger"][data-to="deduplicator"]').count() == 1
        assert page.locator('#graph g.edge[data-from="dispatcher"][data-to="profiles (dc1)"]').count() == 1

        # Rates while the chain runs: non-zero for every stage at some
        # moment, and the figures change from reading to reading.
        busy = set()
        live_screenshot = re.sub(r"(\.png)?$", "-live.png", SCREENSHOT, count=1)
        os.makedirs(os.path.dirname(os.path.abspath(SCREENSHOT)), exist_ok=True)
        taken = False
        updates = set()
        readings = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (len(busy) < len(STAGES) or len(readings) < 3):
            updates.add(page.evaluate("document.body.dataset.updated"))
            snapshot = []
            for stage in STAGES:
                rate = cell(page, stage, "out-rate")
                snapshot.append(rate)
                if rate not in ("0", "–"):
                    busy.add(stage)
            readings.add(tuple(snapshot))
            if not taken and len(busy) >= 4:
                page.screenshot(path=live_screenshot, full_page=True)
                print(f"screenshot while running: {live_screenshot}")
                taken = True
            page.wait_for_timeout(500)
        assert busy == set(STAGES), f"stages never seen busy: {set(STAGES) - busy}"
        assert len(updates) >= 3, f"the page did not update: {updates}"
        assert len(readings) >= 3, f"the rates did not change: {readings}"

        # After the run: the reconciliation, per hour, nothing unexplained.
        page.wait_for_selector("#reconcile-rows", timeout=240_000)
        rows = page.locator("#reconcile-rows tr").count()
        assert rows >= 4, f"{rows} reconcile rows (header included)"
        text = page.locator("#reconcile").inner_text()
        assert "no unexplained difference" in text, text
        assert page.locator("#reconcile-rows tr.unexplained").count() == 0
        assert page.locator("#charts .chart").count() == len(STAGES)

        page.screenshot(path=SCREENSHOT, full_page=True)
        print(f"screenshot: {SCREENSHOT}")
        browser.close()
    process.terminate()
    process.wait(timeout=60)
    rest = process.stdout.read()
    assert "does not match" not in rest, "".join(output) + rest
