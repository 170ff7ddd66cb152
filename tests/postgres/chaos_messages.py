"""Message traffic for the chaos test, and the checks of what became of it.

:class:`MessageTraffic` runs beside the faults of ``test_chaos``: sessions message
each other (and a few peers' phones, one of them not on WhatsApp) through
:func:`messaging.intents.enqueue`, as the API does; peers' phones message sessions
through the simulated WhatsApp's control line; a sampler thread reads every
outbound message's ``(status, version)`` from PostgreSQL on its own connection
(so a fault of the supervisors' connections or of Redis does not blind it).

At the end (:meth:`MessageTraffic.check`), against the simulated WhatsApp's record of
every message it carried:

- no message id was accepted twice (nothing sent twice);
- every accepted outbound message ends ``sent``/``delivered``/``read`` (and was
  carried), ``failed`` with a reason or ``expired`` (and was not carried), or
  ``unknown`` — only one that was taken (``sending``) under a lease that ended
  before its answer came: at most one per session and lease epoch;
- every message delivered to a session's connection is stored exactly once, and
  nothing is stored that was never carried;
- no sampled status moved backwards: each change seen is a path of
  :data:`messaging.states.TRANSITIONS`, and a row's version never goes down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import itertools
import random
import threading
import time
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.utils import timezone

from messaging import intents as messaging_intents
from messaging import outbound
from messaging.models import Message
from messaging.states import TRANSITIONS, WENT_OUT, Direction, Status
from sessions_app.drivers.sends import number_of
from sessions_app.drivers.simulated_messages import Carried
from sessions_app.drivers.simulated_service import ServiceControl
from sessions_app.intents import IntentRefused
from sessions_app.models import WaSession
from tests.background import repeating

#: A peer's phone that is on WhatsApp, and one that is not (sends to it fail).
PEER = "4915550001234"
ABSENT = "4915550009999"
#: Seconds of the short deadline some messages get (so that some expire).
SHORT_DEADLINE = 20.0
#: Outbound statuses a message may end in, and why.
ENDINGS = {Status.SENT, Status.DELIVERED, Status.READ, Status.FAILED, Status.EXPIRED}
UNKNOWN_REASONS = {outbound.OWNER_LOST, outbound.NO_ANSWER, outbound.LOST_TRACK}


def reachable() -> dict[str, set[str]]:
    """Every status reachable from each status along :data:`TRANSITIONS` (itself too)."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for (source, _), target in TRANSITIONS.items():
        edges[source].add(target)
    closure = {}
    for start in Status:
        seen, todo = {str(start)}, [str(start)]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        closure[str(start)] = seen
    return closure


@dataclasses.dataclass
class Sent:
    """An outbound message the web side accepted."""

    ref: str
    session_id: int
    to: str
    short: bool


