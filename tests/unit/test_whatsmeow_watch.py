"""Stream replaced, keep-alive restored and client outdated without their (empty)
neonize events: whatsmeow's exact log lines through neonize's own log pipeline, and
the keep-alive cycle; and the worker subscribes to no event without fields."""

from __future__ import annotations

import ctypes
import json
import logging
import queue
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import neonize
import pytest
from neonize import events as neonize_events
from neonize.proto import Neonize_pb2 as P
from neonize.utils.log import log_whatsmeow
from neonize.utils.platform import generated_name

from sessions_app.drivers.base import (
    ConnectError,
    Disconnected,
    KeepAliveRestored,
    KeepAliveTimeout,
    Replaced,
)
from sessions_app.drivers.neonize_worker import MESSAGE_EVENTS, SUBSCRIBED_EVENTS, Session
from sessions_app.drivers.whatsmeow_watch import (
    CLIENT_OUTDATED_LINE,
    KEEPALIVE_RESTORED_AFTER,
    STREAM_REPLACED_LINE,
    WHATSMEOW_CLIENT_LOGGER,
    KeepAliveWatch,
    WhatsmeowLogWatch,
    whatsmeow_log_message,
)
from tests.unit.test_neonize_mapping import through_the_wire

pytestmark = pytest.mark.timeout(10)

#: What whatsmeow logs (connectionevents.go), formatted as its Go logger does.
STREAM_REPLACED = ("INFO", "Got replaced stream error, sending StreamReplaced event")
CLIENT_OUTDATED = (
    "ERROR",
    "Client outdated (405) connect failure (client version: 2.3000.1026436087)",
)


class Sent:
    """A stand-in for the worker's channel: records (kind, fields), thread-safe."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    def send(self, kind: str, **fields: Any) -> None:
        self.messages.put((kind, fields))

    def next(self) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=5)

    def empty(self) -> bool:
        return self.messages.empty()


@pytest.fixture
def log_watch() -> Iterator[Sent]:
    sent = Sent()
    watch = WhatsmeowLogWatch(lambda kind, fields: sent.send(kind, **fields))
    client_log = logging.getLogger(WHATSMEOW_CLIENT_LOGGER)
    level = client_log.level
    watch.install()
    yield sent
    client_log.removeHandler(watch)
    client_log.setLevel(level)


def from_go(level: str, text: str) -> None:
    """Hand a log entry to neonize as its Go logger does (LogEntry bytes, name "Client")."""
    data = P.LogEntry(Name="Client", Level=level, Message=text).SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    log_whatsmeow(ctypes.addressof(buffer), len(data))


def test_stream_replaced_comes_from_whatsmeows_log_line(log_watch: Sent) -> None:
    from_go(*STREAM_REPLACED)
    assert through_the_wire(log_watch.next()) == Replaced(42)


def test_client_outdated_comes_from_whatsmeows_log_line_and_is_not_retryable(
    log_watch: Sent,
) -> None:
    from_go(*CLIENT_OUTDATED)
    event = through_the_wire(log_watch.next())
    assert isinstance(event, ConnectError)
    assert not event.retryable
    assert "outdated" in event.message


def test_other_log_lines_are_not_events(log_watch: Sent) -> None:
    from_go("INFO", "Successfully authenticated")
    from_go("WARN", "Got 503 stream error, assuming automatic reconnect will handle it")
    from_go(*STREAM_REPLACED)  # the queue is in order: the two above came first
    assert log_watch.next() == ("replaced", {})
    assert log_watch.empty()
    assert whatsmeow_log_message("Got 515 code, reconnecting...") is None


class ManualTimer:
    """threading.Timer's interface; fires when the test says so."""

    made: list[ManualTimer] = []

    def __init__(self, interval: float, function: Callable[[], None]) -> None:
        self.interval = interval
        self.function = function
        self.cancelled = False
        ManualTimer.made.append(self)

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:  # as a Timer whose cancel came too late would
        self.function()


