"""One line per refused request: no traceback for what is the client's doing.

Django logs a 403 (``PermissionDenied``) and a bad Host or other
``SuspiciousOperation`` with the exception's whole traceback: forty lines that
say nothing about our code. ``ClientErrorFilter`` (on the ``django.request`` and
``django.security.*`` loggers, see ``LOGGING`` in settings) keeps the message,
drops the traceback of these exceptions only (a 500 keeps its traceback), logs a
suspicious request as a warning, and keeps every record on one line.
"""

from __future__ import annotations

import logging

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation

CLIENT_ERRORS = (PermissionDenied, SuspiciousOperation, BadRequest)


class ClientErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_ERRORS):
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        message = record.getMessage()
        if "\n" in message or "\r" in message:
            record.msg = message.replace("\r", "\\r").replace("\n", "\\n")
            record.args = ()
        return True
