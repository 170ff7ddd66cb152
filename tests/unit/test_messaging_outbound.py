"""The outbound queue's SQL and the inbound store, on SQLite (and on PostgreSQL in
``make test``'s second pass): fenced by the lease, in order, one at a time, only
forward, each incoming message once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from messaging import inbound, outbound, signals
from messaging.models import Message
from messaging.states import Direction, Status
from sessions_app import leases
from sessions_app.drivers.base import MessageReceived
from sessions_app.leases import Lease
from sessions_app.models import WaSession

pytestmark = pytest.mark.django_db(transaction=True)

NOW = timezone.now()
LATER = NOW + dt.timedelta(hours=1)


@pytest.fixture
def lease() -> Lease:
    WaSession.objects.create(name="out", pair_request=1)
    (held,) = leases.claim("owner-a", 60, 1)
    return held


def take_over(lease: Lease, owner: str = "owner-b") -> Lease:
    """Another supervisor claims the session (a new epoch); the old lease is stale."""
    WaSession.objects.filter(pk=lease.session_id).update(
        lease_owner=owner, lease_epoch=F("lease_epoch") + 1
    )
    return Lease(lease.session_id, owner, lease.epoch + 1)


def queue(lease: Lease, n: int = 1, deadline: dt.datetime | None = LATER) -> list[Message]:
    return [
        Message.objects.create(
            session_id=lease.session_id,
            direction=Direction.OUT,
            to=f"4915100000{i:02d}",
            chat=f"4915100000{i:02d}@s.whatsapp.net",
            from_me=True,
            text=f"hello {i}",
            status=Status.QUEUED,
            deadline=deadline,
        )
        for i in range(n)
    ]


def fresh(message: Message) -> Message:
    return Message.objects.get(pk=message.pk)


def received(message_id: str = "WA1", **changes: Any) -> MessageReceived:
    event = MessageReceived(
        session_id=0,
        message_id=message_id,
        chat="491700000001@s.whatsapp.net",
        sender="1234567@lid",
        sender_phone="491700000001@s.whatsapp.net",
        from_me=False,
        timestamp=NOW,
        push_name="Peer",
        kind="text",
        text="hi there",
    )
    return dataclasses.replace(event, **changes)


@pytest.fixture
def changes() -> Iterator[list[tuple[str, list[str], bool]]]:
    """Every messages_changed signal: (change, refs, sent inside a transaction)."""
    seen: list[tuple[str, list[str], bool]] = []

    def receiver(sender: Any, messages: list[Message], change: str, **kwargs: Any) -> None:
        seen.append(
            (change, [m.ref for m in messages], transaction.get_connection().in_atomic_block)
        )

    signals.messages_changed.connect(receiver)
    yield seen
    signals.messages_changed.disconnect(receiver)


# -- taking ------------------------------------------------------------------------------


def test_take_marks_the_oldest_sending_under_the_epoch_one_at_a_time(lease: Lease) -> None:
    first, second = queue(lease, 2)
    taken = outbound.take_next(lease, NOW)
    assert taken.message is not None and taken.message.pk == first.pk and taken.stale == []
    row = fresh(first)
    assert (row.status, row.send_epoch, row.sending_at) == (Status.SENDING, lease.epoch, NOW)
    assert row.version == 1
    assert outbound.take_next(lease, NOW).message is None, "one at a time per session"
    outbound.mark_sent(lease, first.ref, "WAID1", NOW, NOW)
    assert outbound.take_next(lease, NOW).message.pk == second.pk  # type: ignore[union-attr]


def test_take_returns_the_text_and_recipient_to_send(lease: Lease) -> None:
    (message,) = queue(lease)
    taken = outbound.take_next(lease, NOW).message
    assert taken is not None
    assert (taken.ref, taken.chat, taken.text) == (message.ref, message.chat, "hello 0")


def test_other_sessions_queues_are_their_own(lease: Lease) -> None:
    other = WaSession.objects.create(name="other")
    Message.objects.create(
        session=other, direction=Direction.OUT, status=Status.QUEUED, text="x", deadline=LATER
    )
    assert outbound.take_next(lease, NOW).message is None
    (mine,) = queue(lease)
    Message.objects.filter(session=other).update(status=Status.SENDING)
    assert outbound.take_next(lease, NOW).message.pk == mine.pk, "another's sending blocks nothing"  # type: ignore[union-attr]


def test_a_message_past_its_deadline_is_never_taken_and_expires(lease: Lease) -> None:
    (late,) = queue(lease, deadline=NOW - dt.timedelta(seconds=1))
    (ok,) = queue(lease)
    assert outbound.take_next(lease, NOW).message.pk == ok.pk  # type: ignore[union-attr]
    assert fresh(late).status == Status.QUEUED
    expired = outbound.expire_overdue(NOW)
    assert [m.pk for m in expired] == [late.pk]
    row = fresh(late)
    assert (row.status, row.failure_reason) == (Status.EXPIRED, "deadline")
    assert outbound.expire_overdue(NOW) == [], "only once"


def test_expiry_needs_no_lease_and_touches_only_queued_messages(lease: Lease) -> None:
    """Any supervisor expires a session's overdue messages, owned or not."""
    first, second = queue(lease, 2, deadline=NOW + dt.timedelta(seconds=5))
    outbound.take_next(lease, NOW)  # first is sending now
    WaSession.objects.filter(pk=lease.session_id).update(lease_owner="", lease_expires_at=None)
    later = NOW + dt.timedelta(seconds=10)
    assert [m.pk for m in outbound.expire_overdue(later, session_id=lease.session_id)] == [
        second.pk
    ]
    assert fresh(first).status == Status.SENDING, "a message under way is not expired"


