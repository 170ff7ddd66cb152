"""Log-record context: which session, which supervisor.

Code logs with ``extra={"session": pk}`` (or ``{"owner": ...}``); this filter turns
that into one ``%(context)s`` field and gives records without it an empty one, so
a single format string serves every logger.
"""

from __future__ import annotations

import logging


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        session = getattr(record, "session", None)
        if session is not None:
            parts.append(f"session={session}")
        owner = getattr(record, "owner", None)
        if owner is not None:
            parts.append(f"owner={owner}")
        record.context = " ".join(parts) or "-"
        return True
