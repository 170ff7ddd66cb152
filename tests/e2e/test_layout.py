"""Layout in real Chromium: an action's answer never covers a button; long names fit.

Screenshots go to ``$WACONNECT_SCREENSHOTS`` (default: the system's temporary
directory), to look at when a layout changes.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import TIMEOUT_MS, log_in

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(os.environ.get("WACONNECT_SCREENSHOTS", tempfile.gettempdir()))

VIEWPORTS = [(1280, 900), (900, 800), (390, 844)]


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def shown_message(page: Page, text: str) -> Any:
    """The visible element showing an action's answer (a feedback line or the toast)."""
    locator = page.locator("[data-feedback], #toast").filter(has_text=text)
    expect(locator.first).to_be_visible()
    return locator.first


def scroll_to_viewport_bottom(page: Page, selector: str) -> None:
    """Scroll so that ``selector``'s bottom edge sits just above the viewport's bottom,
    where a bottom-anchored toast appears."""
    page.evaluate(
        """sel => {
            const box = document.querySelector(sel).getBoundingClientRect();
            window.scrollBy(0, box.bottom - window.innerHeight + 12);
        }""",
        selector,
    )


def new_session(page: Page, name: str) -> int:
    page.goto("/sessions/new/")
    page.fill("#id_name", name)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    page.wait_for_selector("#qr svg")
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


@pytest.mark.parametrize(("width", "height"), VIEWPORTS)
def test_an_actions_answer_never_covers_a_button(
    browser: Browser, live_server_url: str, width: int, height: int
) -> None:
    """Pressed with the buttons at the bottom of the screen, where the old toast sat."""
    context = browser.new_context(
        base_url=live_server_url, viewport={"width": width, "height": height}
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page)
        new_session(page, f"layout-{uuid.uuid4().hex[:8]}")
        page.on("dialog", lambda dialog: dialog.dismiss())
        cases = [
            ("#simulated-phone", "button[data-action=simulate-disconnect]", "Simulated phone"),
            (
                "section[aria-labelledby=actions-title]",
                "button[data-action=stop]",
                "Stop requested.",
            ),
        ]
        for card, button, message in cases:
            scroll_to_viewport_bottom(page, card)
            page.click(button)
            shown = shown_message(page, message)
            # The answer may change the page's height (a new state): put the buttons
            # back at the bottom of the screen before comparing.
            scroll_to_viewport_bottom(page, card)
            box = shown.bounding_box()
            assert box is not None
            buttons = page.locator(
                "#actions button, #simulated-phone button, #pair-phone-form button"
            )
            for i in range(buttons.count()):
                other = buttons.nth(i).bounding_box()
                if other is not None:
                    label = buttons.nth(i).inner_text()
                    assert not overlaps(box, other), f"{message!r} covers {label!r}"
            shown.scroll_into_view_if_needed()
            shot = f"waconnect-feedback-{width}-{message.split()[0].lower()}.png"
            page.screenshot(path=str(SCREENSHOTS / shot))
    finally:
        context.close()


@pytest.mark.parametrize(("width", "height"), VIEWPORTS[:2])
def test_a_64_character_name_keeps_the_list_on_screen(
    browser: Browser, live_server_url: str, width: int, height: int
) -> None:
    """On a phone-sized screen the table scrolls sideways anyway (four columns); from
    tablet width up it fits, with the name cut short and whole in its title."""
    name = ("n" + uuid.uuid4().hex + "x" * 64)[:64]
    context = browser.new_context(
        base_url=live_server_url, viewport={"width": width, "height": height}
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page)
        session_id = new_session(page, name)
        expect(page.locator("#session-name")).to_have_text(name)
        heading = page.locator("#session-name").bounding_box()
        assert heading is not None and heading["x"] + heading["width"] <= width
        page.goto("/sessions/")
        row = page.locator(f'#rows tr[data-id="{session_id}"]')
        expect(row).to_be_visible()
        link = row.locator(".col-name a")
        expect(link).to_have_attribute("title", name)
        scroll = page.evaluate(
            """() => {
                const box = document.querySelector(".table-scroll");
                return [box.scrollWidth, box.clientWidth];
            }"""
        )
        assert scroll[0] <= scroll[1], f"the table is {scroll[0]} px wide in {scroll[1]} px"
        for cell in row.locator("td").all():
            if cell.is_visible():
                box = cell.bounding_box()
                assert box is not None and box["x"] + box["width"] <= width
        page.screenshot(path=str(SCREENSHOTS / f"waconnect-long-name-{width}.png"))
    finally:
        context.close()
