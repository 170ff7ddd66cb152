"""``POST /sessions/{id}/messages?wait=sent``: the answer waits for the owner's push.

Runs on the in-memory layer here and on channels-redis + PostgreSQL in make test's
second pass. A wrapper around the layer's ``receive`` tells the test when the view
waits, so the push is known to arrive while it waits (no sleeping).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import AsyncClient
from django.utils import timezone

from api.issuing import create_token
from api.routers import messages as messages_router
from messaging import live
from messaging.models import Message
from sessions_app.models import WaSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


class Sender:
    """Django's AsyncClient (the ASGI handler, in this event loop) with a token."""

    def __init__(self, token: str) -> None:
        self.client = AsyncClient()
        self.headers = {"Authorization": f"Bearer {token}"}

    async def send(self, session_id: int, query: str = "", **headers: str) -> Any:
        return await self.client.post(
            f"/api/v1/sessions/{session_id}/messages{query}",
            {"to": "4915112345678", "text": "Hello!"},
            content_type="application/json",
            headers={**self.headers, **headers},
        )


@sync_to_async
def setup(user: Any) -> tuple[WaSession, str]:
    session = WaSession.objects.create(name="sender", state="connected")
    _, text = create_token(user=user, name="waiter", scopes=["messages:send"])
    return session, text


@pytest.fixture
async def sender(api_user: Any) -> tuple[WaSession, Sender]:
    session, text = await setup(api_user)
    return session, Sender(text)


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once the view waits on the channel layer."""
    event = asyncio.Event()
    layer = get_channel_layer()
    receive = layer.receive

    async def watched(channel: str) -> Any:
        event.set()
        return await receive(channel)

    monkeypatch.setattr(layer, "receive", watched)
    return event


@sync_to_async
def advance(status: str, **fields: Any) -> Message:
    """What the owner does: move the only message on (fenced, in real life) and read it."""
    message = Message.objects.get()
    Message.objects.filter(pk=message.pk).update(
        status=status, version=message.version + 1, status_changed_at=timezone.now(), **fields
    )
    return Message.objects.get(pk=message.pk)


async def test_a_sent_push_answers_the_waiting_send(
    sender: tuple[WaSession, Sender], waiting: asyncio.Event
) -> None:
    session, client = sender
    call = asyncio.create_task(client.send(session.pk, "?wait=sent&timeout=25"))
    await waiting.wait()
    sending = await advance("sending")
    await live.publish([sending])  # not settled: keeps waiting
    sent = await advance("sent", wa_id="3EB0ABC", sent_at=timezone.now())
    await live.publish([sent])
    response = await call
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["wa_id"], body["id"]) == ("sent", "3EB0ABC", sent.ref)


@pytest.mark.parametrize(
    ("status", "reason"),
    [("failed", "not_on_whatsapp"), ("expired", "deadline"), ("unknown", "timeout")],
)
async def test_a_message_settled_without_being_sent_answers_too(
    sender: tuple[WaSession, Sender], waiting: asyncio.Event, status: str, reason: str
) -> None:
    session, client = sender
    call = asyncio.create_task(client.send(session.pk, "?wait=sent&timeout=25"))
    await waiting.wait()
    await live.publish([await advance(status, failure_reason=reason)])
    body = (await call).json()
    assert (body["status"], body["failure_reason"]) == (status, reason)


async def test_pushes_of_other_messages_keep_it_waiting(
    sender: tuple[WaSession, Sender], waiting: asyncio.Event
) -> None:
    session, client = sender
    call = asyncio.create_task(client.send(session.pk, "?wait=sent&timeout=25"))
    await waiting.wait()
    layer = get_channel_layer()
    other = {"ref": "0" * 32, "status": "sent", "version": 9}
    await layer.group_send(
        live.messages_group(session.pk), {"type": "message.update", "message": other}
    )
    await layer.group_send(live.messages_group(session.pk), {"type": "something.else"})
    assert not call.done()
    await live.publish([await advance("sent")])
    assert (await call).json()["status"] == "sent"


async def test_the_wait_runs_out_with_the_message_as_it_is(
    sender: tuple[WaSession, Sender], settings: Any
) -> None:
    session, client = sender
    settings.WACONNECT_API_MAX_WAIT = 0.2  # timeout=25 is capped by the setting
    response = await client.send(session.pk, "?wait=sent&timeout=25")
    assert (response.status_code, response.json()["status"]) == (202, "queued")


async def test_without_wait_the_answer_does_not_wait(sender: tuple[WaSession, Sender]) -> None:
    session, client = sender
    response = await client.send(session.pk, "?timeout=25")
    assert (response.status_code, response.json()["status"]) == (202, "queued")


async def test_a_repeat_with_its_key_waits_for_the_first_message(
    sender: tuple[WaSession, Sender], waiting: asyncio.Event
) -> None:
    session, client = sender
    first = await client.send(session.pk, **{"Idempotency-Key": "k-1"})
    call = asyncio.create_task(client.send(session.pk, "?wait=sent", **{"Idempotency-Key": "k-1"}))
    await waiting.wait()
    await live.publish([await advance("sent")])
    again = await call
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "sent"
    assert await Message.objects.acount() == 1


async def test_the_connection_is_given_back_before_the_wait(
    sender: tuple[WaSession, Sender], waiting: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held for up to 30 s, it would empty the pool with a few waiting clients (as the
    long poll's; tests/postgres/test_long_poll_pool.py measures that on a real server)."""
    session, client = sender
    order: list[str] = []
    release = messages_router._release_connections

    async def watched() -> None:
        order.append("released" if not waiting.is_set() else "released after waiting")
        await release()

    monkeypatch.setattr(messages_router, "_release_connections", watched)
    call = asyncio.create_task(client.send(session.pk, "?wait=sent&timeout=25"))
    await waiting.wait()
    assert order == ["released"]
    await live.publish([await advance("sent")])
    assert (await call).json()["status"] == "sent"
