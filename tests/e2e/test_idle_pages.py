"""A live page left open is idle: no animation runs for ever on it.

An admin keeps the sessions list or a session's page open for hours. An endless
CSS animation makes Chromium produce a frame 60 times a second for as long as the
tab is open; one that animates a ``box-shadow`` (the old "live" dot's pulse) also
repaints each of them on the page's main thread. Measured on a 2-vCPU machine
(docs/benchmarks.md, "Live pages at rest", p50): a session page showing its QR code
kept 33 % of a core busy, the list 24 %; without the endless animation 2 % and 1 %.

The check is on what the browser itself reports (``document.getAnimations()``,
which includes the ``::before`` of a badge), not on time: an animation that
repeats for ever and is running fails the test. Busy states (connecting, pairing,
deleting) may show theirs while they last: the list, shared with other tests, may
hold such a session, so a badge in one of those states is left out.
"""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_qr_flow import create_session

pytestmark = pytest.mark.e2e

#: Every running animation that repeats for ever, as "<element> <animation name>".
ENDLESS_ANIMATIONS = """() => document.getAnimations()
    .filter(a => a.playState === "running" && a.effect.getComputedTiming().iterations === Infinity)
    .filter(a => !a.effect.target.matches(
        ".state-badge.state-connecting, .state-badge.state-pairing, .state-badge.is-deleting"))
    .map(a => {
        const el = a.effect.target;
        const name = el.tagName.toLowerCase();
        const where = el.id ? "#" + el.id : name + "." + el.getAttribute("class");
        return where + (a.effect.pseudoElement || "") + " " + (a.animationName || "");
    })"""


def endless_animations(page: Page) -> list[str]:
    return page.evaluate(ENDLESS_ANIMATIONS)


def test_the_list_at_rest_runs_no_endless_animation(logged_in_page: Page) -> None:
    page = logged_in_page
    page.goto("/sessions/")
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
    assert endless_animations(page) == []


def test_a_session_page_showing_its_qr_code_runs_no_endless_animation(
    logged_in_page: Page,
) -> None:
    page = logged_in_page
    create_session(page, f"e2e-idle-{uuid.uuid4().hex[:8]}")
    page.wait_for_selector("#qr svg")
    expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
    assert endless_animations(page) == []

    page.locator("#simulated-phone").get_by_role("button", name="Simulate scan").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    assert endless_animations(page) == []
