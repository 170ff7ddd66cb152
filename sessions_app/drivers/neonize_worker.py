"""One WhatsApp connection in its own process: the only module that imports neonize
(with :mod:`~sessions_app.drivers.neonize_messages`, its messages part).

Run as ``python -m sessions_app.drivers.neonize_worker --fd N``: the supervisor
passes one end of a socket pair as fd N and reads this process's stdout/stderr as
log lines. neonize's Go side keeps global maps without locks, crashes the process
on some misuse, and blocks for up to a minute in ``stop()``; so a worker serves
exactly one session, calls ``connect()`` once, and is killed rather than waited on.

The worker stops on its own when its supervisor goes away: the kernel kills it
when the parent dies (``PR_SET_PDEATHSIG``), a closed socket ends it, and so does
silence longer than ``--deadline`` seconds (the supervisor pings it).

It imports neither Django nor the supervisor: only the standard library, the wire
protocol, the device store helpers and neonize.

Messages: ``MessageEv`` and ``ReceiptEv`` handlers are registered before
``connect()`` (neonize keeps one handler per event type); sends run one at a time
on their own thread, each with a deadline (``--send-timeout``), and a send before
``Connected`` (or after the connection dropped) is refused as ``not_connected``.
Message texts never reach a log line.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sessions_app.drivers import device_store, wire
from sessions_app.drivers.neonize_messages import Outbox, message_message, receipt_message
from sessions_app.drivers.sends import SEND_TIMEOUT
from sessions_app.drivers.whatsmeow_watch import KeepAliveWatch, WhatsmeowLogWatch

logger = logging.getLogger("waconnect.worker")

FIRST_QR_VALID_FOR = 60.0
NEXT_QR_VALID_FOR = 20.0
STOP_GRACE = 1.5
PR_SET_PDEATHSIG = 1

#: ConnectFailure reasons after which whatsmeow itself has deleted the session.
LOGOUT_REASONS = {"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"}

#: The neonize events the worker subscribes to, by class name. Every one carries
#: fields: neonize's Go side hands each subscribed event to Python as
#: ``proto.Marshal(...)`` and, in the versions whose ``getBytesAndSize`` takes
#: ``&data[0]``, panics on an event that marshals to zero bytes, killing the
#: worker. StreamReplaced, KeepAliveRestored and ClientOutdated are such events;
#: the worker learns of them from whatsmeow's log lines and its keep-alive cycle
#: instead (``whatsmeow_log_message``, ``KeepAliveWatch``).
SUBSCRIBED_EVENTS = (
    "PairStatusEv",
    "ConnectedEv",
    "DisconnectedEv",
    "KeepAliveTimeoutEv",
    "LoggedOutEv",
    "TemporaryBanEv",
    "ConnectFailureEv",
    "StreamErrorEv",
)

#: The message events the worker subscribes to, and the Session method for each
#: (both carry fields; neonize keeps one handler per event type).
MESSAGE_EVENTS = {"MessageEv": "on_message", "ReceiptEv": "on_receipt"}

#: The events after which the connection is no longer logged in (no sends).
NOT_LOGGED_IN_EVENTS = (
    "Disconnected",
    "LoggedOut",
    "TemporaryBan",
    "ConnectFailure",
    "StreamError",
)

Message = tuple[str, dict[str, Any]]


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(3)


# -- mapping neonize's events to wire messages (pure; tested with real objects) -----


def event_message(event: Any, push_name: str = "") -> Message | None:
    """The wire message for one neonize event object, or None to ignore it."""
    from neonize.proto import Neonize_pb2 as P
    from neonize.utils.jid import Jid2String

    name = type(event).__name__
    if name == "PairStatus":
        if event.Status == P.PairStatus.SUCCESS:
            return "paired", {"jid": Jid2String(event.ID), "push_name": push_name}
        return "error", {
            "message": f"pairing failed: {event.Error or 'unknown'}",
            "retryable": True,
        }
    if name == "Connected":
        return "connected", {}
    if name == "Disconnected":
        return "disconnected", {}
    if name == "KeepAliveTimeout":
        return "keepalive_timeout", {}
    if name == "LoggedOut":
        return "logged_out", {"reason": _enum_name(P.ConnectFailureReason, event.Reason)}
    if name == "TemporaryBan":
        reason = _enum_name(P.TemporaryBan.TempBanReason, event.Code)
        return "banned", {"expire": float(event.Expire), "reason": reason}
    if name == "ConnectFailure":
        reason = _enum_name(P.ConnectFailureReason, event.Reason)
        if reason in LOGOUT_REASONS:
            return "logged_out", {"reason": reason}
        retryable = reason != "CLIENT_OUTDATED"
        return "error", {
            "message": f"connect failure {reason}: {event.Message}",
            "retryable": retryable,
        }
    if name == "StreamError":
        return "error", {"message": f"stream error {event.Code}", "retryable": True}
    return None


def login_status_message(status: str) -> Message | None:
    """The wire message for whatsmeow's QR-channel status (not an event in neonize)."""
    if status == "timeout":
        return "qr_timeout", {}
    if status in ("success", "code"):
        return None
    if status == "err-client-outdated":
        return "error", {"message": "WhatsApp says this client is outdated", "retryable": False}
    return "error", {"message": f"login failed: {status}", "retryable": True}


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return f"UNKNOWN_{value}"


