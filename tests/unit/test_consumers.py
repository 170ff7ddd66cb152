"""WebSocket consumers through Channels' WebsocketCommunicator and the real ASGI stack."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from sessions_app import doorbell, snapshots
from sessions_app.consumers import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_BIG,
    CLOSE_UNAUTHENTICATED,
    _OperatorConsumer,
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
    await ws.disconnect()


async def test_non_staff_is_closed_with_4403(session: WaSession, plain_user: Any) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/", username="bob")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}
    await ws.disconnect()


async def test_foreign_origin_is_rejected(session: WaSession) -> None:
    headers = [(b"origin", b"http://evil.example")] + (await cookie_for("ada"))[1:]
    ws = await connect(f"/ws/sessions/{session.pk}/", headers=headers)
    connected, _ = await ws.connect()
    assert not connected


async def test_unknown_session_is_closed_with_4404(staff_user: Any) -> None:
    ws = await connect("/ws/sessions/999999/")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}
    await ws.disconnect()


async def test_snapshot_on_connect_then_pushes(session: WaSession) -> None:
    ws = await connect(f"/ws/sessions/{session.pk}/")
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_json_from()
    assert first["type"] == "snapshot"
    assert first["snapshot"]["state"] == "qr_required"
    # The code as text: the page draws it (the image is the same secret, losslessly).
    assert first["snapshot"]["qr_code"] == "https://wa.me/x#abc"
    assert "<svg" not in str(first), "no SVG is made on the way to the browser"

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
    assert first["snapshot"]["qr_code"] == "https://wa.me/x#second"
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


async def group_size(group: str) -> int:
    """Members of a channel-layer group (in-memory layer or channels-redis)."""
    layer = get_channel_layer()
    if hasattr(layer, "groups"):
        return len(layer.groups.get(group, {}))
    connection = layer.connection(layer.consistent_hash(group))
    return int(await connection.zcard(layer._group_key(group)))


async def test_oversized_messages_close_with_an_application_code_and_leave_the_groups(
    session: WaSession, staff_user: Any
) -> None:
    """1009 is the protocol's own code (Daphne refuses to send it: 1011 + traceback)."""
    groups = [doorbell.session_group(session.pk), doorbell.user_group(staff_user.pk)]
    before = [await group_size(g) for g in groups]
    ws = await connect(f"/ws/sessions/{session.pk}/")
    await ws.connect()
    await ws.receive_json_from()
    assert [await group_size(g) for g in groups] == [n + 1 for n in before]
    await ws.send_to(text_data="x" * 5000)
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_TOO_BIG}
    assert 4000 <= CLOSE_TOO_BIG <= 4999
    # Left at once, not when the group expires (no disconnect message was sent yet).
    assert [await group_size(g) for g in groups] == before
    await doorbell.publish(await push(session, version=77), None)
    assert await ws.receive_nothing()
    await ws.disconnect()


async def test_not_found_closes_leave_the_groups_too(staff_user: Any) -> None:
    group = doorbell.session_group(999999)
    before = await group_size(group)
    ws = await connect("/ws/sessions/999999/")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}
    assert await group_size(group) == before
    assert await group_size(doorbell.user_group(staff_user.pk)) == 0
    await ws.disconnect()