@pytest.fixture
def timers() -> list[ManualTimer]:
    ManualTimer.made = []
    return ManualTimer.made


def keepalive_watch(sent: Sent, probe: Callable[[], bool] = lambda: True) -> KeepAliveWatch:
    return KeepAliveWatch(sent.send, probe, timer=ManualTimer)


def test_a_quiet_keepalive_cycle_after_a_timeout_is_restored(timers: list[ManualTimer]) -> None:
    sent = Sent()
    watch = keepalive_watch(sent)
    watch.timed_out()
    [timer] = timers
    assert timer.interval == KEEPALIVE_RESTORED_AFTER > 30 + 10, "one whole whatsmeow cycle"
    timer.fire()
    assert through_the_wire(sent.next()) == KeepAliveRestored(42)


def test_another_timeout_starts_the_wait_again(timers: list[ManualTimer]) -> None:
    sent = Sent()
    watch = keepalive_watch(sent)
    watch.timed_out()
    watch.timed_out()
    first, second = timers
    assert first.cancelled
    first.fire()
    assert sent.empty(), "a superseded wait reports nothing"
    second.fire()
    assert sent.next() == ("keepalive_restored", {})


def test_any_other_connection_event_ends_the_wait(timers: list[ManualTimer]) -> None:
    sent = Sent()
    watch = keepalive_watch(sent)
    watch.timed_out()
    watch.cancel()
    timers[0].fire()
    assert sent.empty()


@pytest.mark.parametrize("probe", [lambda: False, lambda: 1 / 0])
def test_no_restore_while_the_client_is_not_logged_in(
    timers: list[ManualTimer], probe: Callable[[], bool]
) -> None:
    sent = Sent()
    keepalive_watch(sent, probe).timed_out()
    timers[0].fire()
    assert sent.empty()


def built_session(tmp_path: Path) -> tuple[Session, Sent]:
    sent = Sent()
    session = Session(sent, 42, str(tmp_path / "whatsmeow.sqlite3"), jid="")  # type: ignore[arg-type]
    session.build()  # a real neonize client; nothing connects before connect()
    return session, sent


def test_the_worker_subscribes_to_no_event_without_fields(tmp_path: Path) -> None:
    session, _ = built_session(tmp_path)
    try:
        subscribed = {neonize_events.INT_TO_EVENT[code] for code in session.client.event.list_func}
        assert {cls.__name__ for cls in subscribed} == {
            getattr(neonize_events, name).__name__ for name in (*SUBSCRIBED_EVENTS, *MESSAGE_EVENTS)
        }
        handlers = session.client.event.list_func
        for name, method in MESSAGE_EVENTS.items():
            code = neonize_events.EVENT_TO_INT[getattr(neonize_events, name)]
            handler = handlers[code]
            handler = handler() if isinstance(handler, weakref.WeakMethod) else handler
            assert handler.__name__ == method, f"{name} goes to Session.{method}"
        empty = {cls.__name__ for cls in subscribed if not cls.DESCRIPTOR.fields}
        assert empty == set(), f"events that marshal to zero bytes: {empty}"
        for name in ("StreamReplaced", "KeepAliveRestored", "ClientOutdated"):
            assert not getattr(P, name).DESCRIPTOR.fields
            assert name not in {cls.__name__ for cls in subscribed}
    finally:
        logger = logging.getLogger(WHATSMEOW_CLIENT_LOGGER)
        logger.removeHandler(session.log_watch)


