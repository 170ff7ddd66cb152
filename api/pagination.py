"""Cursor pagination over a stable key (the row id), Stripe's shape.

A page is ``{data, has_more, next_cursor}``; the cursor is opaque to clients
(base64 of the last id seen and the direction) and stays valid while rows are
added or removed. ninja's own ``CursorPagination`` answers with URLs and
``previous``/``next`` instead of this shape, hence these few lines.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Generic, TypeVar

from django.db.models import Model, QuerySet
from ninja import Schema
from pydantic import Field

from api.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 100

T = TypeVar("T")
M = TypeVar("M", bound=Model)


class Page(Schema, Generic[T]):
    data: list[T]
    has_more: bool = Field(description="Whether a next page exists.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


def encode_cursor(last_id: int) -> str:
    raw = json.dumps({"after": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = value["after"]
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValueError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise ApiError(
            422,
            "invalid_cursor",
            "The cursor is not one this API gave out.",
            errors=[{"field": "cursor", "in": "query", "message": "invalid cursor"}],
        ) from None


def paginate(
    queryset: QuerySet[M], *, cursor: str | None, limit: int, newest_first: bool = False
) -> tuple[list[M], dict[str, Any]]:
    """One page of ``queryset`` ordered by id (ascending, or descending), and its links."""
    if newest_first:
        queryset = queryset.order_by("-pk")
        if cursor:
            queryset = queryset.filter(pk__lt=decode_cursor(cursor))
    else:
        queryset = queryset.order_by("pk")
        if cursor:
            queryset = queryset.filter(pk__gt=decode_cursor(cursor))
    rows = list(queryset[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].pk) if has_more and rows else None
    return rows, {"has_more": has_more, "next_cursor": next_cursor}