# -- the process ----------------------------------------------------------------------


class Channel:
    """The socket to the supervisor: thread-safe sends, line reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        data = wire.encode(kind, **fields)
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                os._exit(4)  # the supervisor is gone: nobody may use this connection

    def read(self) -> dict[str, Any] | None:
        line = self.reader.readline(wire.MAX_LINE + 1)
        if not line:
            return None
        return wire.decode(line, wire.COMMANDS)


class Session:
    """One neonize client: handlers first, then ``connect()`` once, in a thread."""

    def __init__(
        self,
        channel: Channel,
        session_id: int,
        store: str,
        jid: str,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.channel = channel
        self.session_id = session_id
        self.store = store
        self.jid = jid
        self.client: Any = None
        #: Set by Connected, cleared when the connection drops: sends need it.
        self.logged_in = threading.Event()
        self.outbox = Outbox(lambda: self.client, self.logged_in.is_set, channel.send, send_timeout)
        self.qr_count = 0
        self.first_qr = threading.Event()
        self.log_watch = WhatsmeowLogWatch(self.on_log_message)
        self.keepalive = KeepAliveWatch(self.channel.send, self.still_logged_in)

    def build(self) -> None:
        from neonize import events
        from neonize.client import NewClient

        if self.jid:
            from neonize.proto.Neonize_pb2 import JID

            parts = device_store.parse_jid(self.jid)
            jid = JID(
                User=parts.user,
                RawAgent=parts.agent,
                Device=parts.device,
                Integrator=0,
                Server=parts.server,
                IsEmpty=False,
            )
            client = NewClient(self.store, jid=jid)
        else:
            client = NewClient(self.store, uuid=f"waconnect-{self.session_id}", new_device=True)
        for name in SUBSCRIBED_EVENTS:
            client.event(getattr(events, name))(self.on_event)  # returns None: not a decorator
        for name, handler in MESSAGE_EVENTS.items():
            client.event(getattr(events, name))(getattr(self, handler))
        self.log_watch.install()
        client.qr(self.on_qr)
        # neonize prints whatsmeow's QR-channel status; we need it (the round's end).
        client._NewClient__onLoginStatus = self.on_login_status
        self.client = client

    def on_event(self, client: Any, event: Any) -> None:
        name = type(event).__name__
        if name == "Connected":
            self.logged_in.set()
        elif name in NOT_LOGGED_IN_EVENTS:
            self.logged_in.clear()
        if name == "KeepAliveTimeout":
            self.keepalive.timed_out()
        else:
            self.keepalive.cancel()
        push_name = getattr(getattr(client, "me", None), "PushName", "") or ""
        message = event_message(event, push_name)
        if message is not None:
            self.channel.send(message[0], **message[1])

    def on_message(self, client: Any, event: Any) -> None:
        self._forward(message_message, event)

    def on_receipt(self, client: Any, event: Any) -> None:
        self._forward(receipt_message, event)

    def _forward(self, mapping: Any, event: Any) -> None:
        """Map and send an inbound event; a mapping error is logged by its type only
        (its text could quote the message)."""
        try:
            message = mapping(event)
        except Exception as exc:
            logger.error("could not map a %s: %s", type(event).__name__, type(exc).__name__)
            return
        if message is not None:
            self.channel.send(message[0], **message[1])

    def on_log_message(self, kind: str, fields: dict[str, Any]) -> None:
        self.keepalive.cancel()
        self.channel.send(kind, **fields)

    def still_logged_in(self) -> bool:
        """Whether the socket is up and logged in (read from neonize's Go side)."""
        client = self.client
        return client is not None and bool(client.is_connected) and bool(client.is_logged_in)

    def on_qr(self, client: Any, data: bytes) -> None:
        valid_for = FIRST_QR_VALID_FOR if self.qr_count == 0 else NEXT_QR_VALID_FOR
        self.qr_count += 1
        self.channel.send("qr", code=data.decode(), valid_for=valid_for)
        self.first_qr.set()

    def on_login_status(self, uuid: Any, status: Any) -> None:
        text = ctypes.string_at(status).decode() if isinstance(status, int) else str(status)
        message = login_status_message(text)
        if message is not None:
            self.channel.send(message[0], **message[1])

    def run(self) -> None:
        """Thread body: resume or pair, connect once, report how it ended."""
        try:
            if self.jid and not device_store.device_exists(self.store, self.jid):
                self.channel.send("logged_out", reason="device not in the store")
                return
            self.build()
            self.channel.send("connecting", at=time.monotonic())
            self.client.connect()
            self.channel.send("error", message="the connection ended", retryable=True)
        except Exception as exc:
            self.channel.send("error", message=_describe(exc), retryable=True)

    def pair_phone(self, phone: str) -> None:
        """Ask for a pairing code once the first QR has shown the socket is up."""
        from neonize.utils.enum import ClientName, ClientType

        def ask() -> None:
            if not self.first_qr.wait(timeout=60):
                self.channel.send("error", message="no QR round to pair with", retryable=True)
                return
            try:
                code = self.client.PairPhone(
                    phone.lstrip("+"), True, ClientName.LINUX, ClientType.FIREFOX
                )
            except Exception as exc:
                logger.warning("pairing code request failed: %s", type(exc).__name__)
                self.channel.send(
                    "error", message=f"pairing code refused: {_describe(exc)}", retryable=True
                )
                return
            self.channel.send("pair_code", code=str(code))

        threading.Thread(target=ask, name="pair-phone", daemon=True).start()

    def logout(self) -> None:
        try:
            if self.client is not None:
                self.client.logout()
        except Exception as exc:
            logger.info(
                "logout through WhatsApp failed (%s); removing the device locally",
                type(exc).__name__,
            )
        if self.jid:
            device_store.delete_device(self.store, self.jid)
        self.channel.send("logged_out", reason="logged out as asked")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if "no such host" in text or "lookup web.whatsapp.com" in text:
        return "cannot resolve web.whatsapp.com (no network?)"
    return f"{type(exc).__name__}: {text[:300]}"


def _exit_soon(work: Callable[[], None] | None, code: int = 0) -> None:
    """Run ``work`` (neonize's stop, which can block for a minute) briefly, then exit."""
    if work is not None:
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(STOP_GRACE)
    os._exit(code)


def configure_logging(level: str) -> None:
    """Before neonize is imported: its basicConfig then does nothing."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    numeric = logging.getLevelName(level.upper())
    numeric = numeric if isinstance(numeric, int) else logging.WARNING
    for handler in logging.getLogger().handlers:
        # whatsmeow.Client passes INFO to WhatsmeowLogWatch; stderr stays at `level`.
        handler.setLevel(numeric)
    for name in ("waconnect", "neonize", "whatsmeow", "Whatsmeow"):
        logging.getLogger(name).setLevel(numeric)
    # waconnect sends no media: neonize's warning that ffmpeg is missing is noise.
    logging.getLogger("neonize.utils.ffmpeg").setLevel(max(numeric, logging.ERROR))
    # The Go side filters at this logger's own level (read at connect()): INFO, as
    # whatsmeow's "replaced stream error" line is INFO (WhatsmeowLogWatch needs it)
    # and DEBUG would stream every XML node. stderr still shows only `level`.
    logging.getLogger("neonize.utils.log").setLevel(logging.INFO)


def serve(
    channel: Channel, heartbeat: float, deadline: float, send_timeout: float = SEND_TIMEOUT
) -> None:
    started = time.monotonic()
    import neonize  # noqa: F401  (the expensive part: done before "ready")

    logger.debug("neonize imported in %.0f ms", (time.monotonic() - started) * 1000)
    channel.send("ready")

    def beat() -> None:
        while True:
            time.sleep(heartbeat)
            channel.send("heartbeat")

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    channel.sock.settimeout(deadline)
    session: Session | None = None
    while True:
        try:
            command = channel.read()
        except TimeoutError:
            logger.error("no word from the supervisor for %.0fs; disconnecting", deadline)
            _exit_soon(session.client.stop if session and session.client else None, 5)
            return
        except wire.ProtocolError as exc:
            logger.error("bad command from the supervisor: %s", exc)
            _exit_soon(None, 6)
            return
        if command is None:  # the supervisor closed the socket or died
            _exit_soon(session.client.stop if session and session.client else None, 0)
            return
        kind = command["t"]
        if kind == "ping":
            continue
        if kind == "start" and session is None:
            session = Session(
                channel, command["session"], command["store"], command["jid"], send_timeout
            )
            threading.Thread(target=session.run, name="connect", daemon=True).start()
        elif kind == "send":
            if session is None:
                channel.send(
                    "send_failed",
                    ref=command["ref"],
                    outcome="refused",
                    reason="not_connected",
                    detail="no session started in this worker",
                )
            else:
                session.outbox.submit(command["ref"], command["to"], command["text"])
        elif kind == "pair_phone" and session is not None:
            session.pair_phone(command["phone"])
        elif kind == "logout" and session is not None:
            session.logout()
            _exit_soon(session.client.stop if session.client else None, 0)
        elif kind == "stop":
            channel.send("stopped")
            _exit_soon(session.client.stop if session and session.client else None, 0)
        else:
            logger.warning("ignored command %r in this state", kind)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="socket to the supervisor")
    parser.add_argument("--log-level", default="WARNING", help="level for neonize/whatsmeow logs")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats")
    parser.add_argument("--deadline", type=float, default=10.0, help="exit after this much silence")
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=SEND_TIMEOUT,
        help="seconds a send waits for WhatsApp's ack before its outcome is unknown",
    )
    args = parser.parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    configure_logging(args.log_level)
    channel = Channel(socket.socket(fileno=args.fd))
    serve(channel, args.heartbeat, args.deadline, args.send_timeout)


if __name__ == "__main__":
    main()
