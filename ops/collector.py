"""What the database says about every session, counted when Prometheus scrapes.

Served by the web tier's ``/metrics`` only (its own registry, see
:func:`web_registry`): every supervisor reads the same database, so if each
exported these, a ``sum()`` would count every session once per supervisor.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError
from django.db.models import Count, F, Max, Min, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ops.metrics import DATABASE_GAUGES
from sessions_app.models import SessionEvent, SupervisorPresence, WaSession
from sessions_app.states import Desired, State

logger = logging.getLogger(__name__)

#: States in which a QR round's code is on screen: the request is being served.
_QR_SHOWN = (State.QR_REQUIRED, State.PAIRING)


def oldest_pending_qr_request_age() -> float:
    """Seconds since the oldest QR round that an admin asked for and that shows no code
    yet (0 if none): supervisors that do not serve them are what this catches.

    The request's time is that of the session's latest intent event (the row has no
    column for it).
    """
    oldest = (
        WaSession.objects.filter(pair_request__gt=F("pair_served"), desired_state=Desired.RUNNING)
        .exclude(state__in=_QR_SHOWN)
        .annotate(asked=Max("events__at", filter=Q(events__kind=SessionEvent.Kind.INTENT)))
        .aggregate(oldest=Min("asked"))["oldest"]
    )
    if oldest is None:
        return 0.0
    return max(0.0, (timezone.now() - oldest).total_seconds())


def gauge(name: str) -> GaugeMetricFamily:
    """An empty family for one of :data:`ops.metrics.DATABASE_GAUGES`."""
    help_text, labels = DATABASE_GAUGES[name]
    return GaugeMetricFamily(name, help_text, labels=list(labels))


class DatabaseCollector(Collector):
    """Sessions by state and desired state, sessions waiting for an owner, the oldest
    pending QR request, supervisors alive, the outbound message backlog, the webhook
    backlog: eight small queries per scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = gauge("waconnect_database_up")
        try:
            families = list(self._families())
        except DatabaseError:
            logger.warning("metrics: could not read the database", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        by_state = dict(WaSession.objects.order_by().values_list("state").annotate(n=Count("id")))
        sessions = gauge("waconnect_sessions")
        for state in State:
            sessions.add_metric([state.value], by_state.get(state.value, 0))
        yield sessions

        by_desired = dict(
            WaSession.objects.order_by().values_list("desired_state").annotate(n=Count("id"))
        )
        desired = gauge("waconnect_sessions_desired")
        for value in Desired:
            desired.add_metric([value.value], by_desired.get(value.value, 0))
        yield desired

        unowned = gauge("waconnect_sessions_awaiting_owner")
        unowned.add_metric([], WaSession.objects.needing_owner().lease_free().count())
        yield unowned

        oldest = gauge("waconnect_qr_request_oldest_age_seconds")
        oldest.add_metric([], oldest_pending_qr_request_age())
        yield oldest

        alive = gauge("waconnect_supervisors_alive")
        alive.add_metric([], SupervisorPresence.objects.filter(expires_at__gt=Now()).count())
        yield alive

        yield from message_families()
        yield from webhook_families()


def message_families() -> Iterator[GaugeMetricFamily]:
    """The outbound message backlog by status and its oldest queued entry's age: one
    query, grouped by status, answered from the partial index ``message_out_unfinished``
    (only unfinished outbound rows are in it, however many sent ones the table keeps).

    The age runs from the row's ``created_at`` (the request), so a message put back in
    the queue after a refused ``not_connected`` send keeps its age.
    """
    from messaging.states import UNFINISHED, Status

    found = {status: (n, oldest) for status, n, oldest in message_backlog()}
    outbound = gauge("waconnect_messages_outbound")
    for status in UNFINISHED:
        outbound.add_metric([status.value], found.get(status.value, (0, None))[0])
    yield outbound
    oldest = found.get(Status.QUEUED.value, (0, None))[1]
    age = gauge("waconnect_messages_oldest_queued_age_seconds")
    age.add_metric(
        [], 0.0 if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
    )
    yield age


def message_backlog() -> QuerySet[Any, tuple[str, int, dt.datetime | None]]:
    """``(status, count, oldest created_at)`` of every unfinished outbound status that
    has rows: the condition of the partial index ``message_out_unfinished``, so that
    PostgreSQL reads the index only."""
    from messaging.models import Message
    from messaging.states import UNFINISHED, Direction

    return (
        Message.objects.filter(direction=Direction.OUT, status__in=UNFINISHED)
        .order_by()
        .values_list("status")
        .annotate(n=Count("*"), oldest=Min("created_at"))
    )


def webhook_families() -> Iterator[GaugeMetricFamily]:
    """The webhook backlog by status and its oldest entry's age: two queries."""
    from webhooks.models import Delivery

    unfinished = ("pending", "delivering")
    by_status = dict(
        Delivery.objects.filter(status__in=(*unfinished, "dead"))
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    backlog = gauge("waconnect_webhook_backlog")
    for status in (*unfinished, "dead"):
        backlog.add_metric([status], by_status.get(status, 0))
    yield backlog
    oldest = Delivery.objects.filter(status__in=unfinished).aggregate(at=Min("created_at"))["at"]
    age = gauge("waconnect_webhook_backlog_oldest_age_seconds")
    age.add_metric(
        [], 0.0 if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
    )
    yield age


@functools.cache
def web_registry() -> CollectorRegistry:
    """The registry of database-wide gauges, apart from the default (per-process) one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return registry
