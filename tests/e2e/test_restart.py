"""A restarted server resumes its linked sessions: no new QR code, no logout.

The README promises that sessions stay connected across restarts. With the
simulated WhatsApp in the server's process (``make run`` with
``WACONNECT_DRIVER=simulated``), its linked devices live in the data directory as
WhatsApp and neonize's store keep them, so the restarted server resumes the
device it linked before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from benchmarks.liveserver import LiveServer
from tests.e2e.conftest import TIMEOUT_MS, _servers, log_in
from tests.e2e.test_qr_flow import create_session, unique_name

pytestmark = pytest.mark.e2e

#: Short leases, so the restarted server may claim a killed one's sessions quickly.
LEASES = {
    "WACONNECT_LEASE_TTL": "4",
    "WACONNECT_RENEW_INTERVAL": "1",
    "WACONNECT_SELF_FENCE_MARGIN": "1",
    "WACONNECT_RECONCILE_INTERVAL": "1",
}


@pytest.fixture
def server() -> Iterator[LiveServer]:
    timing = {"first_qr_ttl": 30, "next_qr_ttl": 30, "qr_count": 6, "pair_delay": 0.2}
    with LiveServer(timing=timing, extra_env=LEASES) as running:
        _servers.append(running)  # its output goes into a failed test's report
        try:
            yield running
        finally:
            _servers.remove(running)


def state_events_after(server: LiveServer, session_id: int, after_id: int) -> list[str]:
    """The states the session went through after event ``after_id``, oldest first."""
    assert server.data_dir is not None
    uri = f"file:{server.data_dir / 'waconnect.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute(
            "SELECT to_state FROM sessions_app_sessionevent "
            "WHERE session_id = ? AND id > ? AND kind = 'state' ORDER BY id",
            (session_id, after_id),
        ).fetchall()
    return [to_state for (to_state,) in rows]


def newest_event_id(page: Page) -> int:
    return int(
        page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('#events tr')]"
            ".map(tr => Number(tr.dataset.id)))"
        )
    )


def until_connected_after(page: Page, after_id: int) -> None:
    """Wait for a state change to 'connected' newer than event ``after_id`` (pushed live)."""
    page.wait_for_function(
        """afterId => [...document.querySelectorAll('#events tr.event-state')].some(tr =>
            Number(tr.dataset.id) > afterId &&
            tr.querySelectorAll('.state-chip')[1]?.classList.contains('state-connected'))""",
        arg=after_id,
        timeout=TIMEOUT_MS,
    )


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restarted_server_resumes_the_linked_session_without_a_qr_code(
    browser: Browser, server: LiveServer, how: str
) -> None:
    """Link a session, stop the server (SIGINT) or kill it (SIGKILL), start it again:
    the session is connected again, with no QR round and no logout in between."""
    context = browser.new_context(base_url=server.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page)
        session_id = create_session(page, unique_name())
        page.wait_for_selector("#qr svg")
        page.locator("#simulated-phone").get_by_role("button", name="Simulate scan").click()
        expect(page.locator("#state")).to_have_attribute("data-state", "connected")
        before_restart = newest_event_id(page)

        if how == "kill":
            server.kill()
        else:
            server.stop()
        server.launch()

        until_connected_after(page, before_restart)
        expect(page.locator("#state")).to_have_attribute("data-state", "connected")
        states = state_events_after(server, session_id, before_restart)
        assert states[-2:] == ["connecting", "connected"], states
        assert "qr_required" not in states, f"a new QR round after the restart: {states}"
        assert "logged_out" not in states, f"logged out by the restart: {states}"
    finally:
        context.close()
