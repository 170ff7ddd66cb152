"""The neonize worker's messages, with neonize's own protobuf objects: MessageEv and
ReceiptEv through the mapping and the wire into driver events, and the send path
(JIDs, the message built, errors, the deadline) against a fake client that returns
neonize's real SendResponse or raises its real SendMessageError."""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from neonize.exc import SendMessageError
from neonize.proto import Neonize_pb2 as P
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E
from neonize.utils.jid import build_jid

from sessions_app.drivers import wire
from sessions_app.drivers.base import DriverEvent, MessageReceived, MessageSent, Receipt, SendFailed
from sessions_app.drivers.neonize_messages import (
    Outbox,
    message_content,
    message_message,
    receipt_message,
)

pytestmark = pytest.mark.timeout(10)

PHONE = build_jid("4915112345678")
LID = build_jid("123456789012345", "lid")
ME = build_jid("4930123456789")
WHEN_MS = 1_767_225_600_123  # 2026-01-01 00:00:00.123 UTC


def through_the_wire(message: tuple[str, dict[str, Any]] | None) -> DriverEvent | None:
    assert message is not None
    kind, fields = message
    decoded = wire.decode(wire.encode(kind, **fields), wire.EVENTS)
    return wire.to_driver_event(42, decoded)


def message_ev(
    content: E.Message,
    *,
    sender: P.JID = PHONE,
    sender_alt: P.JID | None = None,
    chat: P.JID | None = None,
    from_me: bool = False,
) -> P.Message:
    source = P.MessageSource(
        Chat=chat or sender,
        Sender=sender,
        IsFromMe=from_me,
        IsGroup=False,
        SenderAlt=sender_alt or P.JID(),  # neonize always encodes it, empty when absent
    )
    info = P.MessageInfo(
        MessageSource=source, ID="3EB0ABCDEF", Pushname="Ada", Timestamp=WHEN_MS, Type="text"
    )
    return P.Message(Info=info, Message=content)


def test_a_text_message_from_a_phone_number() -> None:
    event = through_the_wire(message_message(message_ev(E.Message(conversation="hello"))))
    assert event == MessageReceived(
        42,
        message_id="3EB0ABCDEF",
        chat="4915112345678@s.whatsapp.net",
        sender="4915112345678@s.whatsapp.net",
        sender_phone="4915112345678@s.whatsapp.net",
        from_me=False,
        timestamp=dt.datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=dt.UTC),
        push_name="Ada",
        kind="text",
        text="hello",
    )


def test_a_lid_sender_gets_its_phone_form_from_sender_alt() -> None:
    device_alt = build_jid("4915112345678")
    device_alt.Device = 3
    event = through_the_wire(
        message_message(message_ev(E.Message(conversation="hi"), sender=LID, sender_alt=device_alt))
    )
    assert isinstance(event, MessageReceived)
    assert (event.chat, event.sender) == ("123456789012345@lid", "123456789012345@lid")
    assert event.sender_phone == "4915112345678@s.whatsapp.net", "the number, without device"


def test_a_lid_sender_without_sender_alt_has_no_phone_form() -> None:
    event = through_the_wire(message_message(message_ev(E.Message(conversation="hi"), sender=LID)))
    assert isinstance(event, MessageReceived) and event.sender_phone == ""


def test_a_message_the_phone_itself_sent_is_from_me() -> None:
    me = build_jid("4930123456789")
    me.Device = 0
    event = through_the_wire(
        message_message(
            message_ev(
                E.Message(conversation="sent from the phone"), sender=me, chat=PHONE, from_me=True
            )
        )
    )
    assert isinstance(event, MessageReceived)
    assert event.from_me and event.chat == "4915112345678@s.whatsapp.net"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (E.Message(extendedTextMessage=E.ExtendedTextMessage(text="a link")), ("text", "a link")),
        (E.Message(imageMessage=E.ImageMessage(caption="a photo")), ("image", "a photo")),
        (E.Message(videoMessage=E.VideoMessage(caption="a film")), ("video", "a film")),
        (E.Message(ptvMessage=E.VideoMessage()), ("video", "")),
        (E.Message(audioMessage=E.AudioMessage(seconds=3)), ("audio", "")),
        (
            E.Message(documentMessage=E.DocumentMessage(caption="the contract")),
            ("document", "the contract"),
        ),
        (
            E.Message(
                documentWithCaptionMessage=E.FutureProofMessage(
                    message=E.Message(documentMessage=E.DocumentMessage(caption="wrapped"))
                )
            ),
            ("document", "wrapped"),
        ),
        (
            E.Message(
                ephemeralMessage=E.FutureProofMessage(message=E.Message(conversation="vanishing"))
            ),
            ("text", "vanishing"),
        ),
        (E.Message(stickerMessage=E.StickerMessage()), ("sticker", "")),
        (E.Message(reactionMessage=E.ReactionMessage(text="👍")), ("other", "")),
    ],
)
def test_kinds_and_captions(content: E.Message, expected: tuple[str, str]) -> None:
    assert message_content(content) == expected
    event = through_the_wire(message_message(message_ev(content)))
    assert isinstance(event, MessageReceived) and (event.kind, event.text) == expected


