"""The pumps' hot path, grouped: every session's "record the ack, take the next"
that is ready at the same moment goes to the database as one batch
(:func:`messaging.outbound_batch.sent_and_take_many`).

No pump waits to be grouped: a call starts a batch at once when one of the
database threads is free (:func:`messaging.dbthreads.threads` batches at a time);
calls that arrive while all are busy wait for the next free one and go together.
One message on an idle supervisor is one batch of one, as fast as before; a
hundred busy sessions share a few statements and commits instead of a few
hundred.

One batcher per event loop (:func:`batcher`), shared by its pumps. A session is
in at most one batch at a time: its pump awaits each call, and a second call for
it (an old pump still waiting beside the new one after a re-claim) waits for the
next batch.

A pump cancelled while its batch runs gets no answer; a message the batch took
for it was never given to the driver, so the batcher puts it back in the queue
(``not_connected``: it never reached WhatsApp) rather than leave it ``sending``
for the next owner to mark ``unknown``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref

from django.utils import timezone

from messaging import outbound, outbound_batch
from messaging.dbthreads import message_db, threads
from messaging.models import Message
from messaging.outbound import Taken
from messaging.outbound_batch import Ack, Step
from sessions_app.leases import Lease

logger = logging.getLogger(__name__)

#: Most sessions in one batch (one statement's VALUES list).
MAX_BATCH = 200

_sent_and_take_many = message_db(outbound_batch.sent_and_take_many)
_mark_failed = message_db(outbound.mark_failed)

Result = tuple[Message | None, Taken]


@dataclasses.dataclass
class _Call:
    step: Step
    answer: asyncio.Future[Result]


class Batcher:
    """Groups the pumps' ``sent_and_take`` calls (see the module doc)."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.running = 0
        self._waiting: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Batches sent and the calls in them, in all (for tests and benchmarks).
        self.batches = 0
        self.calls = 0

    async def sent_and_take(self, lease: Lease, sent: Ack | None) -> Result:
        """:func:`messaging.outbound.sent_and_take` for ``lease``'s session, batched."""
        call = _Call(Step(lease, sent), asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        self._start()
        return await call.answer

    def _start(self) -> None:
        while self._waiting and self.running < self.slots:
            batch, later, sessions = [], [], set()
            for call in self._waiting:
                if call.answer.done():  # cancelled meanwhile
                    continue
                session = call.step.lease.session_id
                if session in sessions or len(batch) >= MAX_BATCH:
                    # A session's old pump (a lease given up and claimed again here)
                    # may still have a call waiting: one call per session per batch.
                    later.append(call)
                else:
                    sessions.add(session)
                    batch.append(call)
            self._waiting = later
            if not batch:
                continue
            self.running += 1
            self.batches += 1
            self.calls += len(batch)
            task = asyncio.get_running_loop().create_task(
                self._run(batch), name="waconnect-messages-batch"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Call]) -> None:
        try:
            results = await _sent_and_take_many([call.step for call in batch], timezone.now())
        except Exception as exc:
            for call in batch:
                if not call.answer.done():
                    call.answer.set_exception(exc)
            return
        finally:
            self.running -= 1
            self._start()
        for call, result in zip(batch, results, strict=True):
            if not call.answer.done():
                call.answer.set_result(result)
            elif result[1].message is not None:
                await _give_back(call.step.lease, result[1].message)


async def _give_back(lease: Lease, message: Message) -> None:
    """A message taken for a pump that is gone: never asked, so queued again."""
    try:
        await _mark_failed(
            lease, message.ref, "refused", "not_connected", "its pump stopped", timezone.now()
        )
    except Exception:  # the next owner marks it unknown: never sent twice
        logger.warning(
            "could not put back a message taken for a stopped pump",
            exc_info=True,
            extra={"session": lease.session_id},
        )


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = (
    weakref.WeakKeyDictionary()
)


def batcher() -> Batcher:
    """The running loop's batcher (its pumps share it)."""
    loop = asyncio.get_running_loop()
    found = _batchers.get(loop)
    if found is None:
        found = _batchers[loop] = Batcher(threads())
    return found
