"""An admin links a phone: create a session, see its QR code live, scan, see it connected.

Everything after the first page load must happen without a reload: each test
plants a marker in ``window`` and counts main-frame navigations, and checks both
after the live update.
"""

from __future__ import annotations

import io
import re
import uuid

import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from benchmarks.liveserver import LiveServer
from tests.e2e.conftest import TIMEOUT_MS, log_in

pytestmark = pytest.mark.e2e

MARKER = "set before the live update"


def unique_name() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


class Navigations:
    """Counts the page's main-frame navigations (a reload is one)."""

    def __init__(self, page: Page) -> None:
        self.count = 0
        page.on("framenavigated", self._on_navigated)
        self._page = page

    def _on_navigated(self, frame: object) -> None:
        if frame is self._page.main_frame:
            self.count += 1


def plant_marker(page: Page) -> None:
    page.evaluate("marker => { window.__e2eMarker = marker; }", MARKER)


def assert_not_reloaded(page: Page, navigations: Navigations, before: int) -> None:
    assert page.evaluate("() => window.__e2eMarker") == MARKER, "the page was reloaded"
    assert navigations.count == before, "the page navigated"


def create_session(page: Page, name: str, base_url: str = "") -> int:
    """Create a session through the form; return its id (the detail page is open)."""
    page.goto(f"{base_url}/sessions/new/")
    page.fill("#id_name", name)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def test_create_scan_and_see_connected_without_reload(logged_in_page: Page) -> None:
    """The QR code appears live after creation, and a scan turns the page 'connected' live."""
    page = logged_in_page
    name = unique_name()
    create_session(page, name)

    expect(page.locator("#session-name")).to_have_text(name)
    expect(page.locator("#simulated-badge")).to_be_visible()
    page.wait_for_selector("#qr svg")
    expect(page.locator("#state")).to_have_attribute("data-state", "qr_required")
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
    expect(page.locator("#qr-countdown")).to_have_text(re.compile(r"^\d+ s$"))
    assert page.evaluate("() => window.waconnectMetrics.firstQrShownAt") is not None

    navigations = Navigations(page)
    plant_marker(page)
    page.locator("#simulated-phone").get_by_role("button", name="Simulate scan").click()

    expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    expect(page.locator("#state")).to_have_text("Connected")
    expect(page.locator("#phone")).to_have_text(re.compile(r"^\+\d{6,}$"))
    expect(page.locator("#push-name")).to_have_text("Simulated phone")
    expect(page.locator("#qr svg")).to_have_count(0)
    expect(page.locator("#qr-area")).to_be_hidden()
    expect(page.locator("#events")).to_contain_text("the phone scanned the code")
    expect(page.locator("#events tr").first).to_contain_text("connected")
    assert_not_reloaded(page, navigations, 0)


def decoded_qr(page: Page) -> str:
    """The text of the QR code the page shows, read from a screenshot of ``#qr``
    with zxing-cpp (a scanner's decoder, not ours)."""
    image = Image.open(io.BytesIO(page.locator("#qr svg").screenshot()))
    (found,) = zxingcpp.read_barcodes(image)
    return found.text


def test_the_qr_code_shown_scans_to_whatsapps_code_pushed_or_rendered(
    logged_in_page: Page,
) -> None:
    """A scanner reads the code the page draws from a push (uqr, in the
    browser) and the one in the page's first render (segno with a fixed mask,
    server-side: snapshots.qr_svg) alike, and both are WhatsApp's code."""
    page = logged_in_page
    session_id = create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    assert page.evaluate("() => window.waconnectMetrics.firstQrFrom") == "socket"
    pushed = decoded_qr(page)

    page.goto(f"/sessions/{session_id}/")
    page.wait_for_selector("#qr svg")
    assert page.evaluate("() => window.waconnectMetrics.firstQrFrom") == "page"
    rendered = decoded_qr(page)

    assert pushed == rendered
    assert pushed.startswith("https://wa.me/settings/linked_devices#")


def test_a_code_pushed_before_the_drawing_module_ran_is_drawn_once_it_runs(
    logged_in_page: Page,
) -> None:
    """qr.mjs is a module, run after the page is parsed, and may be late (or fail):
    the create page's session is live before it, the state still shows, and the
    code is drawn as soon as the module runs (a TypeError stopped the page before)."""
    page = logged_in_page
    held: list[Route] = []
    page.route(re.compile(r"/static/waconnect/qr[^/]*\.mjs$"), lambda route: held.append(route))
    page.goto("/sessions/new/", wait_until="commit")
    page.wait_for_selector("#create-form[data-socket=ready]")
    page.fill("#id_name", unique_name())
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"), wait_until="commit")

    expect(page.locator("#state")).to_have_attribute("data-state", "qr_required")
    expect(page.locator("#qr svg")).to_have_count(0)
    assert held, "the page asked for the module"
    for route in held:
        route.continue_()
    page.wait_for_selector("#qr svg")
    assert decoded_qr(page).startswith("https://wa.me/settings/linked_devices#")


