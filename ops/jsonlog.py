"""``LOG_FORMAT=json``: one JSON object per line, for log shippers.

The fields are a fixed list — time, level, logger, message, and the context the
plain format shows as ``[session=… owner=…]`` (:mod:`sessions_app.logcontext`) —
never every attribute a caller passed in ``extra``, so nothing reaches a shipper
that would not reach the console. The same rule holds as for the plain format:
QR payloads, pairing codes and credentials are never logged (the callers see to
that; tests check both formats). Written with the standard library rather than
python-json-logger, whose design is the opposite (every extra attribute, minus an
exclusion list).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

#: Context attributes copied from the record when set (the plain format's too).
CONTEXT_FIELDS = ("session", "owner")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False)
