"""Who may do what: every page, action and socket × every kind of user.

Django's model permissions decide (sessions_app/permissions.py): staff status is
required everywhere; view_wasession to see, add_ to create, change_ for the
actions, delete_ to delete. Anonymous and inactive users are sent to log in.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from messaging.models import Message
from sessions_app.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from sessions_app.models import PhoneAction, SessionEvent, WaSession
from tests.conftest import SESSION_PERMISSIONS
from waconnect.asgi import application

#: kind → (is_staff, is_active, permissions, through a group?)
KINDS: dict[str, tuple[bool, bool, list[str], bool]] = {
    "non_staff": (False, True, SESSION_PERMISSIONS, False),
    "inactive": (True, False, SESSION_PERMISSIONS, False),
    "staff_without_permissions": (True, True, [], False),
    "view_only": (True, True, ["view_wasession"], True),
    "full": (True, True, SESSION_PERMISSIONS, False),
}
ALL_KINDS = ["anonymous", *KINDS]

LOGIN = "login"
FORBIDDEN = 403


def make_user(kind: str) -> Any:
    """A user of this kind, named after it; view_only gets its permission through a group."""
    is_staff, is_active, perms, via_group = KINDS[kind]
    user, created = get_user_model().objects.get_or_create(
        username=kind, defaults={"is_staff": is_staff, "is_active": is_active}
    )
    if not created:
        return user
    granted = Permission.objects.filter(codename__in=perms)
    if via_group:
        group, _ = Group.objects.get_or_create(name=f"{kind} operators")
        group.permissions.set(granted)
        user.groups.add(group)
    else:
        user.user_permissions.set(granted)
    return user


def client_for(kind: str) -> Client:
    client = Client()
    if kind != "anonymous":
        client.force_login(make_user(kind))
    return client


def expected(kind: str, allowed_for: set[str], ok: int) -> int | str:
    if kind in ("anonymous", "inactive"):
        return LOGIN
    return ok if kind in allowed_for else FORBIDDEN


def outcome(response: Any) -> int | str:
    if response.status_code == 302 and response["Location"].startswith(reverse("login")):
        return LOGIN
    return response.status_code


SEE = {"view_only", "full"}
FULL = {"full"}


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(
        name="sales", state="qr_required", qr_code="https://wa.me/x#secret", jid=""
    )


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_pages_matrix(kind: str, session: WaSession) -> None:
    """List, detail and the create form: who sees what."""
    client = client_for(kind)
    assert outcome(client.get(reverse("sessions:list"))) == expected(kind, SEE, 200)
    detail = client.get(reverse("sessions:detail", args=[session.pk]))
    assert outcome(detail) == expected(kind, SEE, 200)
    if detail.status_code != 200:
        assert b"<svg" not in detail.content, "no QR code without the permission"
    assert outcome(client.get(reverse("sessions:create"))) == expected(kind, FULL, 200)
    created = client.post(reverse("sessions:create"), {"name": f"new-{kind}"})
    assert outcome(created) == expected(kind, FULL, 302)
    assert WaSession.objects.filter(name=f"new-{kind}").exists() == (kind in FULL)


ACTIONS = [
    "start",
    "stop",
    "new-qr",
    "logout",
    "pair-phone",
    "simulate-scan",
    "simulate-message",
    "delete",
    "messages",  # the detail page's Messages panel (its own view: sessions:send-message)
]
#: One form body that every action accepts (each reads only its own fields).
ACTION_DATA = {
    "phone": "+4915112345678",
    "sender": "+4917612345678",
    "to": "+4915112345678",
    "text": "hello",
}


def action_url(session: WaSession, action: str) -> str:
    if action == "messages":
        return reverse("sessions:send-message", args=[session.pk])
    return reverse("sessions:action", args=[session.pk, action])


@pytest.fixture
def stopped() -> WaSession:
    """A session every action applies to (a start during a QR round is refused as
    already running, whoever asks: tests/unit/test_intents.py)."""
    return WaSession.objects.create(name="sales", state="stopped", desired_state="stopped")


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("action", ACTIONS)
def test_actions_matrix(kind: str, action: str, stopped: WaSession) -> None:
    """Every action: only the full operator gets anything written; the rest change nothing."""
    session = stopped
    before = WaSession.objects.filter(pk=session.pk).values().get()
    response = client_for(kind).post(action_url(session, action), ACTION_DATA)
    assert outcome(response) == expected(kind, FULL, 302)
    after = WaSession.objects.filter(pk=session.pk).values().get()
    written = (
        SessionEvent.objects.filter(session=session, actor=kind).exists()
        or PhoneAction.objects.filter(session=session).exists()
        or Message.objects.filter(session=session).exists()
    )
    assert written == (kind in FULL)
    if kind not in FULL:
        assert after == before


@pytest.mark.django_db
def test_each_action_needs_its_own_permission(session: WaSession) -> None:
    """change_ allows the actions but not delete; delete_ allows only delete."""
    changer = get_user_model().objects.create_user("changer", is_staff=True)
    changer.user_permissions.set(Permission.objects.filter(codename="change_wasession"))
    deleter = get_user_model().objects.create_user("deleter", is_staff=True)
    deleter.user_permissions.set(Permission.objects.filter(codename="delete_wasession"))
    client = Client()
    client.force_login(changer)
    assert client.post(reverse("sessions:action", args=[session.pk, "stop"])).status_code == 302
    assert client.post(reverse("sessions:action", args=[session.pk, "delete"])).status_code == 403
    # change_ implies seeing, as in Django's admin
    assert client.get(reverse("sessions:detail", args=[session.pk])).status_code == 200
    client.force_login(deleter)
    assert client.post(reverse("sessions:action", args=[session.pk, "start"])).status_code == 403
    assert client.post(reverse("sessions:action", args=[session.pk, "delete"])).status_code == 302
    assert WaSession.objects.get(pk=session.pk).desired_state == "deleted"


@pytest.mark.django_db
def test_templates_hide_what_the_user_may_not_do(session: WaSession) -> None:
    """A view-only operator sees the session and its QR code, and no button."""
    view_only = client_for("view_only").get(reverse("sessions:detail", args=[session.pk]))
    html = view_only.content.decode()
    assert "<svg" in html
    for absent in ["data-action-form", 'id="pair-phone-form"', 'id="simulated-phone"']:
        assert absent not in html
    listing = client_for("view_only").get(reverse("sessions:list")).content.decode()
    assert 'id="new-session"' not in listing
    assert reverse("sessions:create") not in listing

    full = client_for("full").get(reverse("sessions:detail", args=[session.pk])).content.decode()
    for present in ['data-action="delete"', 'id="pair-phone-form"', 'id="simulated-phone"']:
        assert present in full
    assert 'id="new-session"' in client_for("full").get(reverse("sessions:list")).content.decode()

    changer = get_user_model().objects.create_user("changer", is_staff=True)
    changer.user_permissions.set(Permission.objects.filter(codename="change_wasession"))
    client = Client()
    client.force_login(changer)
    page = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    assert 'data-action="stop"' in page
    assert 'data-action="delete"' not in page


@pytest.mark.django_db
def test_admin_actions_need_the_change_permission(session: WaSession) -> None:
    """A view-only admin user can neither see nor run the admin's session actions."""
    client = client_for("view_only")
    url = reverse("admin:sessions_app_wasession_changelist")
    page = client.get(url)
    assert page.status_code == 200
    assert b"logout_sessions" not in page.content
    for action in ["start_sessions", "stop_sessions", "logout_sessions"]:
        client.post(url, {"action": action, "_selected_action": [session.pk]})
    row = WaSession.objects.get(pk=session.pk)
    assert (row.desired_state, row.connect_request, row.pair_request) == ("running", 0, 0)

    full = client_for("full")
    assert b"logout_sessions" in full.get(url).content
    full.post(url, {"action": "logout_sessions", "_selected_action": [session.pk]})
    assert WaSession.objects.get(pk=session.pk).desired_state == "logged_out"