def test_new_qr_code_swaps_in_place(logged_in_page: Page) -> None:
    """'New QR code' replaces the code on screen without a reload."""
    page = logged_in_page
    create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    old_svg = page.inner_html("#qr")

    navigations = Navigations(page)
    plant_marker(page)
    page.click("button[data-action=new-qr]")

    page.wait_for_function(
        """old => {
            const qr = document.querySelector('#qr');
            return qr.querySelector('svg') !== null && qr.innerHTML !== old;
        }""",
        arg=old_svg,
    )
    expect(page.locator("#state")).to_have_attribute("data-state", "qr_required")
    expect(page.locator("#events")).to_contain_text("asked for a new QR code")
    swaps = page.evaluate("() => window.waconnectMetrics.swaps")
    assert len(swaps) >= 1
    assert_not_reloaded(page, navigations, 0)


def test_qr_code_rotates_by_itself(browser: Browser, fast_qr_server_url: str) -> None:
    """WhatsApp's next codes replace the shown one as they are issued (1.5 s cadence here)."""
    context = browser.new_context(base_url=fast_qr_server_url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page)
        create_session(page, unique_name())
        page.wait_for_selector("#qr svg")
        navigations = Navigations(page)
        plant_marker(page)
        first_svg = page.inner_html("#qr")

        page.wait_for_function("() => window.waconnectMetrics.swaps.length >= 2")

        swaps = page.evaluate("() => window.waconnectMetrics.swaps")
        issued = [s["issuedAt"] for s in swaps]
        assert len(set(issued)) == len(issued), "each swap shows a new code"
        for swap in swaps:
            assert 0 <= swap["shownAt"] - swap["issuedAt"] < 2_000, swap
        assert page.inner_html("#qr") != first_svg
        expect(page.locator("#qr svg")).to_have_count(1)
        assert_not_reloaded(page, navigations, 0)
    finally:
        context.close()


def test_anonymous_user_is_sent_to_login(page: Page) -> None:
    """Pages need a login; the login page says the WhatsApp is simulated."""
    page.goto("/sessions/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/sessions/$"))
    expect(page.locator("#simulated-badge")).to_be_visible()
    page.goto("/sessions/new/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/sessions/new/$"))


def test_list_updates_live_from_another_tab(logged_in_page: Page) -> None:
    """A session created and connected in another tab appears and turns 'connected' live."""
    listing = logged_in_page
    expect(listing.locator("#socket-status")).to_have_attribute("data-online", "true")
    navigations = Navigations(listing)
    plant_marker(listing)

    name = unique_name()
    other = listing.context.new_page()
    create_session(other, name)
    other.wait_for_selector("#qr svg")

    row = listing.locator(f'#rows tr[data-name="{name}"]')
    expect(row).to_have_count(1)
    expect(row.locator(".state-badge")).to_have_attribute("data-state", "qr_required")
    expect(row.get_by_role("link", name=name)).to_have_attribute(
        "href", re.compile(r"/sessions/\d+/$")
    )

    other.click("button[data-action=simulate-scan]")
    expect(row.locator(".state-badge")).to_have_attribute("data-state", "connected")
    expect(row.locator(".col-phone")).to_have_text(re.compile(r"^\+\d{6,}$"))
    expect(listing.locator("#rows-empty")).to_be_hidden()
    assert_not_reloaded(listing, navigations, 0)


def test_create_form_shows_field_errors(logged_in_page: Page) -> None:
    """A bad or duplicate name is refused with a message next to the field."""
    page = logged_in_page
    page.goto("/sessions/new/")
    page.fill("#id_name", "-bad name")
    page.click("#create-submit")
    expect(page.locator(".field.has-error .field-error")).to_contain_text("letters, digits")

    name = unique_name()
    create_session(page, name)
    page.goto("/sessions/new/")
    page.fill("#id_name", name.upper())
    page.click("#create-submit")
    expect(page.locator(".field-error")).to_have_text("A session with this name already exists.")


