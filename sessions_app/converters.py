"""URL converters shared by the pages and the sockets."""

from __future__ import annotations

from django.urls import register_converter


class SessionIdConverter:
    """A session id: 1–18 digits, so it always fits a 64-bit primary key.

    Longer numbers do not match the route (404 on a page, close 4404 on a socket)
    instead of reaching the database or a channel-layer group name.
    """

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(int(value))


register_converter(SessionIdConverter, "session_id")
