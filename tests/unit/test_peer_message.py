"""A peer's phone messages a session (simulated driver): the detail page's form and
``simulate_phone message`` write a phone gesture with its payload (intent only), the
event log names the gesture, and no text reaches a log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from sessions_app import intents
from sessions_app.models import PhoneAction, SessionEvent, WaSession

pytestmark = pytest.mark.django_db

SECRET = "a private text from a peer"


@pytest.fixture
def staff_client(staff_user: Any) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(name="sales", state="connected", jid="4915@s.whatsapp.net")


def post(client: Client, session: WaSession, **data: str) -> Any:
    url = reverse("sessions:action", args=[session.pk, "simulate-message"])
    return client.post(url, data, HTTP_ACCEPT="application/json")


def test_the_detail_page_has_the_form_only_with_the_simulated_driver(
    staff_client: Client, session: WaSession, settings: Any
) -> None:
    page = staff_client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"Message from a peer" in page.content and b'id="peer-message-form"' in page.content
    assert b"Simulate message" not in page.content, "not one of the plain gesture buttons"
    settings.WACONNECT_DRIVER = "neonize"
    page = staff_client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"peer-message-form" not in page.content
    assert post(staff_client, session, sender="+4917612345678", text="x").status_code == 404


def test_the_form_queues_the_gesture_with_its_payload(
    staff_client: Client, session: WaSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = post(staff_client, session, sender="+49 176 1234-5678", text=SECRET, push_name="Ada")
    assert response.status_code == 200 and response.json()["ok"]
    [action] = PhoneAction.objects.all()
    assert (action.session_id, action.gesture) == (session.pk, "message")
    assert action.payload == {"from": "+4917612345678", "text": SECRET, "push_name": "Ada"}
    assert SECRET not in str(action)
    event = SessionEvent.objects.filter(session=session).latest("id")
    assert event.message == "simulated phone: a peer sent a message" and event.actor == "ada"
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"sender": "0176123", "text": "x"}, "country code"),
        ({"sender": "+4917612345678", "text": "   "}, "Enter the message"),
        ({"text": "x"}, "number the message comes from"),
    ],
)
def test_a_bad_form_is_refused_with_a_reason(
    staff_client: Client, session: WaSession, data: dict[str, str], error: str
) -> None:
    response = post(staff_client, session, **data)
    assert response.status_code == 400 and error in response.json()["error"]
    assert not PhoneAction.objects.exists()


def test_it_needs_the_change_permission(
    staff_user: Any, session: WaSession, client: Client
) -> None:
    staff_user.user_permissions.set(Permission.objects.filter(codename="view_wasession"))
    client.force_login(staff_user)
    assert post(client, session, sender="+4917612345678", text="x").status_code == 403
    page = client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"peer-message-form" not in page.content
    assert not PhoneAction.objects.exists()


def test_the_command_queues_a_peer_message(
    session: WaSession, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    call_command("simulate_phone", "message", "SALES", "--from", "4917612345678", "--text", SECRET)
    [action] = PhoneAction.objects.all()
    assert action.payload == {"from": "4917612345678", "text": SECRET, "push_name": ""}
    assert SessionEvent.objects.filter(actor="simulate_phone").exists()
    assert SECRET not in caplog.text and SECRET not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["message", "sales", "--from", "+4917612345678"], "Enter the message"),
        (["message", "sales", "--text", "hi"], "--from NUMBER"),
        (["scan", "sales", "--text", "hi"], "for the 'message' gesture"),
    ],
)
def test_the_command_refuses_what_does_not_fit(
    session: WaSession, args: list[str], error: str
) -> None:
    with pytest.raises(CommandError, match=error):
        call_command("simulate_phone", *args)
    assert not PhoneAction.objects.exists()


def test_a_message_needs_its_payload(session: WaSession) -> None:
    with pytest.raises(ValueError, match="peer_message"):
        intents.phone_gesture(session, "message", "ada")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_the_owner_hands_the_payload_to_the_simulated_phone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner takes the gesture under its lease and passes its payload on: the
    simulated WhatsApp carries the peer's message (held: the session's device is
    linked but this connection is not logged in), and nothing says it had nothing
    to act on."""
    from asgiref.sync import sync_to_async

    from sessions_app.drivers.simulated import SimulatedTiming, SimulatedWhatsApp
    from tests.unit.helpers import state_is, until
    from tests.unit.test_supervisor import running

    caplog.set_level(logging.DEBUG)
    world = SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=30, pair_delay=0))
    session = await sync_to_async(intents.create_session)("peer-target", "test")
    async with running(world):
        await until(session.pk, state_is("qr_required"))
        world.devices["4915100000042@s.whatsapp.net"] = session.pk  # its phone, linked before
        await sync_to_async(intents.peer_message)(session, "+4917612345678", SECRET, "test", "Ada")

        def carried() -> list[Any]:
            return [c for c in world.messages.carried.values() if c.to_session == session.pk]

        assert await world.until(lambda: bool(carried()), timeout=10)
    [record] = carried()
    assert (record.sender, record.text, record.status) == ("4917612345678", SECRET, "held")
    messages = await sync_to_async(list)(
        SessionEvent.objects.filter(session_id=session.pk).values_list("message", flat=True)
    )
    assert not [m for m in messages if "nothing to act on" in m]
    assert not await sync_to_async(PhoneAction.objects.exists)()
    assert SECRET not in caplog.text