def test_delete_redirects_and_other_watchers_see_it(logged_in_page: Page) -> None:
    """Delete (after confirming) goes to the list; another tab on the session is told live."""
    page = logged_in_page
    name = unique_name()
    session_id = create_session(page, name)
    watcher = page.context.new_page()
    watcher.goto(f"/sessions/{session_id}/")
    expect(watcher.locator("#socket-status")).to_have_attribute("data-online", "true")

    dialogs: list[str] = []

    def accept(dialog: object) -> None:
        dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", accept)
    page.click("button[data-action=delete]")
    page.wait_for_url(re.compile(r"/sessions/$"))
    assert dialogs and name in dialogs[0]
    expect(page.locator(f'#rows tr[data-name="{name}"]')).to_have_count(0)

    expect(watcher.locator("#gone")).to_be_visible()
    expect(watcher.locator("#gone")).to_contain_text("deleted")
    expect(watcher.locator("button[data-action=start]")).to_be_disabled()


def test_offline_indicator_and_reconnect(browser: Browser, own_server: LiveServer) -> None:
    """When the server goes away the page says so, and it reconnects by itself when it is back."""
    context = browser.new_context(base_url=own_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page)
        create_session(page, unique_name())
        page.wait_for_selector("#qr svg")
        status = page.locator("#socket-status")
        expect(status).to_have_attribute("data-online", "true")
        navigations = Navigations(page)
        plant_marker(page)

        own_server.stop()
        expect(status).to_have_attribute("data-online", "false")
        expect(status).to_contain_text("offline")
        expect(status).to_be_visible()

        own_server.launch()
        expect(status).to_have_attribute("data-online", "true")
        expect(status).not_to_contain_text("offline")
        expect(page.locator("#state")).to_have_attribute("data-state", re.compile(r"^[a-z_]+$"))
        assert_not_reloaded(page, navigations, 0)
    finally:
        context.close()


