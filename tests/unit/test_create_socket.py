"""The create page's socket (/ws/sessions/new/): create over it, then watch the new
session on it, through Channels' WebsocketCommunicator and the real ASGI stack."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from messaging import live
from sessions_app import doorbell, service, snapshots, socket_pages
from sessions_app.consumers import CLOSE_FORBIDDEN
from sessions_app.models import SessionEvent, WaSession
from waconnect.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")


@sync_to_async
def browser(username: str) -> Client:
    """A logged-in browser that has loaded the create page (so it holds a CSRF cookie)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.get(username=username))
    client.get("/sessions/new/")
    return client


def headers_of(client: Client) -> list[tuple[bytes, bytes]]:
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())
    return [ORIGIN, HOST, (b"cookie", cookie.encode())]


async def open_create_socket(client: Client) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, "/ws/sessions/new/", headers=headers_of(client))
    connected, _ = await ws.connect()
    assert connected
    return ws


@sync_to_async
def rows() -> list[dict[str, Any]]:
    return list(WaSession.objects.values("id", "name", "desired_state", "pair_request"))


@sync_to_async
def intent_events(session_id: int) -> list[tuple[str, str]]:
    events = SessionEvent.objects.filter(session_id=session_id, kind=SessionEvent.Kind.INTENT)
    return list(events.values_list("actor", "message"))


@pytest.fixture
async def ada(staff_user: Any) -> Client:
    return await browser("ada")


async def test_create_over_the_socket_then_its_pushes_on_the_same_socket(ada: Client) -> None:
    ws = await open_create_socket(ada)
    assert await ws.receive_json_from() == {"type": "ready"}

    await ws.send_json_to({"type": "create", "name": "over-the-socket"})
    created = await ws.receive_json_from()

    assert created["type"] == "created"
    [row] = await rows()
    assert row == {
        "id": created["id"],
        "name": "over-the-socket",
        "desired_state": "running",
        "pair_request": 1,
    }
    assert created["url"] == f"/sessions/{row['id']}/"
    assert created["ws"] == f"/ws/sessions/{row['id']}/"
    assert 'id="detail"' in created["html"] and "over-the-socket" in created["html"]
    assert await intent_events(row["id"]) == [
        ("ada", "created the session and asked for a QR code")
    ]

    session = await sync_to_async(WaSession.objects.get)(pk=row["id"])
    await sync_to_async(WaSession.objects.filter(pk=row["id"]).update)(
        state="qr_required", qr_code="https://wa.me/x#new", version=3
    )
    snap = await sync_to_async(snapshots.snapshot)(
        await sync_to_async(WaSession.objects.get)(pk=session.pk)
    )
    await doorbell.publish(snap, None)
    assert await ws.receive_json_from() == {"type": "snapshot", "snapshot": snap}
    await ws.disconnect()


async def test_the_new_sessions_message_pushes_reach_the_create_socket(ada: Client) -> None:
    """The page that came from the create socket shows the Messages panel; its ticks
    arrive on the same socket (it watches the session's messages group too)."""
    ws = await open_create_socket(ada)
    assert await ws.receive_json_from() == {"type": "ready"}
    await ws.send_json_to({"type": "create", "name": "with-messages"})
    created = await ws.receive_json_from()
    fields = {
        "ref": "r1",
        "direction": "out",
        "status": "sent",
        "to": "4915112345678",
        "text": "hi",
        "version": 2,
    }
    await get_channel_layer().group_send(
        live.messages_group(created["id"]), {"type": "message.update", "message": fields}
    )
    pushed = await ws.receive_json_from()
    assert pushed["type"] == "message"
    assert (pushed["message"]["ref"], pushed["message"]["status"]) == ("r1", "sent")
    await ws.disconnect()


async def test_the_detail_page_it_sends_has_forms_that_post(ada: Client) -> None:
    """The action forms' CSRF tokens belong to the browser's own CSRF cookie."""
    ws = await open_create_socket(ada)
    await ws.receive_json_from()
    await ws.send_json_to({"type": "create", "name": "forms-post"})
    created = await ws.receive_json_from()
    await ws.disconnect()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', created["html"]).group(1)

    response = await sync_to_async(ada.post)(
        f"{created['url']}stop/", {"csrfmiddlewaretoken": token}, HTTP_ACCEPT="application/json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["ok"] is True


async def test_a_refused_name_is_answered_and_the_socket_stays_ready(ada: Client) -> None:
    await sync_to_async(WaSession.objects.create)(name="Taken")
    ws = await open_create_socket(ada)
    await ws.receive_json_from()

    for bad in ["taken", "x", "12345", "bad name!", ""]:
        await ws.send_json_to({"type": "create", "name": bad})
        answer = await ws.receive_json_from()
        assert answer["type"] == "invalid", bad
        assert answer["errors"]["name"], bad
    await ws.send_json_to({"type": "create", "name": "fine-name"})

    assert (await ws.receive_json_from())["type"] == "created"
    assert sorted(r["name"] for r in await rows()) == ["Taken", "fine-name"]
    await ws.disconnect()


async def test_one_create_per_socket(ada: Client) -> None:
    ws = await open_create_socket(ada)
    await ws.receive_json_from()
    await ws.send_json_to({"type": "create", "name": "first-one"})
    assert (await ws.receive_json_from())["type"] == "created"

    await ws.send_json_to({"type": "create", "name": "second-one"})

    assert (await ws.receive_json_from())["type"] == "error"
    assert [r["name"] for r in await rows()] == ["first-one"]
    await ws.disconnect()


async def test_without_the_add_permission_the_socket_is_closed(staff_user: Any) -> None:
    await sync_to_async(staff_user.user_permissions.remove)(
        *await sync_to_async(list)(Permission.objects.filter(codename="add_wasession"))
    )
    client = await browser("ada")
    ws = WebsocketCommunicator(application, "/ws/sessions/new/", headers=headers_of(client))
    await ws.connect()

    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}
    await ws.disconnect()


