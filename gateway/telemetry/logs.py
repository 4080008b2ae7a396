"""Structured logs: one JSON object per line in production, a readable line in development.

Every record carries the current trace and span ids, so a log line leads to its trace and back. The
gateway never logs a header, a body or a secret: only the fields named in :data:`FIELDS`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec
from opentelemetry import trace

__all__ = ("FIELDS", "configure_logging")

FIELDS = ("kind", "job_id", "status", "outcome", "http_status", "duration_ms", "trace_id", "span_id")
"""Extra fields a request's log line may carry, in this order."""

_encode = msgspec.json.Encoder().encode


class TraceContextFilter(logging.Filter):
    """Adds the current trace and span ids (if any) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extras = " ".join(
            f"{field}={record.__dict__[field]}" for field in FIELDS if record.__dict__.get(field) is not None
        )
        line = f"{moment} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record to stdout, as JSON lines or console lines, at ``level``."""
    # The logging HOWTO's optimisations: none of these fields is ever printed, so skip collecting them
    # (the caller's file and line alone costs a stack walk per record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