def test_pairing_code_by_phone_number(logged_in_page: Page) -> None:
    """A phone number gets a pairing code shown live; a malformed one is refused in place."""
    page = logged_in_page
    create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    navigations = Navigations(page)
    plant_marker(page)
    phone = page.locator("#pair-phone-form input[name=phone]")

    phone.fill("0151 1234")
    page.click("button[data-action=pair-phone]")
    feedback = page.locator("#pair-phone-form [data-feedback]")
    expect(feedback).to_contain_text("international format")
    expect(feedback).to_have_attribute("data-kind", "error")

    phone.fill("+49 151 1234 5678")
    page.click("button[data-action=pair-phone]")
    expect(page.locator("#pairing-code")).to_have_text(re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$"))
    expect(page.locator("#pairing")).to_be_visible()
    expect(page.locator("#qr svg")).to_have_count(1)
    expect(page.locator("#events")).to_contain_text("pairing code for a phone number ending in 78")
    assert_not_reloaded(page, navigations, 0)


def test_create_turns_into_the_detail_page_without_a_page_load(logged_in_page: Page) -> None:
    """With the script, create shows the detail page in place; reload and back still work."""
    page = logged_in_page
    page.goto("/sessions/new/")
    plant_marker(page)
    requests: list[str] = []
    page.on(
        "request",
        lambda r: (
            requests.append(f"{r.method} {r.resource_type}") if r.is_navigation_request() else None
        ),
    )
    name = unique_name()
    page.fill("#id_name", name)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    page.wait_for_selector("#qr svg")

    assert page.evaluate("() => window.__e2eMarker") == MARKER, "the create page was replaced"
    assert requests == [], "the browser loaded a page"
    metrics = page.evaluate("() => window.waconnectMetrics")
    assert metrics["detailShownAt"] is not None
    assert metrics["firstQrShownAt"] >= metrics["detailShownAt"]
    clicked = float(page.evaluate("() => sessionStorage.getItem('waconnect.createClickedAt')"))
    assert 0 < metrics["firstQrShownAt"] - clicked < TIMEOUT_MS
    expect(page.locator("#session-name")).to_have_text(name)
    expect(page).to_have_title(re.compile(re.escape(name)))
    expect(page.locator("#create-form")).to_have_count(0)
    expect(page.locator("#simulated-badge")).to_be_visible()
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
    expect(page.locator("#qr-countdown")).to_have_text(re.compile(r"^\d+ s$"))

    # The swapped-in page is live: actions go through and come back over the socket.
    page.click("button[data-action=stop]")
    expect(page.locator("#state")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#events")).to_contain_text("asked to stop")

    detail_url = page.url
    page.reload()
    expect(page.locator("#session-name")).to_have_text(name)
    expect(page.locator("#state")).to_have_attribute("data-state", "stopped")
    page.go_back()
    expect(page).to_have_url(re.compile(r"/sessions/new/$"))
    expect(page.locator("#create-form")).to_be_visible()
    page.go_forward()
    expect(page).to_have_url(detail_url)
    expect(page.locator("#session-name")).to_have_text(name)


def test_create_goes_over_the_socket_opened_before_the_click(logged_in_page: Page) -> None:
    """The create page's socket is open before "create": the session is created over
    it and its QR code arrives on it (no POST, no second socket); the detail page it
    brings works (its forms post with valid CSRF tokens)."""
    page = logged_in_page
    page.goto("/sessions/new/")
    page.wait_for_selector("#create-form[data-socket=ready]")
    posts: list[str] = []
    sockets: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.on("websocket", lambda ws: sockets.append(ws.url))
    name = unique_name()
    page.fill("#id_name", name)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    page.wait_for_selector("#qr svg")

    assert page.evaluate("() => window.waconnectMetrics.createdVia") == "socket"
    assert posts == [], "the create went by POST"
    assert sockets == [], "the page opened another socket"
    expect(page.locator("#session-name")).to_have_text(name)
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
    page.click("button[data-action=stop]")
    expect(page.locator("#state")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#events")).to_contain_text("asked to stop")


def test_a_refused_name_over_the_socket_is_shown_at_the_field(logged_in_page: Page) -> None:
    page = logged_in_page
    page.goto("/sessions/new/")
    page.wait_for_selector("#create-form[data-socket=ready]")
    page.fill("#id_name", "-bad name")
    page.click("#create-submit")
    expect(page.locator(".field.has-error .field-error")).to_contain_text("letters, digits")
    name = unique_name()
    page.fill("#id_name", name)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    expect(page.locator("#session-name")).to_have_text(name)
    assert page.evaluate("() => window.waconnectMetrics.createdVia") == "socket"


def test_back_from_the_in_place_detail_page_shows_the_form(logged_in_page: Page) -> None:
    """Back right after creating (no reload in between) returns to a working create form."""
    page = logged_in_page
    create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    page.go_back()
    expect(page).to_have_url(re.compile(r"/sessions/new/$"))
    expect(page.locator("#create-form")).to_be_visible()
    name = unique_name()
    create_session(page, name)
    expect(page.locator("#session-name")).to_have_text(name)
    page.wait_for_selector("#qr svg")


def test_create_without_javascript_redirects_to_the_detail_page(
    browser: Browser, live_server_url: str
) -> None:
    """The form works without the script: a plain post, a redirect, errors in the page."""
    context = browser.new_context(base_url=live_server_url, java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page)
        page.goto("/sessions/new/")
        page.fill("#id_name", "-bad name")
        page.click("#create-submit")
        expect(page.locator(".field.has-error .field-error")).to_contain_text("letters, digits")
        name = unique_name()
        page.fill("#id_name", name)
        page.click("#create-submit")
        page.wait_for_url(re.compile(r"/sessions/\d+/$"))
        expect(page.locator("#session-name")).to_have_text(name)
        expect(page.locator("#simulated-badge")).to_be_visible()
    finally:
        context.close()


def test_a_linked_session_offers_no_new_pairing_until_logged_out(logged_in_page: Page) -> None:
    """New QR code and the pairing form vanish live once the phone is linked (pairing
    again would keep a linked-device slot on the phone), a line points to Log out
    instead, and they come back after a logout."""
    page = logged_in_page
    create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    new_qr = page.locator("#actions button[data-action=new-qr]")
    hint = page.locator("#linked-hint")
    expect(new_qr).to_be_visible()
    expect(page.locator("#pair-phone-form")).to_be_visible()
    expect(hint).to_be_hidden()

    page.locator("#simulated-phone").get_by_role("button", name="Simulate scan").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    expect(new_qr).to_be_hidden()
    expect(page.locator("#pair-phone-form")).to_be_hidden()
    expect(hint).to_be_visible()
    expect(hint).to_contain_text("log out first")

    page.reload()  # the server renders the same
    expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    expect(new_qr).to_be_hidden()
    expect(hint).to_be_visible()

    page.locator("#simulated-phone").get_by_role("button", name="Simulate logout").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "logged_out")
    expect(new_qr).to_be_visible()
    expect(page.locator("#pair-phone-form")).to_be_visible()
    expect(hint).to_be_hidden()