@pytest.mark.parametrize(
    "content",
    [
        E.Message(protocolMessage=E.ProtocolMessage(type=E.ProtocolMessage.REVOKE)),
        E.Message(senderKeyDistributionMessage=E.SenderKeyDistributionMessage(groupID="g")),
        E.Message(),
    ],
)
def test_bookkeeping_is_not_a_message(content: E.Message) -> None:
    assert message_message(message_ev(content)) is None


def receipt_ev(kind: int | None, ids: tuple[str, ...] = ("3EB0A", "3EB0B")) -> P.Receipt:
    source = P.MessageSource(Chat=PHONE, Sender=PHONE, IsFromMe=False, IsGroup=False)
    receipt = P.Receipt(MessageSource=source, MessageIDs=list(ids), Timestamp=1_767_225_600)
    if kind is not None:
        receipt.Type = kind
    return receipt


@pytest.mark.parametrize(
    ("kind", "status"),
    [(P.Receipt.DELIVERED, "delivered"), (P.Receipt.READ, "read"), (P.Receipt.PLAYED, "played")],
)
def test_receipts_of_the_recipient(kind: int, status: str) -> None:
    assert through_the_wire(receipt_message(receipt_ev(kind))) == Receipt(
        42,
        message_ids=("3EB0A", "3EB0B"),
        status=status,
        timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        chat="4915112345678@s.whatsapp.net",
    )


@pytest.mark.parametrize(
    "kind",
    [None, P.Receipt.SENDER, P.Receipt.READ_SELF, P.Receipt.RETRY, P.Receipt.SERVER_ERROR],
)
def test_other_receipts_are_ignored(kind: int | None) -> None:
    """An unset Type reads as DELIVERED in Python but means a type neonize did not
    know: not a delivery."""
    assert receipt_message(receipt_ev(kind)) is None
    assert receipt_message(receipt_ev(P.Receipt.READ, ids=())) is None


# -- the send path ----------------------------------------------------------------------


class FakeClient:
    """neonize's NewClient as far as sends go: records what it was asked; answers
    with a real SendResponse, raises a real SendMessageError, or blocks."""

    def __init__(self) -> None:
        self.calls: list[tuple[P.JID, E.Message]] = []
        self.called = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.error: str = ""

    def send_message(self, to: P.JID, message: E.Message) -> P.SendResponse:
        self.calls.append((to, message))
        self.called.set()
        self.release.wait(10)
        if self.error:
            raise SendMessageError(self.error)
        return P.SendResponse(ID=f"3EB0{len(self.calls):04d}", Timestamp=1_767_225_600)


class ManualTimers:
    """threading.Timer's shape, fired by the test."""

    def __init__(self) -> None:
        self.timers: list[ManualTimers.Timer] = []

    class Timer:
        def __init__(self, seconds: float, fire: Callable[[], None]) -> None:
            self.seconds, self.fire, self.cancelled = seconds, fire, False

        def start(self) -> None:
            pass

        def cancel(self) -> None:
            self.cancelled = True

    def __call__(self, seconds: float, fire: Callable[[], None]) -> ManualTimers.Timer:
        timer = ManualTimers.Timer(seconds, fire)
        self.timers.append(timer)
        return timer