def test_expiry_of_one_session_leaves_the_others(lease: Lease) -> None:
    (mine,) = queue(lease, deadline=NOW)
    other = WaSession.objects.create(name="other")
    theirs = Message.objects.create(
        session=other, direction=Direction.OUT, status=Status.QUEUED, text="x", deadline=NOW
    )
    assert [m.pk for m in outbound.expire_overdue(NOW, session_id=other.pk)] == [theirs.pk]
    assert fresh(mine).status == Status.QUEUED
    assert outbound.next_deadline(lease.session_id) == NOW


# -- fencing ---------------------------------------------------------------------------------


def test_a_stale_lease_writes_nothing(lease: Lease) -> None:
    first, second = queue(lease, 2)
    outbound.take_next(lease, NOW)
    newer = take_over(lease)
    assert outbound.take_next(lease, NOW).message is None
    assert outbound.mark_sent(lease, first.ref, "WAID", NOW, NOW) is None
    assert outbound.mark_failed(lease, first.ref, "refused", "error", "", NOW) is None
    assert outbound.mark_unknown(lease, first.ref, "timeout", "", NOW) is None
    assert inbound.store(lease, received(), NOW) is None
    assert not outbound.fence_holds(lease) and outbound.fence_holds(newer)
    assert fresh(first).status == Status.SENDING and fresh(second).status == Status.QUEUED
    assert not Message.objects.filter(direction=Direction.IN).exists()


def test_a_successor_marks_the_old_epochs_sending_unknown_and_never_resends_it(
    lease: Lease,
) -> None:
    first, second = queue(lease, 2)
    outbound.take_next(lease, NOW)
    newer = take_over(lease)
    taken = outbound.take_next(newer, NOW)
    assert [m.pk for m in taken.stale] == [first.pk]
    assert taken.message is not None and taken.message.pk == second.pk, "the next one, not again"
    row = fresh(first)
    assert (row.status, row.failure_reason, row.send_epoch) == (
        Status.UNKNOWN,
        outbound.OWNER_LOST,
        lease.epoch,
    )
    assert fresh(second).send_epoch == newer.epoch


def test_mark_stale_sending_leaves_the_current_epochs_send(lease: Lease) -> None:
    queue(lease)
    outbound.take_next(lease, NOW)
    assert outbound.mark_stale_sending(lease, NOW) == []


# -- outcomes ----------------------------------------------------------------------------------


