"""The pages work under their Content-Security-Policy in a real browser, and the policy is
really enforced where the other browser tests run (so an inline script would fail them)."""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


def test_the_policy_blocks_an_inline_script_on_the_live_server(context: BrowserContext) -> None:
    page = context.new_page()
    response = page.goto("/accounts/login/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text) as report:
        page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.__inlineRan = true";
                document.body.appendChild(script);
            }"""
        )
    assert "inline script" in report.value.text
    assert page.evaluate("() => window.__inlineRan === true") is False


def test_every_page_loads_its_scripts_and_styles_without_a_violation(page: Page) -> None:
    """The login, list, create, admin pages: styled, scripted, and the socket online."""
    log_in(page)
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
    assert page.evaluate("() => getComputedStyle(document.body).margin") == "0px"  # app.css
    page.goto("/sessions/new/")
    expect(page.locator("#id_name")).to_be_visible()
    page.goto("/admin/sessions_app/wasession/")
    expect(page.locator("#changelist")).to_be_visible()
    # The page fixture fails the test on any violation Chromium reported.
