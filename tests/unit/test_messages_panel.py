"""The detail page's Messages panel: what it shows, who may send, and its socket.

The page and the socket show a session's messages to whoever may see the session;
the send form is there only for users with the change permission, and the view
refuses everyone else. Texts are escaped (rendered) and plain data (pushed).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from messaging import live
from messaging.models import Message
from sessions_app import messages_panel
from sessions_app.models import WaSession
from tests.unit.test_consumers import connect

XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(name="sales", state="connected", jid="4915@s.whatsapp.net")


def make_user(name: str, *codenames: str) -> Any:
    user = get_user_model().objects.create_user(username=name, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def logged_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def out(session: WaSession, **fields: Any) -> Message:
    values = {"direction": "out", "status": "queued", "to": "+4915112345678", "text": "hi"}
    values.update(fields)
    return Message.objects.create(session=session, from_me=True, **values)


def received(session: WaSession, **fields: Any) -> Message:
    values = {
        "direction": "in",
        "status": "received",
        "wa_id": "WA1",
        "sender": "4917700000000@s.whatsapp.net",
        "push_name": "Peer",
        "text": "hello",
    }
    values.update(fields)
    return Message.objects.create(session=session, **values)


# -- what an item shows (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "tick", "label"),
    [
        ("queued", "◷", "Queued"),
        ("sending", "◷", "Sending"),
        ("sent", "✓", "Sent"),
        ("delivered", "✓✓", "Delivered"),
        ("read", "✓✓", "Read"),
        ("failed", "✕", "Failed"),
        ("expired", "✕", "Expired"),
        ("unknown", "?", "Unknown"),
    ],
)
def test_every_status_has_its_tick_and_label(status: str, tick: str, label: str) -> None:
    item = messages_panel.panel_item(
        {"ref": "r", "direction": "out", "status": status, "to": "+49", "version": 3}
    )
    assert (item["tick"], item["status_label"], item["version"]) == (tick, label, 3)


@pytest.mark.parametrize(
    ("status", "reason", "detail", "shown"),
    [
        ("failed", "not_on_whatsapp", "", "Failed: the number is not on WhatsApp"),
        ("failed", "rate_limited", "", "Failed: WhatsApp rate-limited the account"),
        ("failed", "error", "HTTP 500", "Failed: WhatsApp or the connection failed: HTTP 500"),
        ("expired", "", "", "Expired: not sent before its deadline"),
        ("expired", "deadline", "", "Expired: not sent before its deadline"),
        ("unknown", "owner_lost", "", f"Unknown: {messages_panel.REASONS['owner_lost']}"),
        ("unknown", "brand_new_reason", "", "Unknown: brand new reason"),
        ("sent", "not_on_whatsapp", "", ""),
    ],
)  # fmt: skip
def test_settled_messages_say_why(status: str, reason: str, detail: str, shown: str) -> None:
    item = messages_panel.panel_item(
        {"ref": "r", "direction": "out", "status": status, "failure_reason": reason,
         "failure_detail": detail}
    )  # fmt: skip
    assert item["reason"] == shown


@pytest.mark.django_db
def test_a_row_and_its_pushed_payload_show_the_same(session: WaSession) -> None:
    for message in (out(session, status="read"), received(session, push_name="")):
        assert messages_panel.panel_item(message) == messages_panel.panel_item(
            live.payload(message)
        )


@pytest.mark.parametrize(
    ("fields", "peer"),
    [
        ({"direction": "out", "to": "+49 151 1"}, "+49 151 1"),
        ({"direction": "in", "sender": "491@s.whatsapp.net", "push_name": "Ada"}, "Ada (+491)"),
        (
            {"direction": "in", "sender": "123@lid", "sender_phone": "492@s.whatsapp.net"},
            "+492",
        ),
        ({"direction": "in", "sender": "493@s.whatsapp.net", "from_me": True}, "this phone (+493)"),
        ({"direction": "in"}, "unknown sender"),
    ],
)
def test_the_peer_is_the_recipient_or_the_sender(fields: dict[str, Any], peer: str) -> None:
    assert messages_panel.panel_item({"ref": "r", "status": "received", **fields})["peer"] == peer


# -- the page --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_panel_shows_the_last_messages_newest_first_with_ticks(session: WaSession) -> None:
    out(session, text="oldest-out", status="read")
    received(session, text="oldest-in")
    for i in range(messages_panel.MESSAGES_SHOWN):
        out(session, text=f"filler {i}", status="sent")
    html = (
        logged_in(make_user("ed", "change_wasession"))
        .get(reverse("sessions:detail", args=[session.pk]))
        .content.decode()
    )
    panel = html[html.index('id="messages-panel"') :]
    assert panel.count('<li class="msg ') == messages_panel.MESSAGES_SHOWN
    assert panel.index(f"filler {messages_panel.MESSAGES_SHOWN - 1}") < panel.index("filler 0")
    assert "oldest-out" not in panel and "oldest-in" not in panel  # older than the last 20
    assert 'data-status="sent"' in panel and "✓" in panel


@pytest.mark.django_db
def test_message_texts_are_escaped_on_the_page(session: WaSession) -> None:
    out(session, text=XSS, to=XSS)
    received(session, text=XSS, push_name=XSS)
    html = (
        logged_in(make_user("ed", "view_wasession"))
        .get(reverse("sessions:detail", args=[session.pk]))
        .content.decode()
    )
    assert XSS not in html
    assert "<script>alert(2)" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


@pytest.mark.django_db
def test_viewers_see_messages_but_no_form(session: WaSession) -> None:
    out(session, text="visible to viewers")
    html = (
        logged_in(make_user("vi", "view_wasession"))
        .get(reverse("sessions:detail", args=[session.pk]))
        .content.decode()
    )
    assert "visible to viewers" in html
    assert 'id="message-form"' not in html
    editor = logged_in(make_user("ed", "change_wasession"))
    assert (
        'id="message-form"'
        in editor.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    )


def post_message(client: Client, session: WaSession, **data: str) -> Any:
    return client.post(
        reverse("sessions:send-message", args=[session.pk]),
        {"to": "+49 151 12345678", "text": "Hello from the page", **data},
        headers={"Accept": "application/json"},
    )


@pytest.mark.django_db
def test_the_form_queues_a_message_for_an_editor(session: WaSession) -> None:
    response = post_message(logged_in(make_user("ed", "change_wasession")), session)
    assert response.status_code == 200
    body = response.json()
    message = Message.objects.get()
    assert (message.direction, message.status, message.actor) == ("out", "queued", "ed")
    assert message.text == "Hello from the page"
    assert body["ok"] is True
    assert body["item"] == messages_panel.panel_item(message)
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 302), ("not staff", 403), ("viewer", 403), ("adder", 403)],
)
def test_the_form_refuses_anyone_without_the_change_permission(
    session: WaSession, who: str, expected: int
) -> None:
    client = Client()
    if who == "not staff":
        client.force_login(get_user_model().objects.create_user(username="ns"))
    elif who == "viewer":
        client.force_login(make_user("vi", "view_wasession"))
    elif who == "adder":
        client.force_login(make_user("ad", "view_wasession", "add_wasession"))
    response = post_message(client, session)
    assert response.status_code == expected
    if expected == 302:
        assert response["Location"].startswith(reverse("login"))
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_the_form_needs_post_and_csrf(session: WaSession) -> None:
    client = logged_in(make_user("ed", "change_wasession"), csrf=True)
    assert post_message(client, session).status_code == 403
    assert client.get(reverse("sessions:send-message", args=[session.pk])).status_code == 405
    assert not Message.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("data", [{"to": ""}, {"text": ""}, {"to": "not a number"}])
def test_the_form_refuses_invalid_messages_with_a_reason(
    session: WaSession, data: dict[str, str]
) -> None:
    response = post_message(logged_in(make_user("ed", "change_wasession")), session, **data)
    assert response.status_code == 400
    assert response.json()["ok"] is False and response.json()["error"]
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_the_form_refuses_a_session_being_deleted(session: WaSession) -> None:
    WaSession.objects.filter(pk=session.pk).update(desired_state="deleted")
    response = post_message(logged_in(make_user("ed", "change_wasession")), session)
    assert response.status_code == 409
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_a_plain_form_post_redirects_to_the_page(session: WaSession) -> None:
    client = logged_in(make_user("ed", "change_wasession"))
    response = client.post(
        reverse("sessions:send-message", args=[session.pk]), {"to": "4915112345678", "text": "x"}
    )
    assert (response.status_code, response["Location"]) == (
        302,
        reverse("sessions:detail", args=[session.pk]),
    )
    assert Message.objects.count() == 1


# -- the socket ------------------------------------------------------------------------


@sync_to_async
def socket_setup(codename: str) -> tuple[WaSession, Message]:
    make_user("ada", codename)
    session = WaSession.objects.create(name="watched", state="connected")
    return session, out(session, text=XSS)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("codename", ["view_wasession", "change_wasession"])
async def test_the_socket_brings_the_last_messages_then_each_change(codename: str) -> None:
    session, message = await socket_setup(codename)
    ws = await connect(f"/ws/sessions/{session.pk}/")
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_json_from()
    assert first["type"] == "snapshot"
    assert first["messages"] == [await sync_to_async(messages_panel.panel_item)(message)]
    assert first["messages"][0]["text"] == XSS  # plain data; the page sets it as text

    await sync_to_async(Message.objects.filter(pk=message.pk).update)(status="read", version=4)
    read = await Message.objects.aget(pk=message.pk)
    await live.publish([read])
    pushed = await ws.receive_json_from()
    assert pushed == {"type": "message", "message": messages_panel.panel_item(read)}
    assert (pushed["message"]["tick"], pushed["message"]["status"]) == ("✓✓", "read")
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_other_sessions_messages_do_not_reach_the_socket() -> None:
    session, _ = await socket_setup("view_wasession")
    other = await WaSession.objects.acreate(name="other")
    ws = await connect(f"/ws/sessions/{session.pk}/")
    await ws.connect()
    await ws.receive_json_from()
    foreign = await sync_to_async(out)(other, text="not yours")
    await live.publish([foreign])
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}  # and nothing before it
    await ws.disconnect()


@pytest.mark.django_db
def test_the_form_never_logs_a_text(session: WaSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = logged_in(make_user("ed", "change_wasession"))
    secret = "the safe's code is 4711"
    assert post_message(client, session, text=secret).status_code == 200
    assert post_message(client, session, text=secret, to="12").status_code == 400
    assert caplog.records  # the capture works (a queued message, a 400)
    assert secret not in caplog.text
