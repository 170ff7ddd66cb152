"""The whole path on the simulated WhatsApp: the real supervisor links two sessions,
one messages the other, and a real receiver gets every session.status,
message.status and message.received webhook, verified and in each session's order."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from messaging import intents
from sessions_app.drivers.simulated import SimulatedTiming, SimulatedWhatsApp
from tests.unit.messaging_helpers import statuses, until_messages
from tests.unit.test_supervisor import paired, running
from tests.unit.test_webhooks_dispatch import FAST
from tests.webhooks.receiver import Receiver
from webhooks import endpoints
from webhooks.conf import webhook_config
from webhooks.dispatcher import Dispatcher

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def no_pacing(settings: Any) -> None:
    settings.WACONNECT_SEND_INTERVAL = 0


async def test_linking_and_messaging_are_reported_in_order() -> None:
    timing = SimulatedTiming(first_qr_ttl=5, pair_delay=0.01, delivered_delay=0.05)
    world = SimulatedWhatsApp(dataclasses.replace(timing, read_delay=0.05))
    async with Receiver() as receiver:
        hook = await sync_to_async(endpoints.create)(url=receiver.url)
        receiver.secret = hook.secret
        dispatcher = Dispatcher(config=webhook_config(**FAST))
        task = asyncio.create_task(dispatcher.run())
        try:
            async with running(world) as supervisor:
                alice = await paired("alice", supervisor)
                for attempt in range(10):
                    # The simulated WhatsApp numbers some devices with a leading 0,
                    # which no phone number has (messaging refuses it): pair another.
                    bob = await paired(f"bob{attempt}", supervisor)
                    bob_number = bob.jid.split("@")[0].split(":")[0]
                    if not bob_number.startswith("0"):
                        break
                sent = await sync_to_async(intents.enqueue)(alice, bob_number, "hi bob")
                await until_messages(alice.pk, statuses("read"))
                await until_messages(bob.pk, statuses("received"))

                def complete(got: list[dict[str, Any]]) -> bool:
                    kinds = [(p["type"], p["data"].get("status")) for p in got]
                    return ("message.status", "read") in kinds and (
                        "message.received",
                        "received",
                    ) in kinds

                await receiver.wait_for(complete, 20)
        finally:
            dispatcher.stop()
            await task
    by_session: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for payload in receiver.accepted:
        by_session[payload["session"]["name"]].append(payload)
    for name, payloads in by_session.items():
        seqs = [p["sequence"] for p in payloads]
        assert seqs == sorted(seqs) and seqs[0] == 1, (name, seqs)
    alice_states = [
        p["data"]["state"] for p in by_session["alice"] if p["type"] == "session.status"
    ]
    assert alice_states[:2] == ["connecting", "qr_required"] and "connected" in alice_states
    assert "session.qr" not in {p["type"] for p in receiver.accepted}  # opt-in only
    outcomes = [p["data"]["status"] for p in by_session["alice"] if p["type"] == "message.status"]
    assert outcomes == ["sent", "delivered", "read"]
    (received,) = [p for p in by_session[bob.name] if p["type"] == "message.received"]
    assert (received["data"]["text"], received["data"]["wa_id"]) == ("hi bob", sent.ref)
