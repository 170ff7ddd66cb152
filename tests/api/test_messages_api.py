"""Messages over the API: send (queued through messaging.intents), read one, list a
session's; scopes and permissions, session lists, idempotency, validation, pages.
(``?wait=sent`` fed by pushes: test_messages_wait.py.)"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from django.utils import timezone

from api import scopes
from api.models import IdempotencyKey
from messaging.models import Message
from sessions_app.models import WaSession
from tests.api.conftest import ApiClient, grant

pytestmark = pytest.mark.django_db

SEND, READ = scopes.MESSAGES_SEND, scopes.MESSAGES_READ
SECRET = "meet me at the old mill at 9 — bring the key"


def out_message(session: WaSession, **fields: Any) -> Message:
    """An outbound row as the owner would have moved it (status and timestamps)."""
    values = {"direction": "out", "status": "queued", "to": "4915112345678", "text": "hi"}
    values.update(fields)
    return Message.objects.create(session=session, from_me=True, **values)


def in_message(session: WaSession, wa_id: str, **fields: Any) -> Message:
    values = {
        "direction": "in",
        "status": "received",
        "wa_id": wa_id,
        "chat": "4917700000000@s.whatsapp.net",
        "sender": "4917700000000@s.whatsapp.net",
        "push_name": "Peer",
        "text": "hello back",
    }
    values.update(fields)
    return Message.objects.create(session=session, **values)


def send(client: ApiClient, session: WaSession, body: Any = None, query: str = "", **headers: str):  # type: ignore[no-untyped-def]
    body = {"to": "+49 151 12345678", "text": "Hello!"} if body is None else body
    return client.post(f"/sessions/{session.pk}/messages{query}", body, **headers)


# -- send --------------------------------------------------------------------------


def test_send_queues_the_message_and_answers_202_with_it(
    api: ApiClient, session: WaSession
) -> None:
    response = send(api, session, {"to": "+49 151 12345678", "text": SECRET})
    assert response.status_code == 202
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    message = Message.objects.get()
    assert body["id"] == message.ref
    assert (body["session_id"], body["direction"], body["status"]) == (session.pk, "out", "queued")
    assert (body["text"], body["to"], body["from_me"]) == (SECRET, "+49 151 12345678", True)
    assert (message.status, message.actor, message.text) == ("queued", "token:crm", SECRET)
    assert message.deadline is not None and body["deadline"] is not None


def test_a_ttl_or_a_deadline_sets_when_it_expires(api: ApiClient, session: WaSession) -> None:
    before = timezone.now()
    ttl = send(api, session, {"to": "4915112345678", "text": "a", "ttl": 600}).json()
    deadline = dt.datetime.fromisoformat(ttl["deadline"])
    assert (
        before + dt.timedelta(seconds=599) <= deadline <= timezone.now() + dt.timedelta(seconds=600)
    )
    when = (timezone.now() + dt.timedelta(hours=2)).replace(microsecond=0)
    fixed = send(api, session, {"to": "4915112345678", "text": "b", "deadline": when.isoformat()})
    assert dt.datetime.fromisoformat(fixed.json()["deadline"]) == when


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"to": "4915112345678"},
        {"text": "no recipient"},
        {"to": "", "text": "x"},
        {"to": "4915112345678", "text": ""},
        {"to": "4915112345678", "text": "x" * 65_537},
        {"to": "x" * 129, "text": "x"},
        {"to": 4915112345678, "text": "x"},
        {"to": "4915112345678", "text": "x", "ttl": 0},
        {"to": "4915112345678", "text": "x", "ttl": 7 * 24 * 3600 + 1},
        {"to": "4915112345678", "text": "x", "deadline": "tomorrow"},
        {"to": "4915112345678", "text": "x", "ttl": 60, "deadline": "2099-01-01T00:00:00Z"},
        {"to": "4915112345678", "text": "x", "deadline": "2001-01-01T00:00:00Z"},
        {"to": "4915112345678", "text": "x", "deadline": "2099-01-01T00:00:00"},  # naive
        {"to": "4915112345678", "text": "x", "deadline": "9999-12-31T23:59:59-23:59"},
        {"to": "4915112345678", "text": "   "},
        {"to": "not a number", "text": "x"},
        [],
    ],
)
def test_invalid_sends_are_422_problems_and_queue_nothing(
    api: ApiClient, session: WaSession, body: Any
) -> None:
    response = send(api, session, body)
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert not Message.objects.exists()


@pytest.mark.parametrize("query", ["?wait=read", "?wait=sent&timeout=31", "?timeout=-1"])
def test_bad_wait_parameters_are_422(api: ApiClient, session: WaSession, query: str) -> None:
    response = send(api, session, query=query)
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    assert not Message.objects.exists()


def test_a_session_being_deleted_refuses_with_409(api: ApiClient, session: WaSession) -> None:
    WaSession.objects.filter(pk=session.pk).update(desired_state="deleted")
    response = send(api, session)
    assert (response.status_code, response.json()["code"]) == (409, "deleting")
    assert not Message.objects.exists()


def test_idempotency_key_returns_the_first_message_as_it_is_now(
    api: ApiClient, session: WaSession
) -> None:
    first = send(api, session, **{"Idempotency-Key": "order-7"})
    Message.objects.update(status="sent", version=2)  # the owner sent it meanwhile
    again = send(api, session, **{"Idempotency-Key": "order-7"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert (again.json()["status"], again.json()["version"]) == ("sent", 2)
    assert again["Idempotent-Replayed"] == "true"
    assert Message.objects.count() == 1
    # The key remembers the message's id only, not a second copy of its text.
    assert IdempotencyKey.objects.get().response == {"id": first.json()["id"]}


def test_idempotency_key_with_another_message_is_refused(
    api: ApiClient, session: WaSession
) -> None:
    send(api, session, **{"Idempotency-Key": "k"})
    other = send(api, session, {"to": "4915112345678", "text": "other"}, **{"Idempotency-Key": "k"})
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert Message.objects.count() == 1


def test_without_a_key_every_send_is_a_new_message(api: ApiClient, session: WaSession) -> None:
    send(api, session)
    send(api, session)
    assert Message.objects.count() == 2


# -- read ----------------------------------------------------------------------------


def test_read_one_message_by_id(api: ApiClient, session: WaSession) -> None:
    message = in_message(session, "WA1", text=SECRET, sender_phone="4917700000000@s.whatsapp.net")
    response = api.get(f"/messages/{message.ref}")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["direction"], body["status"], body["text"]) == (
        message.ref,
        "in",
        "received",
        SECRET,
    )
    assert (body["wa_id"], body["push_name"], body["sender_phone"]) == (
        "WA1",
        "Peer",
        "4917700000000@s.whatsapp.net",
    )


@pytest.mark.parametrize("ref", ["0" * 32, "nope", "x" * 300])
def test_unknown_message_ids_are_404(api: ApiClient, ref: str) -> None:
    response = api.get(f"/messages/{ref}")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_a_sessions_messages_newest_first_in_cursor_pages(
    api: ApiClient, session: WaSession
) -> None:
    other = WaSession.objects.create(name="other")
    out_message(other)
    made = [
        out_message(session, text=f"m{i}") if i % 2 else in_message(session, f"W{i}")
        for i in range(5)
    ]
    seen, cursor = [], None
    while True:
        query = f"?limit=2{f'&cursor={cursor}' if cursor else ''}"
        page = api.get(f"/sessions/{session.pk}/messages{query}").json()
        seen += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
        out_message(session, text="late")  # written while paging: no repeats, not shown
    assert seen == [m.ref for m in reversed(made)]


def test_list_filters_by_direction_status_and_time(api: ApiClient, session: WaSession) -> None:
    old = out_message(session, status="read")
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=2))
    failed = out_message(session, status="failed", failure_reason="not_on_whatsapp")
    received = in_message(session, "W1")
    path = f"/sessions/{session.pk}/messages"

    def ids(query: str) -> list[str]:
        response = api.get(f"{path}?{query}")
        assert response.status_code == 200, response.content
        return [m["id"] for m in response.json()["data"]]

    assert ids("direction=in") == [received.ref]
    assert ids("direction=out") == [failed.ref, old.ref]
    assert ids("status=failed") == [failed.ref]
    since = (timezone.now() - dt.timedelta(days=1)).isoformat()
    assert ids(f"since={since.replace('+', '%2B')}") == [received.ref, failed.ref]
    assert ids("since=2000-01-01T00:00:00") == [received.ref, failed.ref, old.ref]  # naive: UTC
    assert ids("direction=out&status=read") == [old.ref]


@pytest.mark.parametrize(
    "query",
    [
        "direction=sideways",
        "status=lost",
        "since=yesterday",
        "since=0001-01-01T00:00:00%2B14:00",  # before year 1 in UTC
        "limit=0",
        "limit=101",
        "cursor=x",
    ],
)
def test_bad_list_filters_are_422(api: ApiClient, session: WaSession, query: str) -> None:
    response = api.get(f"/sessions/{session.pk}/messages?{query}")
    assert response.status_code == 422
    assert response.json()["code"] in ("validation_error", "invalid_cursor")


# -- who may do what -----------------------------------------------------------------

#: name, method, path, scope, permission codename, success status
ENDPOINTS = [
    ("send", "post", "/sessions/{id}/messages", SEND, "change_wasession", 202),
    ("list", "get", "/sessions/{id}/messages", READ, "view_wasession", 200),
    ("read", "get", "/messages/{ref}", READ, "view_wasession", 200),
]
IDS = [e[0] for e in ENDPOINTS]


def call(client: ApiClient, method: str, path: str, session: WaSession, message: Message) -> Any:
    url = path.replace("{id}", str(session.pk)).replace("{ref}", message.ref)
    if method == "post":
        return client.post(url, {"to": "4915112345678", "text": "hi"})
    return client.get(url)


@pytest.fixture
def message(session: WaSession) -> Message:
    return out_message(session)


@pytest.mark.parametrize(("name", "method", "path", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_the_right_scope_and_permission_succeed(
    make_token: Any,
    session: WaSession,
    message: Message,
    name: str,
    method: str,
    path: str,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    response = call(ApiClient(make_token([scope])), method, path, session, message)
    assert response.status_code == ok, response.content


@pytest.mark.parametrize(("name", "method", "path", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_a_token_without_the_scope_is_refused(
    make_token: Any,
    session: WaSession,
    message: Message,
    name: str,
    method: str,
    path: str,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    others = [s for s in scopes.SCOPES if s != scope]
    response = call(ApiClient(make_token(others)), method, path, session, message)
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert Message.objects.count() == 1


@pytest.mark.parametrize(("name", "method", "path", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_a_token_never_does_more_than_its_user_may(
    make_token: Any,
    django_user_model: Any,
    session: WaSession,
    message: Message,
    name: str,
    method: str,
    path: str,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    """Sending needs change (view is not enough); reading needs view (or change)."""
    taken = {perm, "change_wasession"} if perm == "view_wasession" else {perm}
    others = [p for p in ("view", "add", "change", "delete") if f"{p}_wasession" not in taken]
    user = django_user_model.objects.create_user(username="cyd", is_staff=True)
    user = grant(user, *[f"{p}_wasession" for p in others])
    response = call(ApiClient(make_token(user=user)), method, path, session, message)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert Message.objects.count() == 1


def test_a_viewer_reads_but_cannot_send(
    make_token: Any, django_user_model: Any, session: WaSession, message: Message
) -> None:
    viewer = grant(
        django_user_model.objects.create_user(username="vi", is_staff=True), "view_wasession"
    )
    client = ApiClient(make_token(user=viewer))
    assert client.get(f"/messages/{message.ref}").status_code == 200
    refused = send(client, session)
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")


@pytest.mark.parametrize(("name", "method", "path", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_sessions_outside_the_tokens_list_and_their_messages_look_missing(
    make_token: Any,
    session: WaSession,
    message: Message,
    name: str,
    method: str,
    path: str,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    other = WaSession.objects.create(name="other")
    other_message = out_message(other)
    limited = ApiClient(make_token(sessions=[other]))
    hidden = call(limited, method, path, session, message)
    gone = WaSession(pk=999999, name="gone")
    missing = call(limited, method, path, gone, Message(ref="f" * 32))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["code"] == missing.json()["code"] == "not_found"
    assert call(limited, method, path, other, other_message).status_code == ok
    assert not Message.objects.filter(session=session).exclude(pk=message.pk).exists()


# -- nothing in the logs -------------------------------------------------------------


def test_texts_never_reach_the_logs(
    api: ApiClient, session: WaSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    send(api, session, {"to": "4915112345678", "text": SECRET})
    send(api, session, {"to": "not a number", "text": SECRET})  # refused: 422
    send(api, session, {"to": "4915112345678", "text": SECRET, "ttl": 0})
    ref = Message.objects.get().ref
    api.get(f"/messages/{ref}")
    api.get(f"/sessions/{session.pk}/messages")
    assert caplog.records  # the capture works at DEBUG
    assert SECRET not in caplog.text
    assert "old mill" not in caplog.text
