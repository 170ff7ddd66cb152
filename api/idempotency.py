"""``Idempotency-Key`` on POST: a repeated request gets the first answer (Stripe's rule).

Per token, a key remembers the first successful answer for 24 hours together with
a fingerprint of the request. The same key with the same request replays that
answer (``Idempotent-Replayed: true``) and does nothing else; the same key with
a different request is refused with 422 ``idempotency_key_reused``. A refused
request (validation, conflict) is not remembered: it may be retried with the key.
The key row is written in the same transaction as the work, so two concurrent
requests with one key cannot both do it (the unique constraint lets one win; the
other answers 409 ``idempotency_in_progress`` or, after the winner's commit,
replays).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from api.auth import Principal
from api.errors import ApiError
from api.models import IdempotencyKey

HEADER = "Idempotency-Key"
TTL = dt.timedelta(hours=24)
MAX_KEY_LENGTH = 255


def fingerprint(request: HttpRequest, body: Any) -> str:
    canonical = json.dumps(
        [request.method, request.path, body], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json(payload: dict[str, Any], status: int) -> HttpResponse:
    response = JsonResponse(payload, status=status)
    response["Cache-Control"] = "no-store"
    return response


def once(
    request: HttpRequest, body: Any, work: Callable[[], tuple[int, dict[str, Any]]]
) -> HttpResponse:
    """Run ``work`` (returning status and JSON body) at most once per idempotency key."""
    status, payload, replayed = remembered(request, body, work)
    response = _json(payload, status)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def remembered(
    request: HttpRequest, body: Any, work: Callable[[], tuple[int, dict[str, Any]]]
) -> tuple[int, dict[str, Any], bool]:
    """:func:`once` before it becomes a response: ``(status, payload, replayed)``.

    For views that answer with more than the first answer: the messages API
    replays the first *message*, as it is now (its status moved on since).
    """
    key = request.headers.get(HEADER)
    if key is None:
        status, payload = work()
        return status, payload, False
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiError(
            422,
            "validation_error",
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters.",
            errors=[{"field": HEADER, "in": "header", "message": "bad length"}],
        )
    principal: Principal = request.auth  # type: ignore[attr-defined]
    print_ = fingerprint(request, body)
    records = IdempotencyKey.objects.filter(token=principal.token, key=key)
    with transaction.atomic():
        record = records.first()
        if record is not None and record.created_at <= timezone.now() - TTL:
            record.delete()
            record = None
        if record is not None:
            if record.fingerprint != print_:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    f"This {HEADER} was used for a different request.",
                )
            return record.status_code, record.response, True
        status, payload = work()
        try:
            with transaction.atomic():
                IdempotencyKey.objects.create(
                    token=principal.token,
                    key=key,
                    fingerprint=print_,
                    status_code=status,
                    response=payload,
                )
        except IntegrityError:
            raise ApiError(
                409,
                "idempotency_in_progress",
                f"Another request with this {HEADER} is being processed; retry.",
            ) from None
    return status, payload, False
