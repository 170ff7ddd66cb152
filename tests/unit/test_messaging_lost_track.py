"""A pump whose write failed mid-send settles what it left ``sending`` and goes on.

The database can fail between a committed take and its answer (the connection
dropped at COMMIT), or on the write of a send's outcome. The pump then logs the
failed pass and tries again; before, the message stayed ``sending`` under the
lease's own epoch, where neither the pump (one at a time) nor a successor (only
older epochs are stale) would ever touch it, and the session's queue stopped
behind it until the lease changed hands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from django.db import OperationalError

from messaging import batcher, outbound, sender
from tests.unit.messaging_helpers import statuses, until_messages
from tests.unit.test_messaging_pump import FAST, PEER_JID, Harness, claimed, queue, start

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = await start(await claimed())
    yield harness
    await harness.pump.aclose()


def failing_once(
    real: Callable[..., Awaitable[Any]], *, after: bool, when: Callable[..., bool] = lambda *a: True
) -> Callable[..., Awaitable[Any]]:
    """``real``, except that its first call for which ``when(*args)`` holds raises
    a database error: ``after`` the real call ran (and committed), or instead of it."""
    failed = []

    async def call(*args: Any) -> Any:
        if failed or not when(*args):
            return await real(*args)
        failed.append(True)
        if after:
            await real(*args)
        raise OperationalError("server closed the connection unexpectedly")

    return call


async def test_a_take_committed_but_unanswered_is_queued_again_and_sent(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        batcher, "_sent_and_take_many", failing_once(batcher._sent_and_take_many, after=True)
    )
    first, second = await queue(h, 2)
    h.pump.settled(connected=True)
    await until_messages(h.lease.session_id, statuses("sent", "sent"))
    assert h.sends.refs() == [first.ref, second.ref], "each once, in order"


async def test_a_send_whose_unknown_could_not_be_written_is_unknown_then_the_rest_goes(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.sends.behaviour[PEER_JID] = "silent"
    monkeypatch.setattr(sender, "_mark_unknown", failing_once(sender._mark_unknown, after=False))
    (first,) = await queue(h, 1)
    (second,) = await queue(h, 1, to="491700000002")
    h.pump.settled(connected=True)
    done = await until_messages(h.lease.session_id, statuses("unknown", "sent"))
    assert done[0]["failure_reason"] == outbound.LOST_TRACK
    assert h.sends.refs() == [first.ref, second.ref], "the first is never sent again"


async def test_an_ack_that_could_not_be_written_is_recorded_when_settling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Paced: the ack is written alone (not with a take), and that write fails.
    h = await start(await claimed(), dataclasses.replace(FAST, send_interval=0.2))
    try:
        monkeypatch.setattr(sender, "_mark_sent", failing_once(sender._mark_sent, after=False))
        first, second = await queue(h, 2)
        h.pump.settled(connected=True)
        done = await until_messages(h.lease.session_id, statuses("sent", "sent"))
        assert done[0]["wa_id"] == f"WA-{first.ref[:8]}", "WhatsApp's id, from the held ack"
        assert h.sends.refs() == [first.ref, second.ref]
    finally:
        await h.pump.aclose()