class StatusSampler(threading.Thread):
    """Reads every outbound message's (status, version) every ``interval`` seconds on
    its own PostgreSQL connection; keeps each change seen, per ref, in order."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        super().__init__(name="chaos-status-sampler", daemon=True)
        self.url = url
        self.interval = interval
        self.seen: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
        self.samples = 0
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        table = Message._meta.db_table
        while True:
            stopping = self._halt.is_set()  # one more sample after stop()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True)
                rows = conn.execute(
                    f'SELECT ref, version, status FROM "{table}" WHERE direction = %s',
                    [str(Direction.OUT)],
                ).fetchall()
                for ref, version, status in rows:
                    history = self.seen[ref]
                    if not history or history[-1] != (version, status):
                        history.append((version, status))
                self.samples += 1
            except psycopg.Error:
                self.errors += 1
                conn = None
            if stopping:
                break
            self._halt.wait(self.interval)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def backwards(self) -> list[str]:
        """Changes seen that no path of the state machine makes, or a version that fell."""
        paths = reachable()
        wrong = []
        for ref, history in self.seen.items():
            for (v1, s1), (v2, s2) in itertools.pairwise(history):
                if v2 < v1 or (v2 == v1 and s2 != s1):
                    wrong.append(f"{ref}: version {v1} ({s1}) then {v2} ({s2})")
                elif s2 not in paths[s1]:
                    wrong.append(f"{ref}: {s1} (v{v1}) → {s2} (v{v2})")
        return wrong


class MessageTraffic:
    """Steady messages in and out of the chaos test's sessions (see the module doc)."""

    def __init__(
        self,
        address: str,
        database_url: str,
        rng: random.Random,
        running: set[int],
        out_rate: float = 8.0,
        in_rate: float = 3.0,
    ) -> None:
        self.address = address
        self.rng = rng
        self.running = running  # the chaos test's set: who sends, live
        self.out_rate = out_rate
        self.in_rate = in_rate
        self.numbers: dict[int, str] = {}
        self.sent: dict[str, Sent] = {}
        self.refused: collections.Counter[str] = collections.Counter()
        self.peer_ids: dict[str, int] = {}  # WhatsApp id → session messaged
        self.sampler = StatusSampler(database_url)
        self._control: ServiceControl | None = None
        self._traffic = contextlib.AsyncExitStack()

    async def start(self, sessions: set[int]) -> None:
        self.numbers = await linked_numbers(sessions)
        self._control = ServiceControl(self.address)
        await self._control.__aenter__()
        # WhatsApp takes a while to acknowledge: sends are under way when faults strike.
        await self._control.delays(ack_delay=0.4, delivered_delay=0.3, read_delay=0.7)
        await self._control.fault("not_on_whatsapp", ABSENT)
        self.sampler.start()
        for step, name in [(self._outbound, "chaos-outbound"), (self._inbound, "chaos-inbound")]:
            await self._traffic.enter_async_context(repeating(step, name=name))

    async def stop_sending(self) -> None:
        await self._traffic.aclose()  # raises what a loop that died early raised
        print(
            f"traffic: {len(self.sent)} messages queued, {len(self.peer_ids)} from peers,"
            f" refused at the door: {dict(self.refused)}"
        )

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # the test has failed already if a loop did
            await self._traffic.aclose()
        if self.sampler.is_alive():
            await asyncio.to_thread(self.sampler.stop)
        if self._control is not None:
            await self._control.__aexit__(None, None, None)

    # -- the traffic ----------------------------------------------------------------

    async def _outbound(self) -> None:
        """One message queued, after a random pause (the traffic's rate)."""
        await asyncio.sleep(self.rng.expovariate(self.out_rate))
        sender = self.rng.choice(sorted(self.running))
        roll = self.rng.random()
        if roll < 0.85:
            to = self.numbers[self.rng.choice([s for s in self.numbers if s != sender])]
        elif roll < 0.95:
            to = PEER
        else:
            to = ABSENT
        short = self.rng.random() < 0.1
        await self._enqueue(sender, to, short)

    @sync_to_async
    def _enqueue(self, sender: int, to: str, short: bool) -> None:
        deadline = timezone.now() + dt.timedelta(seconds=SHORT_DEADLINE) if short else None
        try:
            message = messaging_intents.enqueue(sender, to, "chaos says hello", deadline, "chaos")
        except (ValidationError, IntentRefused) as exc:
            self.refused[type(exc).__name__] += 1
            return
        self.sent[message.ref] = Sent(message.ref, sender, to, short)

    async def _inbound(self) -> None:
        """One message from a peer, after a random pause (the traffic's rate)."""
        assert self._control is not None
        await asyncio.sleep(self.rng.expovariate(self.in_rate))
        session = self.rng.choice(sorted(self.numbers))
        peer = f"49170{self.rng.randrange(10**7):07d}"
        message_id = await self._control.peer_message(session, peer, "hi from a peer", "Pe")
        assert message_id, f"session {session} has no linked device to message"
        self.peer_ids[message_id] = session

    # -- the end --------------------------------------------------------------------

    async def drained(self, timeout: float) -> None:
        """Wait until no outbound message is queued or sending and every message
        carried to a session is stored (the supervisors' progress: observed, not
        awaited); after ``timeout`` seconds, go on: :meth:`check` reports what is left."""
        assert self._control is not None
        until = time.monotonic() + timeout
        while True:
            pending = await pending_outbound()
            unstored = missing_inbound(await self._control.carried(), await stored_inbound())
            if not pending and not unstored:
                return
            if time.monotonic() > until:
                print(f"not drained in {timeout}s: {len(pending)} outbound, {len(unstored)} in")
                for line in await describe_sending():
                    print(line)
                return
            await asyncio.sleep(0.5)

    async def check(self) -> None:
        """The assertions of the module docstring, all reported together."""
        assert self._control is not None
        await asyncio.to_thread(self.sampler.stop)
        carried = {c.message_id: c for c in await self._control.carried()}
        rows = await outbound_rows()
        inbound = await stored_inbound()
        problems: dict[str, list[str]] = {}

        def problem(kind: str, items: list[str]) -> None:
            if items:
                problems[kind] = items

        problem(
            "carried more than once",
            [f"{c.message_id} ×{c.accepted}" for c in carried.values() if c.accepted != 1],
        )
        problem("accepted, no row", sorted(set(self.sent) - set(rows)))
        by_status = collections.Counter(row["status"] for row in rows.values())
        print(f"outbound endings: {dict(by_status)}")
        wrong = []
        unknown_per_tenure: collections.Counter[tuple[int, int]] = collections.Counter()
        for ref, row in rows.items():
            status, went = row["status"], ref in carried
            if status in WENT_OUT and not went:
                wrong.append(f"{ref} {status} but never carried")
            elif status in (Status.FAILED, Status.EXPIRED) and (went or not row["reason"]):
                wrong.append(f"{ref} {status} ({row['reason']!r}), carried: {went}")
            elif status == Status.UNKNOWN:
                if row["reason"] not in UNKNOWN_REASONS or row["send_epoch"] is None:
                    wrong.append(f"{ref} unknown ({row['reason']!r}) epoch {row['send_epoch']}")
                else:
                    unknown_per_tenure[(row["session_id"], row["send_epoch"])] += 1
            elif status not in ENDINGS:
                wrong.append(f"{ref} ends {status}")
        problem("outbound ended wrong", wrong)
        problem(
            "more than one unknown per session and lease epoch",
            [f"{k}: {n}" for k, n in unknown_per_tenure.items() if n > 1],
        )
        went_out = sum(by_status[s] for s in WENT_OUT)
        problem("traffic", [] if went_out > len(rows) // 2 else [f"only {went_out} went out"])

        problem(
            "delivered to a session, not stored", missing_inbound(list(carried.values()), inbound)
        )
        problem("stored more than once", [str(k) for k, n in inbound.items() if n != 1])
        problem("stored, never carried", [str(k) for k in inbound if k[1] not in carried])
        delivered = sum(1 for c in carried.values() for d in c.deliveries if d.session_id)
        print(
            f"inbound: {len(inbound)} stored, {delivered} deliveries to connections"
            f" ({delivered - len(inbound)} redeliveries)"
        )

        problem("status moved backwards", self.sampler.backwards())
        changes = sum(len(h) for h in self.sampler.seen.values())
        print(
            f"sampler: {self.sampler.samples} samples, {changes} states seen,"
            f" {self.sampler.errors} errors; unknown: {sum(unknown_per_tenure.values())}"
        )
        report = {kind: f"{len(items)}: {items[:5]}" for kind, items in problems.items()}
        assert not problems, f"messages under chaos: {report}"


def missing_inbound(carried: list[Carried], inbound: dict[tuple[int, str], int]) -> list[str]:
    """Messages that reached a session's connection and are not stored by that session."""
    missing = []
    for record in carried:
        for session_id in {d.session_id for d in record.deliveries if d.session_id}:
            if (session_id, record.message_id) not in inbound:
                missing.append(f"{record.message_id} → session {session_id}")
    return missing


@sync_to_async
def linked_numbers(sessions: set[int]) -> dict[int, str]:
    """Each session's phone number (its linked device's JID, once written)."""
    until = time.monotonic() + 30
    while True:
        rows = dict(WaSession.objects.filter(pk__in=sessions).values_list("pk", "jid"))
        numbers = {pk: number_of(jid) for pk, jid in rows.items() if jid}
        if len(numbers) == len(sessions) or time.monotonic() > until:
            assert len(numbers) == len(sessions), "every session has a linked device"
            return numbers
        time.sleep(0.2)  # the supervisors' writes: observed, not awaited


@sync_to_async
def pending_outbound() -> list[str]:
    return list(
        Message.objects.filter(
            direction=Direction.OUT, status__in=[Status.QUEUED, Status.SENDING]
        ).values_list("ref", flat=True)
    )


@sync_to_async
def describe_sending() -> list[str]:
    """Each message left ``sending``, beside its session's lease now (whose epoch it
    was taken under tells which pump lost track of it)."""
    lines = []
    for row in Message.objects.filter(direction=Direction.OUT, status=Status.SENDING).values(
        "ref", "session_id", "send_epoch", "sending_at", "status_changed_at"
    ):
        session = WaSession.objects.values("lease_owner", "lease_epoch", "state").get(
            pk=row["session_id"]
        )
        lines.append(f"sending: {row} session now: {session}")
    return lines


@sync_to_async
def outbound_rows() -> dict[str, dict[str, Any]]:
    rows = Message.objects.filter(direction=Direction.OUT).values(
        "ref", "session_id", "status", "send_epoch", "failure_reason"
    )
    return {r["ref"]: {**r, "reason": r["failure_reason"]} for r in rows}


@sync_to_async
def stored_inbound() -> dict[tuple[int, str], int]:
    """(session, WhatsApp id) → how many inbound rows."""
    rows = Message.objects.filter(direction=Direction.IN).values_list("session_id", "wa_id")
    return dict(collections.Counter(rows))
