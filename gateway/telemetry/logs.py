"""Structured logs: one JSON object per line in production, a readable line in development.

Every record carries the current trace and span ids, so a log line leads to its trace and back. The
gateway never logs a header, a body or a secret: only the fields named in :data:`FIELDS`.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime

import msgspec
from opentelemetry import trace

__all__ = ("FIELDS", "configure_logging")

FIELDS = ("kind", "job_id", "status", "outcome", "http_status", "duration_ms", "trace_id", "span_id")
"""Extra fields a request's log line may carry, in this order."""

_encode = msgspec.json.Encoder().encode
_QUEUE_SIZE = 10_000


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
    """Send every log record to stdout, as JSON lines or console lines, at ``level``.

    Records are formatted on the caller's thread (so they carry its trace context) and written by a
    listener thread: a stdout nobody drains (a stalled log shipper, a full pipe) never blocks the event
    loop. The queue is bounded; past it, lines are dropped and the drop is said once on stderr.
    """
    # The logging HOWTO's optimisations: none of these fields is ever printed, so skip collecting them
    # (the caller's file and line alone costs a stack walk per record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    output = logging.StreamHandler(sys.stdout)
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=_QUEUE_SIZE)
    handler = _DroppingQueueHandler(records)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    handler.addFilter(TraceContextFilter())
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands formatted records to the writer thread; drops them when it is too far behind."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self._warned = False

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            if not self._warned:
                self._warned = True
                sys.stderr.write("gateway: stdout is not being read; dropping log lines\n")
