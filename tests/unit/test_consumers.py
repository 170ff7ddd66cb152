"""WebSocket consumers through Channels' WebsocketCommunicator and the real ASGI stack."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import SESSION_KEY, get_user_model
from django.test import Client

from sessions_app import doorbell, snapshots
from sessions_app.consumers import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_BIG,
    CLOSE_UNAUTHENTICATED,
)
from sessions_app.models import WaSession
from waconnect.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")


@sync_to_async
def cookie_for(username: str | None) -> list[tuple[bytes, bytes]]:
    if username is None:
        return [ORIGIN, HOST]
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    assert SESSION_KEY in client.session
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return [ORIGIN, HOST, (b"cookie", cookie.encode())]


@sync_to_async
def make_session(**fields: Any) -> WaSession:
    return WaSession.objects.create(name=fields.pop("name", "ws"), **fields)


async def connect(
    path: str, username: str | None = "ada", headers: Any = None
) -> WebsocketCommunicator:
    headers = headers if headers is not None else await cookie_for(username)
    communicator = WebsocketCommunicator(application, path, headers=headers)
    return communicator


@pytest.fixture
async def session(staff_user: Any) -> WaSession:
    return await make_session(name="watched", state="qr_required", qr_code="https://wa.me/x#abc")


@sync_to_async
def push(session: WaSession, **changes: Any) -> dict[str, Any]:
    WaSession.objects.filter(pk=session.pk).update(**changes)
    return snapshots.snapshot(WaSession.objects.get(pk=session.pk))


async def test_anonymous_is_closed_with_4401(session: WaSession) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/", username=None)
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


async def test_non_staff_is_closed_with_4403(session: WaSession, plain_user: Any) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/", username="bob")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}


async def test_foreign_origin_is_rejected(session: WaSession) -> None:
    headers = [(b"origin", b"http://evil.example")] + (await cookie_for("ada"))[1:]
    ws = await connect(f"/ws/sessions/{session.pk}/", headers=headers)
    connected, _ = await ws.connect()
    assert not connected


async def test_unknown_session_is_closed_with_4404(staff_user: Any) -> None:
    ws = await connect("/ws/sessions/999999/")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}


async def test_snapshot_on_connect_then_pushes(session: WaSession) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/")
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_json_from()
    assert first["type"] == "snapshot"
    assert first["snapshot"]["state"] == "qr_required"
    assert first["snapshot"]["qr_svg"].startswith("<svg")
    assert "wa.me" not in str(first), "the QR payload itself never leaves the server"

    snap = await push(session, state="connected", jid="4915@s.whatsapp.net", version=5)
    await doorbell.publish(
        snap, snapshots.row(await sync_to_async(WaSession.objects.get)(pk=session.pk))
    )
    update = await ws.receive_json_from()
    assert update == {"type": "snapshot", "snapshot": snap}
    assert update["snapshot"]["phone"] == "+4915"
    await ws.disconnect()


async def test_a_late_joiner_gets_the_current_qr(session: WaSession) -> None:
    snap = await push(session, qr_code="https://wa.me/x#second", version=9)
    await doorbell.publish(snap, None)  # nobody listening yet: lost, and that's fine
    ws = await connect(f"/ws/sessions/{session.pk}/")
    await ws.connect()
    first = await ws.receive_json_from()
    assert first["snapshot"]["qr_svg"] == snapshots.qr_svg("https://wa.me/x#second")
    assert first["snapshot"]["version"] == 9
    await ws.disconnect()


async def test_garbage_does_not_break_the_consumer(session: WaSession) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/")
    await ws.connect()
    await ws.receive_json_from()
    for garbage in ["not json", "[1,2]", '{"type": "drop tables"}', " ", "{}"]:
        await ws.send_to(text_data=garbage)
        assert (await ws.receive_json_from())["type"] == "error"
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_json_from())["type"] == "error"
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}
    await ws.disconnect()


async def test_oversized_messages_close_the_socket(session: WaSession) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/")
    await ws.connect()
    await ws.receive_json_from()
    await ws.send_to(text_data="x" * 5000)
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_TOO_BIG}


async def test_list_socket_sends_rows_then_row_updates(session: WaSession) -> None:
    ws = await connect("/ws/sessions/")
    await ws.connect()
    first = await ws.receive_json_from()
    assert first == {"type": "rows", "rows": [snapshots.row(session)]}
    snap = await push(session, state="connected", version=3)
    row = snapshots.row(await sync_to_async(WaSession.objects.get)(pk=session.pk))
    await doorbell.publish(snap, row)
    assert await ws.receive_json_from() == {"type": "row", "row": row}
    await get_channel_layer().group_send(
        doorbell.LIST_GROUP, {"type": "session.removed", "id": session.pk}
    )
    assert await ws.receive_json_from() == {"type": "removed", "id": session.pk}
    await ws.disconnect()


async def test_pushes_skip_the_database_clean_up_other_messages_keep_it(
    session: WaSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    cleanups: list[str] = []

    async def counted() -> None:
        cleanups.append("cleanup")

    monkeypatch.setattr("channels.consumer.aclose_old_connections", counted)
    ws = await connect(f"/ws/sessions/{session.pk}/")
    await ws.connect()
    await ws.receive_json_from()
    before = len(cleanups)
    snap = await push(session, qr_code="https://wa.me/x#pushed", version=11)
    await doorbell.publish(snap, None)
    assert (await ws.receive_json_from())["snapshot"]["version"] == 11
    assert len(cleanups) == before, "a push went through the sync thread"
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}
    assert len(cleanups) == before + 1, "a browser's message keeps the clean-up"
    await ws.disconnect()
