"""Messages in the neonize worker: inbound events to wire messages, and outbound
sends with a deadline.

Part of the worker process (:mod:`sessions_app.drivers.neonize_worker`), the only
place neonize is imported; like the worker, it imports neonize inside its
functions, so the supervisor can import neither by accident.

What neonize 0.5.2 gives (read from its encoder, ``goneonize/utils/encoder.go``):

- ``MessageEv``: ``Info.Timestamp`` in **milliseconds**; ``Info.MessageSource``
  always carries ``SenderAlt`` (empty when WhatsApp gave none); ``Message`` is
  whatsmeow's unwrapped message (ephemeral, view-once, document-with-caption
  wrappers removed; unwrapped here too, in case).
- ``ReceiptEv``: ``Timestamp`` in seconds; ``Type`` is set only for receipt types
  neonize knows (``DELIVERED`` for whatsmeow's ""), so an unset ``Type`` is an
  unknown receipt, not a delivery: ignored.
- ``send_message`` returns ``SendResponse`` (``ID``, ``Timestamp`` in seconds) or
  raises ``SendMessageError`` with whatsmeow's error text; it waits up to 75 s for
  the server's ack, and whatsmeow sends one message at a time per client.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
from collections.abc import Callable
from typing import Any

from sessions_app.drivers.sends import InvalidRecipient, Recipient, parse_recipient
from sessions_app.drivers.wire import MAX_TEXT

Message = tuple[str, dict[str, Any]]

# -- inbound ----------------------------------------------------------------------------

#: Content fields, in the order they are looked for, and the kind each means.
_MEDIA = (
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("ptvMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
    ("lottieStickerMessage", "sticker"),
)

#: Wrappers whose ``message`` is the content.
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "deviceSentMessage",
)

#: Fields that are bookkeeping, not content: a message with nothing else (key
#: distribution, history-sync notices, revokes and edits) is not a message to store.
_BOOKKEEPING = {
    "protocolMessage",
    "senderKeyDistributionMessage",
    "fastRatchetKeySenderKeyDistributionMessage",
    "messageContextInfo",
    "keepInChatMessage",
    "pinInChatMessage",
    "editedMessage",
}

_RECEIPT_STATUSES = {"DELIVERED": "delivered", "READ": "read", "PLAYED": "played"}


def message_content(msg: Any) -> tuple[str, str] | None:
    """``(kind, text)`` of a ``waE2E.Message``: text, or a media kind and its
    caption, or ``("other", "")``; None for bookkeeping only."""
    for wrapper in _WRAPPERS:
        if msg.HasField(wrapper) and getattr(msg, wrapper).HasField("message"):
            return message_content(getattr(msg, wrapper).message)
    if msg.HasField("conversation"):
        return "text", msg.conversation
    if msg.HasField("extendedTextMessage"):
        return "text", msg.extendedTextMessage.text
    for field, kind in _MEDIA:
        if msg.HasField(field):
            return kind, getattr(getattr(msg, field), "caption", "")
    if all(field.name in _BOOKKEEPING for field, _ in msg.ListFields()):
        return None
    return "other", ""


def _jid(jid: Any) -> str:
    from neonize.utils.jid import Jid2String

    return str(Jid2String(jid)) if jid.Server else ""


def phone_form(source: Any) -> str:
    """The sender's phone-number JID (no device): the sender itself when it is
    one, else ``SenderAlt`` (WhatsApp's phone form of a ``@lid`` sender), else ""."""
    for jid in (source.Sender, source.SenderAlt):
        if jid.Server == "s.whatsapp.net" and jid.User:
            return f"{jid.User}@s.whatsapp.net"
    return ""


def message_message(event: Any) -> Message | None:
    """The wire ``message`` for a neonize ``MessageEv``; None for bookkeeping."""
    content = message_content(event.Message)
    if content is None:
        return None
    kind, text = content
    info = event.Info
    source = info.MessageSource
    return "message", {
        "message_id": info.ID,
        "chat": _jid(source.Chat),
        "sender": _jid(source.Sender),
        "sender_phone": phone_form(source),
        "from_me": bool(source.IsFromMe),
        "timestamp": info.Timestamp / 1000.0,
        "push_name": info.Pushname,
        "kind": kind,
        "text": text,
    }


def receipt_message(event: Any) -> Message | None:
    """The wire ``receipt`` for a neonize ``ReceiptEv``: delivered, read or played
    by the recipient; None for the rest (our own devices' receipts, retries,
    unknown types)."""
    from neonize.proto import Neonize_pb2 as P

    if not event.HasField("Type") or not event.MessageIDs:
        return None
    status = _RECEIPT_STATUSES.get(P.Receipt.ReceiptType.Name(event.Type))
    if status is None:
        return None
    return "receipt", {
        "message_ids": list(event.MessageIDs),
        "status": status,
        "timestamp": float(event.Timestamp),
        "chat": _jid(event.MessageSource.Chat),
    }


# -- outbound ---------------------------------------------------------------------------

#: whatsmeow's errors that mean the message never went out, and the reason each is.
_REFUSED = (
    ("websocket not connected", "not_connected"),
    ("the store doesn't contain a device JID", "not_connected"),
    ("no LID found for", "not_on_whatsapp"),
    ("can't send message to unknown server", "invalid_recipient"),
    ("message recipient must be a user JID with no device part", "invalid_recipient"),
    ("server returned error 429", "rate_limited"),
    ("server returned error", "error"),  # the server's ack refused it
    ("failed to get user info", "error"),  # the lookups before anything is sent
    ("failed to get LID for PN", "error"),
    ("failed to get device list", "error"),
)

_JID_TEXT = re.compile(r"\d{5,}(?:[.:]\d+)*@[a-z.]+")


def _detail(text: str) -> str:
    """An error text fit for a log and the message row: no phone numbers."""
    return _JID_TEXT.sub("<jid>", text)[:300]


def send_failure(exc: BaseException) -> tuple[str, str, str]:
    """``(outcome, reason, detail)`` for an error from ``send_message``: refused
    when whatsmeow failed before the message went out (or the server refused
    it), unknown otherwise (it may have gone out)."""
    text = str(exc)
    if "timed out waiting for message send response" in text:
        return "unknown", "timeout", _detail(text)
    for needle, reason in _REFUSED:
        if needle in text:
            return "refused", reason, _detail(text)
    return "unknown", "error", _detail(f"{type(exc).__name__}: {text}")


def neonize_jid(recipient: Recipient) -> Any:
    from neonize.utils.jid import build_jid

    return build_jid(recipient.user, recipient.server)


def text_message(text: str) -> Any:
    """A plain text message: ``conversation``, not a ``str`` (neonize would send a
    str as ``extendedTextMessage`` and scan it for @mentions, with network calls)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as E2EMessage

    return E2EMessage(conversation=text)


@dataclasses.dataclass
class _Send:
    ref: str
    to: Any  # a neonize JID
    text: str
    started: bool = False
    done: bool = False
    timer: Any = None


class Outbox:
    """The worker's sends, one at a time in order, each answered exactly once.

    ``submit`` answers at once when the send cannot go out (not logged in, a bad
    recipient, a text too long); otherwise the send waits its turn on one thread
    and calls neonize's blocking ``send_message``. Its deadline (``timeout``
    seconds from ``submit``) answers ``unknown``/``timeout`` if neonize was asked
    and has not answered, or ``refused`` if the send was still waiting behind an
    earlier one (it never went out). ``report(kind, **fields)`` sends the answer
    (a ``sent`` or ``send_failed`` wire message) to the supervisor.
    """

    def __init__(
        self,
        client: Callable[[], Any],
        logged_in: Callable[[], bool],
        report: Callable[..., None],
        timeout: float,
        timer: Callable[[float, Callable[[], None]], Any] = threading.Timer,
    ) -> None:
        self.client = client
        self.logged_in = logged_in
        self.report = report
        self.timeout = timeout
        self.timer = timer
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Send] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, ref: str, to: str, text: str) -> None:
        def refuse(reason: str, detail: str) -> None:
            self.report("send_failed", ref=ref, outcome="refused", reason=reason, detail=detail)

        if not self.logged_in():
            return refuse("not_connected", "the connection is not logged in")
        if len(text) > MAX_TEXT:
            return refuse("error", f"text longer than {MAX_TEXT} characters")
        try:
            jid = neonize_jid(parse_recipient(to))
        except InvalidRecipient as exc:
            return refuse("invalid_recipient", str(exc))
        job = _Send(ref, jid, text)
        job.timer = self.timer(self.timeout, lambda: self._expire(job))
        if isinstance(job.timer, threading.Thread):
            job.timer.daemon = True
        job.timer.start()
        self._queue.put(job)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                if job.done:  # its deadline passed while it waited: refused already
                    continue
                job.started = True
            try:
                response = self.client().send_message(job.to, text_message(job.text))
            except Exception as exc:
                outcome, reason, detail = send_failure(exc)
                self._finish(
                    job,
                    "send_failed",
                    ref=job.ref,
                    outcome=outcome,
                    reason=reason,
                    detail=detail,
                )
            else:
                self._finish(
                    job,
                    "sent",
                    ref=job.ref,
                    message_id=str(response.ID),
                    timestamp=float(response.Timestamp),
                )

    def _finish(self, job: _Send, kind: str, **fields: Any) -> None:
        with self._lock:
            if job.done:
                return  # its deadline answered first
            job.done = True
        job.timer.cancel()
        self.report(kind, **fields)

    def _expire(self, job: _Send) -> None:
        with self._lock:
            if job.done:
                return
            job.done = True
            started = job.started
        if started:
            detail = f"no answer from WhatsApp within {self.timeout:g} s"
            outcome, reason = "unknown", "timeout"
        else:
            detail = "not sent: an earlier send held the connection past this one's deadline"
            outcome, reason = "refused", "error"
        self.report("send_failed", ref=job.ref, outcome=outcome, reason=reason, detail=detail)