class Worker:
    def __init__(self, logged_in: bool = True) -> None:
        self.client = FakeClient()
        self.reports: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.timers = ManualTimers()
        self.outbox = Outbox(
            lambda: self.client,
            lambda: logged_in,
            lambda kind, **fields: self.reports.put((kind, fields)),
            timeout=20.0,
            timer=self.timers,
        )

    def next(self) -> DriverEvent | None:
        return through_the_wire(self.reports.get(timeout=5))


def test_a_send_goes_out_as_a_conversation_to_a_jid_built_from_the_number() -> None:
    worker = Worker()
    worker.outbox.submit("ref-1", "+4915112345678", "hello @everyone")
    sent = worker.next()
    assert sent == MessageSent(
        42, ref="ref-1", message_id="3EB00001", timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    [(to, message)] = worker.client.calls
    assert (to.User, to.Server, to.Device) == ("4915112345678", "s.whatsapp.net", 0)
    assert message.conversation == "hello @everyone"
    assert not message.HasField("extendedTextMessage"), "no mention scan, no network calls"
    assert worker.timers.timers[0].seconds == 20.0 and worker.timers.timers[0].cancelled


def test_a_jid_recipient_keeps_its_server() -> None:
    worker = Worker()
    worker.outbox.submit("r", "123456789012345@lid", "x")
    assert isinstance(worker.next(), MessageSent)
    [(to, _)] = worker.client.calls
    assert (to.User, to.Server) == ("123456789012345", "lid")


@pytest.mark.parametrize(
    ("logged_in", "to", "reason"),
    [(False, "4915112345678", "not_connected"), (True, "not a number", "invalid_recipient")],
)
def test_sends_that_cannot_go_out_are_refused_at_once(
    logged_in: bool, to: str, reason: str
) -> None:
    worker = Worker(logged_in=logged_in)
    worker.outbox.submit("r", to, "x")
    failed = worker.next()
    assert isinstance(failed, SendFailed)
    assert (failed.ref, failed.outcome, failed.reason) == ("r", "refused", reason)
    assert worker.client.calls == []


@pytest.mark.parametrize(
    ("error", "outcome", "reason"),
    [
        ("websocket not connected", "refused", "not_connected"),
        ("no LID found for 4915112345678@s.whatsapp.net from server", "refused", "not_on_whatsapp"),
        ("server returned error 429", "refused", "rate_limited"),
        ("server returned error 479", "refused", "error"),
        ("timed out waiting for message send response", "unknown", "timeout"),
        ("failed to send message node: broken pipe", "unknown", "error"),
    ],
)
def test_whatsmeow_errors_map_to_refused_or_unknown(error: str, outcome: str, reason: str) -> None:
    worker = Worker()
    worker.client.error = error
    worker.outbox.submit("r", "4915112345678", "x")
    failed = worker.next()
    assert isinstance(failed, SendFailed)
    assert (failed.outcome, failed.reason) == (outcome, reason)
    assert "4915112345678" not in failed.detail, "no phone numbers in the detail"


def test_past_the_deadline_a_send_in_flight_is_unknown_and_its_late_answer_dropped() -> None:
    worker = Worker()
    worker.client.release.clear()  # WhatsApp does not answer
    worker.outbox.submit("slow", "4915112345678", "x")
    assert worker.client.called.wait(5)
    worker.timers.timers[0].fire()
    failed = worker.next()
    assert isinstance(failed, SendFailed)
    assert (failed.ref, failed.outcome, failed.reason) == ("slow", "unknown", "timeout")
    worker.outbox.submit("next", "4915112345678", "y")
    worker.client.release.set()  # the ack comes after all; then the next send goes
    sent = worker.next()
    assert isinstance(sent, MessageSent) and sent.ref == "next", "one answer per send"


def test_a_send_waiting_behind_a_hung_one_past_its_deadline_is_refused_and_never_sent() -> None:
    worker = Worker()
    worker.client.release.clear()
    worker.outbox.submit("hung", "4915112345678", "x")
    assert worker.client.called.wait(5)
    worker.outbox.submit("behind", "4915112345678", "y")
    worker.timers.timers[1].fire()  # the second one's deadline, while it still waits
    failed = worker.next()
    assert isinstance(failed, SendFailed)
    assert (failed.ref, failed.outcome, failed.reason) == ("behind", "refused", "error")
    worker.client.release.set()
    assert isinstance(worker.next(), MessageSent)
    assert len(worker.client.calls) == 1, "the refused one was never handed to neonize"
