"""The detail page's Messages panel in real Chromium, on the simulated WhatsApp.

One session sends to another from the page's form; the sender's page shows the
message's ticks go queued → sent → delivered → read without a reload, and the
receiving session's page shows it arrive. The simulated WhatsApp acknowledges at
once, delivers to the other session's connection and sends ``delivered`` and
``read`` receipts after its default delays (0.2 s, then 1 s).
"""

from __future__ import annotations

import re

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

#: Markup in a message is text: shown as typed, never parsed (nor run).
TEXT = 'Hello <b>there</b> & <img src=x onerror="window.__xss = 1"> — see you'
ORDER = ["queued", "sending", "sent", "delivered", "read"]

#: Records every status the message's tick shows, in order (a MutationObserver
#: sees each change, however quickly the next one follows).
WATCH_TICKS = """() => {
    window.__ticks = [];
    const list = document.querySelector('#messages');
    const seen = (node) => {
        const tick = node.querySelector && node.querySelector('.msg-tick');
        if (tick) window.__ticks.push(tick.dataset.status);
    };
    new MutationObserver((records) => {
        for (const r of records) {
            if (r.type === 'attributes' && r.target.classList.contains('msg-tick')) {
                window.__ticks.push(r.target.dataset.status);
            }
            for (const node of r.addedNodes) seen(node);
        }
    }).observe(list, {subtree: true, childList: true, attributes: true,
                      attributeFilter: ['data-status']});
}"""


def linked_session(page: Page) -> str:
    """Create a session, scan its QR code with the simulated phone; its number."""
    create_session(page, unique_name())
    page.wait_for_selector("#qr svg")
    page.locator("#simulated-phone").get_by_role("button", name="Simulate scan").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    expect(page.locator("#phone")).to_have_text(re.compile(r"^\+\d{6,}$"))
    return page.locator("#phone").inner_text()


def test_send_from_the_form_and_watch_the_ticks_reach_read(logged_in_page: Page) -> None:
    sender = logged_in_page
    receiver = sender.context.new_page()
    receiver_phone = linked_session(receiver)
    sender_phone = linked_session(sender)
    expect(sender.locator("#messages-empty")).to_be_visible()

    navigations = Navigations(sender)
    plant_marker(sender)
    sender.evaluate(WATCH_TICKS)
    sender.fill("#message-to", receiver_phone)
    sender.fill("#message-text", TEXT)
    sender.click("#message-send")

    sent = sender.locator("#messages li.msg-out")
    expect(sent).to_have_count(1)
    expect(sender.locator("#message-form [data-feedback]")).to_contain_text("Queued")
    expect(sender.locator("#message-text")).to_have_value("")
    expect(sent.locator(".msg-text")).to_have_text(TEXT)
    expect(sent.locator(".msg-peer")).to_have_text(f"To {receiver_phone}")
    expect(sent).to_have_attribute("data-status", "read", timeout=20_000)
    tick = sent.locator(".msg-tick")
    expect(tick).to_have_text("✓✓")
    expect(tick).to_have_attribute("title", "Read")
    assert tick.evaluate("t => getComputedStyle(t).color") == "rgb(52, 183, 241)"  # blue
    expect(sender.locator("#messages-empty")).to_be_hidden()

    ticks = sender.evaluate("() => window.__ticks")
    assert ticks[-1] == "read"
    positions = [ORDER.index(status) for status in ticks]
    assert positions == sorted(positions), f"a tick moved backwards: {ticks}"
    assert "sent" in ticks or "delivered" in ticks, ticks

    # The other session received it, live, once, as text.
    received = receiver.locator("#messages li.msg-in")
    expect(received).to_have_count(1)
    expect(received.locator(".msg-text")).to_have_text(TEXT)
    expect(received.locator(".msg-peer")).to_contain_text(sender_phone)
    for page in (sender, receiver):
        expect(page.locator("#messages-panel img")).to_have_count(0)
        expect(page.locator("#messages-panel b")).to_have_count(0)
        assert page.evaluate("() => window.__xss") is None
    assert_not_reloaded(sender, navigations, 0)

    # A reload renders the same from the server: text escaped, the tick read.
    sender.reload()
    expect(sender.locator("#messages li.msg-out")).to_have_attribute("data-status", "read")
    expect(sender.locator("#messages li.msg-out .msg-text")).to_have_text(TEXT)
    expect(sender.locator("#messages-panel img")).to_have_count(0)


def test_the_form_says_why_a_message_cannot_be_sent(logged_in_page: Page) -> None:
    page = logged_in_page
    linked_session(page)
    page.fill("#message-to", "12")
    page.fill("#message-text", "hello")
    page.click("#message-send")
    feedback = page.locator("#message-form [data-feedback]")
    expect(feedback).to_have_attribute("data-kind", "error")
    expect(feedback).to_contain_text("country code")
    expect(page.locator("#messages li")).to_have_count(0)
    expect(page.locator("#message-text")).to_have_value("hello")  # kept, to correct
