"""Opening the tool's HTML pages in a real headless Chromium (Debian's package, driven by
Playwright), shared by the tests of the --explain pages. Import `browser` into a test module to use
the fixture."""
import os
import shutil
import struct

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):  # .ci/run installs it: in CI a missing browser is a failure, not a skip
            pytest.fail("chromium is missing: .ci/run should have installed it")
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (tests/requirements.txt)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        yield browser
        browser.close()


class OpenedPage:
    """A page opened from disk, with every script error and every request it made kept."""

    def __init__(self, browser, path, width=1200, height=900):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors, self.requests = [], []
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.uri = path.as_uri()
        self.page.goto(self.uri)
        self.page.wait_for_selector("body[data-ready='1']", timeout=20_000)

    def assert_quiet(self):
        """No script error, and no request but the page's own."""
        assert self.errors == [] and self.requests == [self.uri], (self.errors, self.requests)

    def widest_overflow(self):
        """How far (in CSS pixels) the widest element reaches past the viewport's right edge, and
        which one. What sits inside a scrolling box (a wide table in an `overflow: auto` div) is
        reached by scrolling that box, so only the box itself counts."""
        return self.page.evaluate("""() => {
            const width = document.documentElement.clientWidth;
            const scrolls = e => ["auto", "scroll", "hidden"].includes(getComputedStyle(e).overflowX);
            let worst = [document.documentElement.scrollWidth - width, "the document"];
            for (const e of document.querySelectorAll("body *")) {
              let inside = false;
              for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) inside ||= scrolls(a);
              const over = e.getBoundingClientRect().right - width;
              if (!inside && over > worst[0]) worst = [over, e.tagName + (e.id ? "#" + e.id : "") + "." + e.className];
            }
            return worst;
        }""")

    def assert_nothing_overflows(self, screenshot_path):
        """A full-page screenshot is as wide as the page's content: at the viewport's width, nothing
        needs a horizontal scroll bar; then the same per element."""
        png = self.page.screenshot(path=str(screenshot_path), full_page=True)
        width, shot_width = self.page.viewport_size["width"], struct.unpack(">I", png[16:20])[0]  # PNG's IHDR
        assert shot_width == width, f"the page is {shot_width} px wide at a {width} px viewport"
        over, where = self.widest_overflow()
        assert over <= 0, f"{where} reaches {over} px past the right edge at {width} px"
