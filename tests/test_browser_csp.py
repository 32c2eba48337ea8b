"""The pages work under their Content-Security-Policy: a real Chromium loads them, the editor
goes live and types, and the browser reports no policy violation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import LiveServer, start_server
from tests.test_browser import browser, playwright  # noqa: F401  # the shared Chromium fixtures

pytestmark = pytest.mark.slow

# Every violation the page sees, from the first script on.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.cspViolations.push(event.violatedDirective + ' ' + event.blockedURI);
});
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("browser-csp"))
    yield server
    server.stop()


def open_page(browser: Browser, url: str, console: list[str]) -> Page:  # noqa: F811
    page = browser.new_context().new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    page.on("console", lambda message: console.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: console.append(str(error)))
    response = page.goto(url)
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    return page


def test_a_room_page_goes_live_and_edits_with_no_csp_violation(browser: Browser, live: LiveServer) -> None:  # noqa: F811
    console: list[str] = []
    page = open_page(browser, f"{live.http}/room/csp-check", console)
    page.locator(".collab-name-input input").fill("Ann")
    page.locator(".collab-save-name").click()
    page.wait_for_function("window.collabEditor && window.collabEditor.live", timeout=30_000)
    page.locator(".cm-content").click()
    page.keyboard.type("ok")
    page.wait_for_function("window.collabEditor.text().includes('ok')", timeout=10_000)
    assert [] == page.evaluate("window.cspViolations")
    assert [] == [line for line in console if "Content Security Policy" in line], console
    page.context.close()


def test_the_start_page_renders_with_no_csp_violation(browser: Browser, live: LiveServer) -> None:  # noqa: F811
    console: list[str] = []
    page = open_page(browser, f"{live.http}/", console)
    page.wait_for_load_state("networkidle")
    page.wait_for_function("document.querySelector('#app') && document.querySelector('#app').children.length > 0")
    assert [] == page.evaluate("window.cspViolations")
    assert [] == [line for line in console if "Content Security Policy" in line], console
    page.context.close()