# -- sockets ------------------------------------------------------------------------


@sync_to_async
def socket_headers(kind: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if kind != "anonymous":
        client = client_for(kind)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return headers


@sync_to_async
def make_session() -> WaSession:
    return WaSession.objects.create(name="watched", state="qr_required", qr_code="https://x#a")


SOCKET_EXPECTED = {
    "anonymous": CLOSE_UNAUTHENTICATED,
    "inactive": CLOSE_UNAUTHENTICATED,
    "non_staff": CLOSE_FORBIDDEN,
    "staff_without_permissions": CLOSE_FORBIDDEN,
    "view_only": None,
    "full": None,
}
#: The first message each socket sends to a user it accepts.
SOCKET_FIRST = {"list": "rows", "detail": "snapshot", "create": "ready"}
SOCKET_PATHS = {"list": "/ws/sessions/", "create": "/ws/sessions/new/"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("which", ["list", "detail", "create"])
async def test_sockets_matrix(kind: str, which: str) -> None:
    """Every socket: its first message for those who may use it (seeing sessions; the
    create page's socket needs adding too, as the create page), a close code for
    everyone else."""
    session = await make_session()
    path = SOCKET_PATHS.get(which, f"/ws/sessions/{session.pk}/")
    ws = WebsocketCommunicator(application, path, headers=await socket_headers(kind))
    connected, _ = await ws.connect()
    assert connected
    code = SOCKET_EXPECTED[kind]
    if which == "create" and kind == "view_only":
        code = CLOSE_FORBIDDEN
    if code is None:
        first = await ws.receive_json_from()
        assert first["type"] == SOCKET_FIRST[which]
        await ws.disconnect()
    else:
        assert await ws.receive_output() == {"type": "websocket.close", "code": code}
        await ws.disconnect()  # as the server does after a close: the consumer ends