def test_sent_records_whatsapps_id_and_time(lease: Lease) -> None:
    (message,) = queue(lease)
    outbound.take_next(lease, NOW)
    at = NOW - dt.timedelta(seconds=1)
    row = outbound.mark_sent(lease, message.ref, "3EB0ABC", at, NOW)
    assert row is not None and (row.status, row.wa_id, row.wa_timestamp, row.sent_at) == (
        Status.SENT,
        "3EB0ABC",
        at,
        NOW,
    )
    assert row.version == 2
    assert outbound.mark_sent(lease, message.ref, "3EB0ABC", at, NOW) is None, "once"


def test_refused_fails_with_the_reason_and_is_final(lease: Lease) -> None:
    (message,) = queue(lease)
    outbound.take_next(lease, NOW)
    row = outbound.mark_failed(lease, message.ref, "refused", "not_on_whatsapp", "no account", NOW)
    assert row is not None
    assert (row.status, row.failure_reason, row.failure_detail) == (
        Status.FAILED,
        "not_on_whatsapp",
        "no account",
    )
    assert outbound.mark_sent(lease, message.ref, "X", NOW, NOW) is None
    assert outbound.apply_receipt(lease, [message.ref], "read", NOW, NOW) == []


def test_not_connected_puts_it_back_first_in_line(lease: Lease) -> None:
    first, _second = queue(lease, 2)
    outbound.take_next(lease, NOW)
    row = outbound.mark_failed(lease, first.ref, "refused", "not_connected", "", NOW)
    assert row is not None and (row.status, row.send_epoch, row.sending_at) == (
        Status.QUEUED,
        None,
        None,
    )
    assert outbound.take_next(lease, NOW).message.pk == first.pk  # type: ignore[union-attr]


def test_an_unknown_outcome_is_unknown_and_a_late_ack_proves_it_sent(lease: Lease) -> None:
    (message,) = queue(lease)
    outbound.take_next(lease, NOW)
    row = outbound.mark_failed(lease, message.ref, "unknown", "timeout", "no ack in 30 s", NOW)
    assert row is not None and (row.status, row.failure_reason) == (Status.UNKNOWN, "timeout")
    assert outbound.take_next(lease, NOW).message is None, "never taken again"
    row = outbound.mark_sent(lease, message.ref, "LATE", NOW, NOW)
    assert row is not None and (row.status, row.wa_id, row.failure_reason) == (
        Status.SENT,
        "LATE",
        "",
    )


def test_receipts_only_move_forward(lease: Lease) -> None:
    first, second, third = queue(lease, 3)
    for i, message in enumerate((first, second, third)):
        outbound.take_next(lease, NOW)
        outbound.mark_sent(lease, message.ref, f"W{i}", NOW, NOW)
    t1, t2 = NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=2)
    delivered = outbound.apply_receipt(lease, ["W0", "W1"], "delivered", t1, NOW)
    assert {m.pk for m in delivered} == {first.pk, second.pk}
    assert outbound.apply_receipt(lease, ["W0"], "delivered", t2, NOW) == [], "no repeat"
    read = outbound.apply_receipt(lease, ["W0", "W2"], "read", t2, NOW)
    assert {m.pk for m in read} == {first.pk, third.pk}
    assert outbound.apply_receipt(lease, ["W0"], "delivered", t2, NOW) == [], "never backwards"
    row = fresh(first)
    assert (row.status, row.delivered_at, row.read_at) == (Status.READ, t1, t2)
    row = fresh(third)
    assert (row.status, row.delivered_at, row.read_at) == (Status.READ, t2, t2), "read implies"
    assert fresh(second).status == Status.DELIVERED
    assert [m.pk for m in outbound.apply_receipt(lease, ["W1"], "played", t2, NOW)] == [second.pk]
    assert outbound.apply_receipt(lease, ["W1"], "sender", t2, NOW) == []


def test_a_receipt_for_another_sessions_message_changes_nothing(lease: Lease) -> None:
    other = WaSession.objects.create(name="other")
    theirs = Message.objects.create(
        session=other, direction=Direction.OUT, status=Status.SENT, wa_id="SAME", text="x"
    )
    assert outbound.apply_receipt(lease, ["SAME"], "read", NOW, NOW) == []
    assert fresh(theirs).status == Status.SENT


