"""The simulated phone panel's "Message from a peer" form, in a real browser: it posts
without a reload, says the message is on its way, clears the text for the next one,
and the session's event log shows the gesture live (never the text); a bad number
is refused with the reason under the form."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_qr_flow import (
    Navigations,
    assert_not_reloaded,
    create_session,
    plant_marker,
    unique_name,
)

pytestmark = pytest.mark.e2e

SECRET = "a text only the session may read"


def test_a_peer_messages_the_session_from_the_page(logged_in_page: Page) -> None:
    page = logged_in_page
    create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    form = page.locator("#peer-message-form")
    expect(form.get_by_role("heading", name="Message from a peer")).to_be_visible()

    navigations = Navigations(page)
    plant_marker(page)
    form.get_by_label("From").fill("+49 176 1234567")
    form.get_by_label("Name").fill("Ada")
    form.get_by_label("Message").fill(SECRET)
    form.get_by_role("button", name="Send to this session").click()

    expect(form.locator("[data-feedback]")).to_contain_text("on its way")
    expect(form.get_by_label("Message")).to_have_value("")
    expect(page.locator("#events")).to_contain_text("simulated phone: a peer sent a message")
    expect(page.locator("#events")).not_to_contain_text(SECRET)
    assert_not_reloaded(page, navigations, 0)

    form.get_by_label("From").fill("0176 1234567")
    form.get_by_label("Message").fill("again")
    form.get_by_role("button", name="Send to this session").click()
    expect(form.locator("[data-feedback]")).to_contain_text("country code")
    expect(form.get_by_label("Message")).to_have_value("again")  # kept, to fix and resend
