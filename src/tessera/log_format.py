"""Logs a machine can read: one JSON object per line, each with the request it belongs to.

The gateway sets :data:`REQUEST_ID` when a request arrives (the same id as its
``x-request-id`` header); every task started while serving it inherits the value, so a log
line written anywhere on its behalf (a retry, an audit, a refusal) carries the id without
passing it around. Lines written outside a request have ``request_id: null``.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

REQUEST_ID: ContextVar[str | None] = ContextVar("tessera_request_id", default=None)

LogFormat = Literal["text", "json"]


class RequestIdFilter(logging.Filter):
    """Stamp each record with the request being served (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One line per record: time (UTC, ISO 8601 with milliseconds), level, logger,
    message, request id, and the traceback as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def json_handler(stream: object = None) -> logging.Handler:
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    return handler
