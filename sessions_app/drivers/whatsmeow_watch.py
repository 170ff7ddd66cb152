"""What whatsmeow tells only in its log or by silence, as worker wire messages.

Three of whatsmeow's connection events carry no fields: StreamReplaced,
KeepAliveRestored and ClientOutdated. neonize's Go side hands every subscribed
event to Python as ``proto.Marshal(...)``, and in the versions whose
``getBytesAndSize`` takes ``&data[0]`` an event that marshals to zero bytes panics
the Go runtime and kills the worker. So the worker does not subscribe to them
(``neonize_worker.SUBSCRIBED_EVENTS``) and learns of them here instead:

- stream replaced and client outdated from whatsmeow's own log lines, which
  neonize replays on the ``whatsmeow.Client`` Python logger (``WhatsmeowLogWatch``);
- keep-alives working again from one whole keep-alive cycle without another
  timeout while the client stays logged in (``KeepAliveWatch``): whatsmeow logs
  nothing when they recover.

Plain Python: neither neonize nor Django is imported here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

Message = tuple[str, dict[str, Any]]

#: The logger neonize replays whatsmeow's client log on (Go logger "Client").
WHATSMEOW_CLIENT_LOGGER = "whatsmeow.Client"

#: whatsmeow's own log lines for the conditions whose events are empty
#: (connectionevents.go, handleStreamError / handleConnectFailure).
STREAM_REPLACED_LINE = "Got replaced stream error, sending StreamReplaced event"
CLIENT_OUTDATED_LINE = "Client outdated (405) connect failure"
OUTDATED_MESSAGE = "WhatsApp says this client is outdated: upgrade neonize"

#: whatsmeow sends a keep-alive every 20-30 s and waits 10 s for the answer
#: (keepalive.go). A keep-alive timeout not followed by another within one whole
#: cycle (plus a margin) means the keep-alive after it was answered.
KEEPALIVE_RESTORED_AFTER = 30.0 + 10.0 + 5.0


def whatsmeow_log_message(text: str) -> Message | None:
    """The wire message for one of whatsmeow's client log lines, or None.

    Stream replaced and client outdated come this way: their events carry no
    fields, so the worker does not subscribe to them (see ``SUBSCRIBED_EVENTS``).
    """
    if text.startswith(STREAM_REPLACED_LINE):
        return "replaced", {}
    if text.startswith(CLIENT_OUTDATED_LINE):
        return "error", {"message": OUTDATED_MESSAGE, "retryable": False}
    return None


class WhatsmeowLogWatch(logging.Handler):
    """Turns whatsmeow's log lines about stream replaced / client outdated into
    wire messages. neonize replays every Go log entry on a Python logger (on its
    own log thread); this handler sits on ``whatsmeow.Client``."""

    def __init__(self, send: Callable[[str, dict[str, Any]], None]) -> None:
        super().__init__(level=logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        message = whatsmeow_log_message(record.getMessage())
        if message is not None:
            self.send(*message)

    def install(self) -> None:
        """Attach to neonize's whatsmeow client logger, which must pass INFO
        (the lines are INFO and ERROR); the stderr handler keeps its own level."""
        client_log = logging.getLogger(WHATSMEOW_CLIENT_LOGGER)
        client_log.addHandler(self)
        if client_log.getEffectiveLevel() > logging.INFO:
            client_log.setLevel(logging.INFO)


class KeepAliveWatch:
    """Reports ``keepalive_restored`` without neonize's (empty) KeepAliveRestored.

    whatsmeow logs nothing when keep-alives work again. After a KeepAliveTimeout,
    if no other follows within ``after`` seconds (one whole keep-alive cycle) and
    ``probe`` says the client is still connected and logged in, the keep-alive
    after it was answered. Any other connection event cancels the watch.
    """

    def __init__(
        self,
        send: Callable[[str], None],
        probe: Callable[[], bool],
        after: float = KEEPALIVE_RESTORED_AFTER,
        timer: Callable[[float, Callable[[], None]], Any] = threading.Timer,
    ) -> None:
        self.send = send
        self.probe = probe
        self.after = after
        self.timer = timer
        self._lock = threading.Lock()
        self._pending: Any = None
        self._generation = 0

    def timed_out(self) -> None:
        """A KeepAliveTimeout: (re)start the wait for one quiet cycle."""
        with self._lock:
            self._cancel_locked()
            generation = self._generation
            pending = self.timer(self.after, lambda: self._check(generation))
            if isinstance(pending, threading.Thread):
                pending.daemon = True
            pending.start()
            self._pending = pending

    def cancel(self) -> None:
        with self._lock:
            self._cancel_locked()

    def _cancel_locked(self) -> None:
        self._generation += 1
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _check(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a newer timeout or another event came first
            self._pending = None
        try:
            alive = self.probe()
        except Exception:
            alive = False
        if alive:
            self.send("keepalive_restored")