def test_the_worker_watches_keepalives_through_its_events(
    tmp_path: Path, timers: list[ManualTimer]
) -> None:
    session, sent = built_session(tmp_path)
    try:
        session.keepalive = KeepAliveWatch(sent.send, lambda: True, timer=ManualTimer)
        client = session.client
        session.on_event(client, P.KeepAliveTimeout(ErrorCount=1, LastSuccess=1_700_000_000))
        assert through_the_wire(sent.next()) == KeepAliveTimeout(42)
        session.on_event(client, P.Disconnected(status=True))
        assert isinstance(through_the_wire(sent.next()), Disconnected)
        timers[0].fire()
        assert sent.empty(), "a disconnect is not a restored keep-alive"

        session.on_event(client, P.KeepAliveTimeout(ErrorCount=1, LastSuccess=1_700_000_000))
        sent.next()
        timers[1].fire()
        assert sent.next() == ("keepalive_restored", {})

        session.on_log_message("replaced", {})  # from the log watch: ends any wait
        assert sent.next() == ("replaced", {})
    finally:
        logger = logging.getLogger(WHATSMEOW_CLIENT_LOGGER)
        logger.removeHandler(session.log_watch)


def test_the_installed_whatsmeow_prints_exactly_the_lines_the_watch_reads() -> None:
    """The format strings are in neonize's shared library (whatsmeow compiled in):
    an upgrade that rewords them fails here instead of silently losing the events."""
    library = Path(neonize.__file__).parent / generated_name()
    compiled = library.read_bytes()
    assert STREAM_REPLACED_LINE.encode() in compiled
    assert f"{CLIENT_OUTDATED_LINE} (client version: %s)".encode() in compiled
    assert whatsmeow_log_message(STREAM_REPLACED[1]) == ("replaced", {})
    assert whatsmeow_log_message(CLIENT_OUTDATED[1]) is not None


#: The worker's own start (``neonize_worker.main``): its logging set up before neonize
#: is imported, a real client built; then the level neonize's ``connect()`` hands to
#: the Go side, and what whatsmeow's two lines become on their way through neonize.
WORKER_LOGGING = """
import ctypes, json, queue, sys
from sessions_app.drivers.neonize_worker import Session, configure_logging
configure_logging(sys.argv[1])
from neonize.client import log as go_side
from neonize.proto import Neonize_pb2 as P
from neonize.utils.enum import LogLevel
from neonize.utils.log import log_whatsmeow

class Channel:
    def __init__(self):
        self.sent = queue.Queue()
    def send(self, kind, **fields):
        self.sent.put([kind, fields])

channel = Channel()
Session(channel, 42, sys.argv[2], jid="").build()
seen = []
for level, text in json.loads(sys.argv[3]):
    data = P.LogEntry(Name="Client", Level=level, Message=text).SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    log_whatsmeow(ctypes.addressof(buffer), len(data))
    seen.append(channel.sent.get(timeout=5))
level = LogLevel.from_logging(go_side.level).level.decode()
print("RESULT " + json.dumps({"go_level": level, "seen": seen}))
"""


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_the_worker_as_started_lets_whatsmeows_lines_reach_the_watch(
    tmp_path: Path, level: str
) -> None:
    """Issue 8 fault 13, the inputs the worker really sees: whatsmeow filters its log
    on the Go side at the level neonize reads from its own logger when it connects,
    and the replaced-stream line is INFO. Whatever WACONNECT_WORKER_LOG_LEVEL an
    operator sets, the worker must hand the Go side INFO (not less: DEBUG streams every
    XML node) and its stderr must still show only the operator's level."""
    lines = [STREAM_REPLACED, CLIENT_OUTDATED]
    store = str(tmp_path / "whatsmeow.sqlite3")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", WORKER_LOGGING, level, store, json.dumps(lines)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [report] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    found = json.loads(report.removeprefix("RESULT "))
    assert found["go_level"] == "INFO", "the Go side must filter at INFO, the replaced line's level"
    replaced, outdated = (through_the_wire(tuple(message)) for message in found["seen"])
    assert replaced == Replaced(42)
    assert isinstance(outdated, ConnectError) and not outdated.retryable
    assert STREAM_REPLACED[1] not in result.stderr, "an INFO line on the worker's stderr"