@pytest.mark.parametrize(
    "path",
    [
        "/ws/nope/",
        "/ws/sessions/abc/",
        "/ws/sessions/1/extra/",
        "/ws/<script>alert(1)</script>/",
        "/ws/sessions/" + "9" * 19 + "/",
        "/ws/sessions/" + "9" * 83 + "/",
        "/ws/sessions/" + "9" * 500 + "/",
    ],
)
async def test_unknown_paths_and_overlong_ids_close_cleanly_with_4404(
    staff_user: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No 500, no traceback, nothing of the path echoed: a plain 4404 close."""
    ws = await connect(path)
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}
    await ws.disconnect()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_the_largest_routed_id_is_an_ordinary_unknown_session(staff_user: Any) -> None:
    ws = await connect("/ws/sessions/" + "9" * 18 + "/")
    await ws.connect()
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}
    await ws.disconnect()


@pytest.mark.parametrize(
    "origin",
    [
        b"http://localhost:8001",  # another port of an allowed host
        b"https://localhost",  # another scheme
        b"http://evil.example",
        b"null",
        b"localhost",
    ],
)
async def test_foreign_origins_with_another_port_or_scheme_are_refused(
    session: WaSession, origin: bytes
) -> None:
    headers = [(b"origin", origin)] + (await cookie_for("ada"))[1:]
    ws = await connect(f"/ws/sessions/{session.pk}/", headers=headers)
    connected, _ = await ws.connect()
    assert not connected


async def test_the_pages_own_origin_with_its_port_is_accepted(session: WaSession) -> None:
    cookie = (await cookie_for("ada"))[2:]
    headers = [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000"), *cookie]
    ws = await connect(f"/ws/sessions/{session.pk}/", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    assert (await ws.receive_json_from())["type"] == "snapshot"
    await ws.disconnect()


# -- revocation: open sockets lose their rights with their user -------------------


@sync_to_async
def login_cookie(user: Any) -> tuple[Client, list[tuple[bytes, bytes]]]:
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return client, [ORIGIN, HOST, (b"cookie", cookie)]


async def watching(session: WaSession, headers: Any) -> WebsocketCommunicator:
    ws = await connect(f"/ws/sessions/{session.pk}/", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    assert (await ws.receive_json_from())["type"] == "snapshot"
    return ws


async def assert_closed_and_deaf(ws: WebsocketCommunicator, session: WaSession, code: int) -> None:
    """Closed with ``code``, out of the session's group, and no QR push reaches it."""
    assert await ws.receive_output() == {"type": "websocket.close", "code": code}
    assert await group_size(doorbell.session_group(session.pk)) == 0
    await doorbell.publish(await push(session, qr_code="https://wa.me/x#new", version=50), None)
    assert await ws.receive_nothing()
    await ws.disconnect()  # what the server sends after a close: the consumer ends


async def test_logout_closes_that_login_sessions_sockets(
    session: WaSession, staff_user: Any
) -> None:
    client, headers = await login_cookie(staff_user)
    _other_client, other_headers = await login_cookie(staff_user)
    ws = await watching(session, headers)
    other = await watching(session, other_headers)
    response = await sync_to_async(client.post)(reverse("logout"))
    assert response.status_code == 302
    assert await ws.receive_output() == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    # The same user's other browser is still logged in and keeps its socket.
    await doorbell.publish(await push(session, version=60), None)
    assert (await other.receive_json_from())["snapshot"]["version"] == 60
    assert await ws.receive_nothing()
    await ws.disconnect()
    await other.disconnect()


def _deactivate(user: Any) -> None:
    user.is_active = False
    user.save()


def _unstaff(user: Any) -> None:
    user.is_staff = False
    user.save()


def _new_password(user: Any) -> None:
    user.set_password("another horse battery")
    user.save()


def _delete(user: Any) -> None:
    user.delete()


def _remove_permissions(user: Any) -> None:
    user.user_permissions.remove(*Permission.objects.filter(codename__in=SEE))


def _clear_permissions(user: Any) -> None:
    user.user_permissions.clear()


def _remove_user_from_permission(user: Any) -> None:
    for perm in Permission.objects.filter(codename__in=SEE):
        perm.user_set.remove(user)


def _via_group(change: str) -> Any:
    """The user sees sessions only through a group; then ``change`` takes that away."""

    def mutate(user: Any) -> None:
        group = Group.objects.get(name="operators")
        if change == "permission_removed":
            group.permissions.remove(*Permission.objects.filter(codename__in=SEE))
        elif change == "permissions_cleared":
            group.permissions.clear()
        elif change == "permission_cleared_from_groups":
            for perm in Permission.objects.filter(codename__in=SEE):
                perm.group_set.clear()
        elif change == "user_left":
            user.groups.remove(group)
        elif change == "group_emptied":
            group.user_set.clear()
        elif change == "group_deleted":
            group.delete()

    mutate.__name__ = f"via_group_{change}"
    return mutate


SEE = ["view_wasession", "change_wasession"]

REVOCATIONS = [
    (_deactivate, CLOSE_UNAUTHENTICATED),
    (_new_password, CLOSE_UNAUTHENTICATED),
    (_delete, CLOSE_UNAUTHENTICATED),
    (_unstaff, CLOSE_FORBIDDEN),
    (_remove_permissions, CLOSE_FORBIDDEN),
    (_clear_permissions, CLOSE_FORBIDDEN),
    (_remove_user_from_permission, CLOSE_FORBIDDEN),
    *[
        (_via_group(change), CLOSE_FORBIDDEN)
        for change in (
            "permission_removed",
            "permissions_cleared",
            "permission_cleared_from_groups",
            "user_left",
            "group_emptied",
            "group_deleted",
        )
    ],
]


@sync_to_async
def group_operator() -> Any:
    """A staff user who may see sessions only through the group "operators"."""
    user = get_user_model().objects.create_user(username="gus", is_staff=True)
    group = Group.objects.create(name="operators")
    group.permissions.set(Permission.objects.filter(codename__in=SEE))
    user.groups.add(group)
    return user


@pytest.mark.parametrize(
    ("revoke", "code"), REVOCATIONS, ids=[f.__name__.strip("_") for f, _ in REVOCATIONS]
)
async def test_losing_a_right_closes_open_sockets_at_once(
    session: WaSession, staff_user: Any, revoke: Any, code: int
) -> None:
    user = await group_operator() if revoke.__name__.startswith("via_group") else staff_user
    _client, headers = await login_cookie(user)
    ws = await watching(session, headers)
    listing = await connect("/ws/sessions/", headers=headers)
    await listing.connect()
    assert (await listing.receive_json_from())["type"] == "rows"
    await sync_to_async(revoke)(user)
    await assert_closed_and_deaf(ws, session, code)
    assert await listing.receive_output() == {"type": "websocket.close", "code": code}
    assert await group_size(doorbell.LIST_GROUP) == 0
    await listing.disconnect()


async def test_an_unrelated_change_keeps_the_socket(session: WaSession, staff_user: Any) -> None:
    _client, headers = await login_cookie(staff_user)
    ws = await watching(session, headers)

    def rename(user: Any) -> None:
        user.first_name = "Ada"
        user.save()
        user.user_permissions.remove(Permission.objects.get(codename="delete_wasession"))

    await sync_to_async(rename)(staff_user)
    await doorbell.publish(await push(session, version=70), None)
    assert (await ws.receive_json_from())["snapshot"]["version"] == 70
    await ws.disconnect()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"is_staff": False}, CLOSE_FORBIDDEN),
        ({"is_active": False}, CLOSE_UNAUTHENTICATED),
        ("session_deleted", CLOSE_UNAUTHENTICATED),
    ],
)
async def test_pings_recheck_what_no_signal_announced(
    session: WaSession, staff_user: Any, monkeypatch: pytest.MonkeyPatch, change: Any, code: int
) -> None:
    """A queryset update() or a deleted login session sends no signal: the next ping sees it."""
    monkeypatch.setattr(_OperatorConsumer, "RECHECK_EVERY", 0.0)
    client, headers = await login_cookie(staff_user)
    ws = await watching(session, headers)
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}

    def silently() -> None:
        if change == "session_deleted":
            Session.objects.filter(session_key=client.cookies["sessionid"].value).delete()
        else:
            get_user_model().objects.filter(pk=staff_user.pk).update(**change)

    await sync_to_async(silently)()
    await ws.send_json_to({"type": "ping"})
    await assert_closed_and_deaf(ws, session, code)


async def test_pings_recheck_at_most_once_per_interval(
    session: WaSession, staff_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser spamming pings does not turn each into database queries."""
    monkeypatch.setattr(_OperatorConsumer, "RECHECK_EVERY", 3600.0)
    _client, headers = await login_cookie(staff_user)
    ws = await watching(session, headers)
    await sync_to_async(get_user_model().objects.filter(pk=staff_user.pk).update)(is_staff=False)
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}, "checked on connect, just now"
    await ws.disconnect()


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


async def test_a_sockets_check_logs_nobody_out(session: WaSession, staff_user: Any) -> None:
    """A changed password closes the socket; the login session itself is left to Django
    (its password-change view keeps the changer's own session valid)."""
    client, headers = await login_cookie(staff_user)
    ws = await watching(session, headers)
    await sync_to_async(_new_password)(staff_user)
    await assert_closed_and_deaf(ws, session, CLOSE_UNAUTHENTICATED)
    key = client.cookies["sessionid"].value
    assert await sync_to_async(Session.objects.filter(session_key=key).exists)()
