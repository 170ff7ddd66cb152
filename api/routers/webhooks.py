"""``/api/v1/webhooks``: endpoints (create, read, change, rotate, test, delete) and
deliveries (list, read, redeliver).

Every operation needs the ``webhooks:manage`` scope and the user's Django
permission on the webhooks app (see :mod:`api.scopes`). A token limited to some
sessions cannot manage webhooks: an endpoint hears about sessions the token may
not see. Views are thin: they call :mod:`webhooks.endpoints`, as the admin does.
A secret appears only in the answers that made it (create, rotate).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema
from ninja.responses import Status
from pydantic import Field

from api import scopes
from api.auth import Principal
from api.errors import ApiError, not_found
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, paginate
from api.routers.webhook_schemas import (
    CountOut,
    DeliveryOut,
    DeliveryStatus,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    EndpointWithSecret,
    RedeliverSinceIn,
    RotateIn,
    delivery_out,
    endpoint_out,
)
from sessions_app.models import WaSession
from webhooks import endpoints
from webhooks.models import Delivery, Endpoint

router = Router(tags=["webhooks"])


def _require(request: HttpRequest, perm: str) -> Principal:
    who: Principal = request.auth  # type: ignore[attr-defined]
    who.require(scopes.WEBHOOKS_MANAGE, perm)
    if who.session_ids is not None:
        raise ApiError(
            403, "session_limited", "A token limited to some sessions cannot manage webhooks."
        )
    return who


def _invalid(field: str, exc: ValidationError) -> ApiError:
    message = "; ".join(exc.messages)
    return ApiError(
        422,
        "validation_error",
        f"The request is not valid: {message}",
        errors=[{"field": field, "in": "body", "message": message, "type": "invalid"}],
    )


def _check_sessions(ids: list[int]) -> list[int]:
    unique = sorted(set(ids))
    if not unique:
        raise ApiError(
            422,
            "validation_error",
            "session_ids cannot be empty (use null for every session).",
            errors=[{"field": "session_ids", "in": "body", "message": "empty", "type": "invalid"}],
        )
    known = set(WaSession.objects.filter(pk__in=unique).values_list("pk", flat=True))
    missing = [i for i in unique if i not in known]
    if missing:
        raise ApiError(
            422,
            "validation_error",
            f"No such session(s): {', '.join(map(str, missing))}.",
            errors=[
                {"field": "session_ids", "in": "body", "message": "unknown", "type": "invalid"}
            ],
        )
    return unique


def _endpoint(endpoint_id: int) -> Endpoint:
    endpoint = Endpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise not_found("webhook endpoint")
    return endpoint


class ListFilters(Schema):
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


@router.get("/endpoints", response=Page[EndpointOut], summary="List webhook endpoints")
def list_endpoints(request: HttpRequest, filters: Query[ListFilters]) -> dict[str, Any]:
    _require(request, scopes.WEBHOOK_VIEW)
    rows, links = paginate(Endpoint.objects.all(), cursor=filters.cursor, limit=filters.limit)
    return {"data": [endpoint_out(e) for e in rows], **links}


@router.post("/endpoints", response={201: EndpointWithSecret}, summary="Create a webhook endpoint")
def create_endpoint(request: HttpRequest, body: EndpointIn) -> Status:
    """A new endpoint; the answer carries its signing secret, the only time it is shown."""
    who = _require(request, scopes.WEBHOOK_ADD)
    sessions = None if body.session_ids is None else _check_sessions(body.session_ids)
    try:
        endpoint = endpoints.create(
            url=body.url,
            description=body.description,
            event_types=body.event_types,
            session_ids=sessions,
            enabled=body.enabled,
            actor=who.actor,
        )
    except ValidationError as exc:
        raise _invalid("url", exc) from None
    return Status(201, endpoint_out(endpoint, with_secret=True))


@router.get("/endpoints/{endpoint_id}", response=EndpointOut, summary="Read a webhook endpoint")
def read_endpoint(request: HttpRequest, endpoint_id: int) -> dict[str, Any]:
    _require(request, scopes.WEBHOOK_VIEW)
    return endpoint_out(_endpoint(endpoint_id))


@router.patch("/endpoints/{endpoint_id}", response=EndpointOut, summary="Change a webhook endpoint")
def change_endpoint(request: HttpRequest, endpoint_id: int, body: EndpointPatch) -> dict[str, Any]:
    """Change what is given; ``enabled: true`` resumes its waiting deliveries."""
    _require(request, scopes.WEBHOOK_CHANGE)
    with transaction.atomic():
        endpoint = _endpoint(endpoint_id)
        if body.url is not None:
            try:
                endpoints.check_url(body.url)
            except ValidationError as exc:
                raise _invalid("url", exc) from None
            endpoint.url = body.url
        if body.description is not None:
            endpoint.description = body.description
        if body.event_types is not None:
            endpoint.event_types = endpoints.check_event_types(body.event_types)
        if body.all_sessions:
            endpoint.all_sessions = True
            endpoint.sessions.clear()
        elif body.session_ids is not None:
            endpoint.all_sessions = False
            endpoint.sessions.set(_check_sessions(body.session_ids))
        elif body.all_sessions is False and endpoint.all_sessions:
            raise ApiError(
                422,
                "validation_error",
                "all_sessions false needs session_ids.",
                errors=[
                    {"field": "session_ids", "in": "body", "message": "missing", "type": "missing"}
                ],
            )
        endpoint.save()
        if body.enabled is not None and body.enabled != endpoint.enabled:
            endpoints.set_enabled(endpoint, body.enabled)
        elif body.enabled:
            endpoints.set_enabled(endpoint, True)
    return endpoint_out(endpoint)


@router.delete(
    "/endpoints/{endpoint_id}", response={204: None}, summary="Delete a webhook endpoint"
)
def delete_endpoint(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """The endpoint and its deliveries (undelivered ones are dropped)."""
    _require(request, scopes.WEBHOOK_DELETE)
    _endpoint(endpoint_id).delete()
    return HttpResponse(status=204)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    response=EndpointWithSecret,
    summary="Rotate an endpoint's signing secret",
)
def rotate_secret(request: HttpRequest, endpoint_id: int, body: RotateIn) -> dict[str, Any]:
    """A new secret (in this answer only); the old one also signs for the overlap."""
    _require(request, scopes.WEBHOOK_CHANGE)
    endpoint = _endpoint(endpoint_id)
    endpoints.rotate(endpoint, body.overlap_seconds)
    return endpoint_out(endpoint, with_secret=True)


@router.post(
    "/endpoints/{endpoint_id}/test",
    response={202: DeliveryOut},
    summary="Send a test event to an endpoint",
)
def send_test(request: HttpRequest, endpoint_id: int) -> Status:
    """A ``webhook.test`` event for this endpoint only; its delivery (follow it by id)."""
    _require(request, scopes.WEBHOOK_CHANGE)
    delivery = endpoints.send_test(_endpoint(endpoint_id))
    return Status(202, delivery_out(delivery))


@router.post(
    "/endpoints/{endpoint_id}/redeliver",
    response={202: CountOut},
    summary="Redeliver an endpoint's dead deliveries since a time",
)
def redeliver_dead(request: HttpRequest, endpoint_id: int, body: RedeliverSinceIn) -> Status:
    _require(request, scopes.WEBHOOK_REDELIVER)
    count = endpoints.redeliver_dead(_endpoint(endpoint_id), body.since)
    return Status(202, {"count": count})


class DeliveryFilters(ListFilters):
    endpoint_id: int | None = None
    status: DeliveryStatus | None = None  # type: ignore[valid-type]
    session_id: int | None = None
    event_type: str | None = Field(None, max_length=40)


@router.get("/deliveries", response=Page[DeliveryOut], summary="List webhook deliveries")
def list_deliveries(request: HttpRequest, filters: Query[DeliveryFilters]) -> dict[str, Any]:
    """Newest first, filtered by endpoint, status, session and event type."""
    _require(request, scopes.WEBHOOK_VIEW)
    queryset = Delivery.objects.select_related("event")
    if filters.endpoint_id is not None:
        queryset = queryset.filter(endpoint_id=filters.endpoint_id)
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    if filters.session_id is not None:
        queryset = queryset.filter(session_id=filters.session_id)
    if filters.event_type:
        queryset = queryset.filter(event__type=filters.event_type)
    rows, links = paginate(queryset, cursor=filters.cursor, limit=filters.limit, newest_first=True)
    return {"data": [delivery_out(d) for d in rows], **links}


def _delivery(delivery_id: int) -> Delivery:
    found = Delivery.objects.select_related("event").filter(pk=delivery_id).first()
    if found is None:
        raise not_found("webhook delivery")
    return found


@router.get("/deliveries/{delivery_id}", response=DeliveryOut, summary="Read a delivery")
def read_delivery(request: HttpRequest, delivery_id: int) -> dict[str, Any]:
    _require(request, scopes.WEBHOOK_VIEW)
    return delivery_out(_delivery(delivery_id))


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    response={202: DeliveryOut},
    summary="Redeliver one delivery",
)
def redeliver(request: HttpRequest, delivery_id: int) -> Status:
    """Send it again (delivered or dead; 409 while it is in flight), same ``webhook-id``."""
    _require(request, scopes.WEBHOOK_REDELIVER)
    found = _delivery(delivery_id)
    if not endpoints.redeliver([found.pk]):
        raise ApiError(409, "in_flight", "The delivery is being attempted now; try again later.")
    return Status(202, delivery_out(_delivery(delivery_id)))