def test_a_receipt_naming_an_unknown_messages_ref_proves_it_went_out(lease: Lease) -> None:
    """A driver that chooses WhatsApp's id uses the ref (the simulated one does)."""
    (message,) = queue(lease)
    outbound.take_next(lease, NOW)
    newer = take_over(lease)
    outbound.take_next(newer, NOW)  # marks it unknown
    (row,) = outbound.apply_receipt(newer, [message.ref], "delivered", NOW, NOW)
    assert (row.status, row.wa_id) == (Status.DELIVERED, message.ref)


def test_every_change_is_signalled_inside_its_transaction(
    lease: Lease, changes: list[tuple[str, list[str], bool]]
) -> None:
    (message,) = queue(lease)
    outbound.take_next(lease, NOW)
    outbound.mark_sent(lease, message.ref, "W", NOW, NOW)
    outbound.apply_receipt(lease, ["W"], "read", NOW, NOW)
    inbound.store(lease, received("IN1"), NOW)
    inbound.store(lease, received("IN1"), NOW)
    refs = [message.ref] * 3
    assert [c[1][0] for c in changes[:3]] == refs
    assert [c[0] for c in changes] == ["status", "status", "status", "received"]
    assert all(inside for _, _, inside in changes)


# -- inbound -----------------------------------------------------------------------------------


def test_an_incoming_message_is_stored_once(lease: Lease) -> None:
    row = inbound.store(lease, received("WA1"), NOW)
    assert row is not None
    assert (row.direction, row.status, row.wa_id, row.text, row.sender_phone) == (
        Direction.IN,
        Status.RECEIVED,
        "WA1",
        "hi there",
        "491700000001@s.whatsapp.net",
    )
    assert len(row.ref) == 32
    assert inbound.store(lease, received("WA1", text="again"), NOW) is None, "redelivered"
    newer = take_over(lease)
    assert inbound.store(newer, received("WA1"), NOW) is None, "also for a new owner"
    assert Message.objects.filter(direction=Direction.IN).count() == 1
    assert outbound.fence_holds(newer)


def test_the_same_whatsapp_id_on_another_session_is_another_message(lease: Lease) -> None:
    other = WaSession.objects.create(name="other", pair_request=1)
    (other_lease,) = leases.claim("owner-a", 60, 1)
    assert other_lease.session_id == other.pk
    assert inbound.store(lease, received("SAME"), NOW) is not None
    assert inbound.store(other_lease, received("SAME"), NOW) is not None


def test_messages_from_the_phone_and_media_are_recorded_as_such(lease: Lease) -> None:
    row = inbound.store(lease, received("M2", from_me=True, kind="image", text="a caption"), NOW)
    assert row is not None and (row.from_me, row.kind, row.text) == (True, "image", "a caption")


def test_over_long_values_are_cut_to_their_column(lease: Lease) -> None:
    row = inbound.store(lease, received("M3", push_name="x" * 500, kind="y" * 40), NOW)
    assert row is not None and (len(row.push_name), len(row.kind)) == (128, 16)


def test_an_incoming_message_without_an_id_is_refused(lease: Lease) -> None:
    with pytest.raises(ValueError, match="id"):
        inbound.store(lease, received(""), NOW)


def test_reprs_never_show_the_text(lease: Lease) -> None:
    row = inbound.store(lease, received("M4", text="secret words"), NOW)
    assert "secret" not in repr(row) and "secret" not in str(row)


def test_an_ack_and_the_next_take_are_one_call(lease: Lease) -> None:
    first, second = queue(lease, 2)
    row, taken = outbound.sent_and_take(lease, None, NOW)
    assert row is None and taken.message is not None and taken.message.pk == first.pk
    row, taken = outbound.sent_and_take(lease, (first.ref, "W1", NOW), NOW)
    assert row is not None and (row.status, row.wa_id) == (Status.SENT, "W1")
    assert taken.message is not None and taken.message.pk == second.pk
    stale = take_over(lease)
    row, taken = outbound.sent_and_take(lease, (second.ref, "W2", NOW), NOW)
    assert row is None and taken.message is None, "a stale lease records nothing"
    assert fresh(second).status == Status.SENDING
    assert outbound.fence_holds(stale)
