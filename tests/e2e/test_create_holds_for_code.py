"""The create page turns into the detail page together with the session's first code.

create.js keeps the form on screen after the create's answer until the first code
(or a snapshot saying none is coming) is there, at most the form's
``data-hold-for-code-ms``: the page and its code are laid out and painted in one
frame, instead of the code's message waiting behind the new page's first frame
(docs/benchmarks.md, eleventh stop).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.e2e.test_qr_flow import unique_name

pytestmark = pytest.mark.e2e

#: Records, once, what the detail page held when its markup went into the document
#: (a MutationObserver runs at the end of the task that inserted it).
WATCH_DETAIL = """() => {
  window.__detailArrived = null;
  new MutationObserver(() => {
    const detail = document.getElementById("detail");
    if (window.__detailArrived !== null || !detail) return;
    window.__detailArrived = {
      code: !!document.querySelector("#qr svg"),
      state: document.getElementById("state").dataset.state,
    };
  }).observe(document.body, { childList: true, subtree: true });
}"""


def open_create_page(page: Page, hold_ms: int) -> None:
    page.goto("/sessions/new/")
    page.wait_for_selector("#create-form[data-socket=ready]")
    page.evaluate(
        "ms => { document.getElementById('create-form').dataset.holdForCodeMs = String(ms); }",
        hold_ms,
    )
    page.evaluate(WATCH_DETAIL)


def test_the_detail_page_goes_in_with_its_first_code(logged_in_page: Page) -> None:
    page = logged_in_page
    # A hold no machine outlasts: the simulated WhatsApp's code always comes within it.
    open_create_page(page, hold_ms=10_000)
    page.fill("#id_name", unique_name())
    page.click("#create-submit")
    page.wait_for_selector("#detail")

    assert page.evaluate("() => window.__detailArrived") == {"code": True, "state": "qr_required"}
    metrics = page.evaluate("() => window.waconnectMetrics")
    assert metrics["detailShownOn"] == "snapshot"
    assert metrics["firstQrShownAt"] >= metrics["detailShownAt"]
    expect(page.locator("#create-form")).to_have_count(0)
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")


def route_create_socket(page: Page, edit: Callable[[dict[str, Any]], bool]) -> None:
    """Route the create socket through Playwright: every message from the server goes
    through ``edit`` (which may change it in place) and on to the page, unless
    ``edit`` returns False."""

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            data = json.loads(message)
            if edit(data):
                ws.send(json.dumps(data))

        server.on_message(to_page)

    page.route_web_socket("**/ws/sessions/new/", route)


def drop_codes_on_the_create_socket(page: Page) -> list[str]:
    """Drop every snapshot with a code on its way to the page; returns the dropped
    snapshots' states."""
    dropped: list[str] = []

    def drop_codes(data: dict[str, Any]) -> bool:
        if data.get("type") == "snapshot" and data["snapshot"]["state"] == "qr_required":
            dropped.append(data["snapshot"]["state"])
            return False
        return True

    route_create_socket(page, drop_codes)
    return dropped


def test_without_a_code_the_detail_page_shows_when_the_hold_ends(logged_in_page: Page) -> None:
    """The create socket's code never reaches the page (dropped on the way): the
    detail page still shows, ``data-hold-for-code-ms`` after the answer, and works."""
    page = logged_in_page
    dropped = drop_codes_on_the_create_socket(page)
    hold_ms = 300
    open_create_page(page, hold_ms=hold_ms)
    page.fill("#id_name", unique_name())
    page.click("#create-submit")
    page.wait_for_selector("#detail")

    metrics = page.evaluate("() => window.waconnectMetrics")
    assert metrics["detailShownOn"] == "hold"
    # A timer never fires early; 1 ms for the clocks' rounding.
    assert metrics["detailShownAt"] - metrics["createRespondedAt"] >= hold_ms - 1
    expect(page.locator("#create-form")).to_have_count(0)
    # The page is live: the socket's snapshots come in (the answer's page shows the
    # row as created), an action goes through and comes back over the socket.
    expect(page.locator("#state")).to_have_attribute("data-state", "connecting")
    # A code was on its way and dropped (it comes a few ms after "connecting"; the
    # route's handler runs only while Playwright is called, hence the bounded poll).
    for _ in range(300):
        if dropped:
            break
        page.wait_for_timeout(50)
    assert dropped, "no code was sent to drop: the test did not test the hold"
    page.click("button[data-action=stop]")
    expect(page.locator("#state")).to_have_attribute("data-state", "stopped")


def test_while_held_the_address_is_the_sessions_and_back_loads_the_form(
    logged_in_page: Page,
) -> None:
    """The session exists from the answer on: the address and the title are its
    detail page's while the form waits for the code; back (or forward) in that
    time loads what the address bar says."""
    page = logged_in_page
    drop_codes_on_the_create_socket(page)
    open_create_page(page, hold_ms=60_000)
    name = unique_name()
    page.fill("#id_name", name)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))

    expect(page).to_have_title(re.compile(re.escape(name)))
    expect(page.locator("#create-form")).to_be_visible()  # held: no code came
    assert page.evaluate("() => window.waconnectMetrics.detailShownAt") is None
    page.go_back()
    # WATCH_DETAIL's variable goes with the reload.
    page.wait_for_function("() => typeof window.__detailArrived === 'undefined'")
    expect(page).to_have_url(re.compile(r"/sessions/new/$"))
    expect(page.locator("#create-form")).to_have_attribute("data-socket", "ready")
    assert page.evaluate("() => window.waconnectMetrics.detailShownAt") is None


def test_a_page_that_cannot_mount_is_loaded_the_ordinary_way(logged_in_page: Page) -> None:
    """The swap and mount run from the hold's end or a socket message, outside the
    promise that used to catch their errors: a failure still loads the page."""
    page = logged_in_page

    def break_the_snapshot(data: dict[str, Any]) -> bool:
        if data.get("type") == "created":
            data["html"] = re.sub(
                r'(<script id="session-snapshot" type="application/json">).*?(</script>)',
                r"\1{not json\2",
                data["html"],
                flags=re.S,
            )
        return True

    route_create_socket(page, break_the_snapshot)
    open_create_page(page, hold_ms=10_000)
    page.fill("#id_name", unique_name())
    with page.expect_navigation(url=re.compile(r"/sessions/\d+/$")):
        page.click("#create-submit")

    page.wait_for_selector("#qr svg")  # the detail page, loaded and live
    assert page.evaluate("() => typeof window.__detailArrived") == "undefined"
