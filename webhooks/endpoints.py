"""What the admin and the API do to endpoints and deliveries: one place for both.

Every function is synchronous and writes in one transaction; the dispatchers are
rung after the commit (a redelivery, a test event, an endpoint enabled again).
A URL is checked by the SSRF guard here, when it is saved, and again by the
sender at every delivery.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction

from webhooks import delivery, outbox, ring, ssrf
from webhooks.conf import webhook_config
from webhooks.models import EVENT_TYPES, Delivery, Endpoint, Event

#: Types an endpoint may subscribe to (``webhook.test`` goes to one endpoint on request).
SUBSCRIBABLE = tuple(t for t in EVENT_TYPES if t != "webhook.test")


def check_url(url: str) -> None:
    """:class:`ValidationError` unless ``url`` may receive webhooks now.

    Checks the scheme and a literal address, then resolves the host name and
    refuses it if any address it has now is refused. A name that does not resolve
    (yet) is accepted: every delivery resolves and checks it again.
    """
    allow = webhook_config().allow_private
    try:
        host, port = ssrf.check_url(url, allow_private=allow)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return
        for *_, sockaddr in infos:
            ssrf.check_address(
                ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), allow_private=allow
            )
    except ssrf.Refused as exc:
        raise ValidationError(str(exc), code="url_refused") from None


def check_event_types(types: Iterable[str]) -> list[str]:
    """The types in a stable order; :class:`ValidationError` names an unknown one."""
    values = list(types)
    unknown = sorted(set(values) - set(SUBSCRIBABLE))
    if unknown:
        raise ValidationError(f"unknown event type(s): {', '.join(unknown)}", code="event_types")
    return [t for t in SUBSCRIBABLE if t in values]


def create(
    *,
    url: str,
    description: str = "",
    event_types: Iterable[str] = (),
    session_ids: list[int] | None = None,
    enabled: bool = True,
    actor: str = "",
) -> Endpoint:
    """A new endpoint (its secret in ``.secret``: show it once)."""
    check_url(url)
    endpoint = Endpoint(
        url=url,
        description=description,
        event_types=check_event_types(event_types),
        all_sessions=session_ids is None,
        enabled=enabled,
        created_by=actor[:200],
    )
    with transaction.atomic():
        endpoint.save()
        if session_ids is not None:
            endpoint.sessions.set(session_ids)
    return endpoint


def set_enabled(endpoint: Endpoint, enabled: bool) -> None:
    """Enable (its waiting deliveries resume, the failure clock restarts) or disable."""
    endpoint.enabled = enabled
    if enabled:
        endpoint.disabled_reason = ""
        endpoint.failing_since = None
    elif not endpoint.disabled_reason:
        endpoint.disabled_reason = "disabled by an operator"
    endpoint.save(update_fields=["enabled", "disabled_reason", "failing_since"])
    if enabled:
        transaction.on_commit(ring.ring_dispatchers)


def rotate(endpoint: Endpoint, overlap: float | None = None) -> str:
    """A new secret (returned: show it once); the old one signs too for ``overlap`` s."""
    if overlap is None:
        overlap = webhook_config().rotation_overlap
    return endpoint.rotate_secret(max(0.0, overlap))


def send_test(endpoint: Endpoint) -> Delivery:
    """A ``webhook.test`` event for this endpoint; its delivery."""
    with transaction.atomic():
        event: Event = outbox.emit_test(endpoint)
        return Delivery.objects.get(event=event, endpoint=endpoint)


def redeliver(delivery_ids: list[int]) -> int:
    """Send these deliveries again (not those in flight); how many will be."""
    with transaction.atomic():
        count = delivery.redeliver(delivery_ids)
        if count:
            transaction.on_commit(ring.ring_dispatchers)
    return count


def redeliver_dead(endpoint: Endpoint, since: dt.datetime) -> int:
    """Send again every dead delivery of ``endpoint`` created since ``since``."""
    with transaction.atomic():
        count = delivery.redeliver_dead(endpoint.pk, since)
        if count:
            transaction.on_commit(ring.ring_dispatchers)
    return count