async def test_a_permission_lost_after_connecting_creates_nothing(
    ada: Client, staff_user: Any
) -> None:
    """Checked again, fresh, when the create arrives (the removal's message may be lost)."""
    ws = await open_create_socket(ada)
    await ws.receive_json_from()

    @sync_to_async
    def remove_add() -> None:  # a queryset delete: no m2m signal, no recheck message
        staff_user.user_permissions.through.objects.filter(
            user=staff_user, permission__codename="add_wasession"
        ).delete()

    await remove_add()
    await ws.send_json_to({"type": "create", "name": "not-allowed"})

    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}
    assert await rows() == []
    await ws.disconnect()


async def test_once_created_losing_the_add_permission_keeps_the_watch(
    ada: Client, staff_user: Any
) -> None:
    """The socket is the new session's from then on: seeing it is what it needs."""
    ws = await open_create_socket(ada)
    await ws.receive_json_from()
    await ws.send_json_to({"type": "create", "name": "still-watched"})
    assert (await ws.receive_json_from())["type"] == "created"

    @sync_to_async
    def remove_add() -> None:
        staff_user.user_permissions.through.objects.filter(
            user=staff_user, permission__codename="add_wasession"
        ).delete()

    await remove_add()
    layer = get_channel_layer()  # what revocation sends: re-check the user, fresh
    await layer.group_send(
        doorbell.user_group(staff_user.pk), {"type": "user.recheck", "logged_out": ""}
    )
    await ws.send_json_to({"type": "ping"})

    assert await ws.receive_json_from() == {"type": "pong"}, "closed after the re-check"
    await ws.disconnect()


def record_ring_and_render(
    monkeypatch: pytest.MonkeyPatch, *, render_fails: bool = False
) -> list[str]:
    """What the create does, in order: the render of its answer, its ring (sent from
    the socket's loop, or requested from the create's thread after the commit)."""
    done: list[str] = []
    render = socket_pages.detail_html

    def rendering(*args: Any) -> str | None:
        done.append("render")
        if render_fails:
            raise RuntimeError("the template broke")
        return render(*args)

    async def ring(session_id: int, reason: str) -> None:
        done.append(f"ring {reason}")

    monkeypatch.setattr(socket_pages, "detail_html", rendering)
    monkeypatch.setattr(doorbell, "ring_supervisors", ring)
    monkeypatch.setattr(doorbell, "ring_supervisors_sync", lambda *_: done.append("ring asked"))
    return done


async def send_create(client: Client, name: str) -> WebsocketCommunicator:
    """A create over a new create socket, sent (its answer not read)."""
    ws = await open_create_socket(client)
    await ws.receive_json_from()
    await ws.send_json_to({"type": "create", "name": name})
    return ws


@pytest.mark.parametrize(
    ("inline", "order"),
    [(True, ["render", "ring created"]), (False, ["ring asked", "render"])],
    ids=["supervisor-in-this-process", "supervisor-elsewhere"],
)
async def test_the_ring_follows_the_render_only_with_the_supervisor_in_this_process(
    ada: Client, monkeypatch: pytest.MonkeyPatch, inline: bool, order: list[str]
) -> None:
    """In this process they shared one GIL: the render slowed the supervisor's way to
    the code. A supervisor elsewhere is rung at the commit."""
    monkeypatch.setattr(service, "inline_running", lambda: inline)
    done = record_ring_and_render(monkeypatch)
    ws = await send_create(ada, "ring-and-render")

    assert (await ws.receive_json_from())["type"] == "created"
    assert done == order
    await ws.disconnect()


async def test_the_ring_goes_out_when_the_render_fails(
    ada: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing lost: the session exists, so the supervisors hear of it."""
    monkeypatch.setattr(service, "inline_running", lambda: True)
    done = record_ring_and_render(monkeypatch, render_fails=True)
    ws = await send_create(ada, "render-fails")

    with pytest.raises(RuntimeError, match="the template broke"):
        await ws.receive_output()
    assert done == ["render", "ring created"]
    assert [r["name"] for r in await rows()] == ["render-fails"]
