"""Structured logs: one JSON object per line in production, a readable line in development.

Every record carries the current trace and span ids, so a log line leads to its trace and back. The
gateway never logs a header, a body or a secret: only the fields named in :data:`FIELDS`.
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

import msgspec
from opentelemetry import trace

from gateway.redact import MASK
from gateway.timestamps import utc_iso_milliseconds

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, MutableMapping

__all__ = ("FIELDS", "configure_logging", "direct_info")

FIELDS = (
    "kind",
    "job_id",
    "status",
    "outcome",
    "http_status",
    "duration_ms",
    "sink",
    "event_id",
    "attempt",
    "trace_id",
    "span_id",
)
"""Extra fields a request's log line may carry, in this order."""

_encode = msgspec.json.Encoder().encode
_BACKLOG_LINES = 10_000
_FLUSH_INTERVAL_SECONDS = 0.05


class TraceContextFilter(logging.Filter):
    """Adds the current trace and span ids (if any) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        _add_trace_ids(record.__dict__)
        return True


def _add_trace_ids(fields: MutableMapping[str, object]) -> None:
    """The current trace and span ids into ``fields``, when there is a trace context."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        fields["span_id"] = format(context.span_id, "016x")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return _json_line(
            record.created, record.levelname, record.name, record.getMessage(), record.__dict__, exception
        )


def _json_line(
    created: float, level: str, name: str, message: str, fields: Mapping[str, object], exception: str | None = None
) -> str:
    line: dict[str, object] = {
        "time": utc_iso_milliseconds(created),
        "level": level,
        "logger": name,
        "message": message,
    }
    for field in FIELDS:
        value = fields.get(field)
        if value is not None:
            line[field] = value
    if exception is not None:
        line["exception"] = exception
    return _encode(line).decode()


def direct_info(logger: logging.Logger) -> Callable[[str, dict[str, object]], None] | None:
    """A writer of ``logger``'s INFO lines straight to the JSON handler :func:`configure_logging`
    installed, or ``None`` when logging is set up any other way (a console format, tests, a handler of
    the logger's own): then log through ``logger`` as usual.

    For the one line every webhook writes: through ``logging`` (a record, the caller's frame, the logger
    and handler chains, a filter, a lock) it costs several times what this does (figures in
    docs/seams.md); the line is the same, trace ids included. Only logging's public API is used: the
    root logger's documented, read-only ``handlers``. Call it only when ``logger.isEnabledFor(INFO)``.
    """
    attached = logging.getLogger().handlers  # documented as read-only: only looked at
    handler = attached[0] if len(attached) == 1 else None
    if not isinstance(handler, BatchingHandler) or not isinstance(handler.formatter, JsonFormatter):
        return None
    if logger.handlers or not logger.propagate:
        return None
    name = logger.name

    def write(message: str, fields: dict[str, object]) -> None:
        _add_trace_ids(fields)
        handler.append(_json_line(time.time(), "INFO", name, message, fields))

    return write


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


def configure_logging(level: str, log_format: str, secrets: Collection[str] = ()) -> None:
    """Send every log record to stdout, as JSON lines or console lines, at ``level``; any of ``secrets``
    (the passwords of the configured URLs, see :func:`gateway.redact.url_secrets`) in a line, a library's
    included, is masked.

    Records are formatted on the caller's thread (so they carry its trace context) and written by a
    writer thread in batches: a stdout nobody drains (a stalled log shipper, a full pipe) never blocks
    the event loop, and a log line costs no thread wake-up of its own. Configuring again replaces that
    writer (the one replaced writes what it holds, then ends): one writer thread per process.
    """
    # The logging HOWTO's optimisations through its public flags: none of these fields is ever printed,
    # so they are not collected. (The caller's file and line are: the one webhook line goes around
    # logging, see direct_info, so no record of the hot path pays for that stack walk; docs/seams.md.)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingHandler(sys.stdout, secrets)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    handler.addFilter(TraceContextFilter())
    handler.start()
    atexit.register(handler.stop)
    root = logging.getLogger()
    for replaced in list(root.handlers):
        root.removeHandler(replaced)
        if isinstance(replaced, BatchingHandler):  # configured again: the one replaced writes what it holds, ends
            replaced.stop()
            atexit.unregister(replaced.stop)
    root.addHandler(handler)
    root.setLevel(level)


class BatchingHandler(logging.Handler):
    """Formats on the caller's thread; a writer thread writes what accumulated every few milliseconds.

    Lines wait at most :data:`_FLUSH_INTERVAL_SECONDS`. The backlog is bounded: when the output does not
    keep up, new lines are dropped, and that is said once on stderr (never silently). Each of ``secrets``,
    as written or as JSON escapes it, is replaced by ``***`` in every formatted line.
    """

    def __init__(self, stream: TextIO, secrets: Collection[str] = ()) -> None:
        super().__init__()
        self._stream = stream
        forms = {form for secret in secrets if secret for form in (secret, _encode(secret).decode()[1:-1])}
        self._secrets = sorted(forms, key=len, reverse=True)
        self._lines: collections.deque[str] = collections.deque()
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._write_batches, name="gateway-log-writer", daemon=True)
        self._warned = False

    def start(self) -> None:
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, MASK)
        self.append(line)

    def append(self, line: str) -> None:
        """Queue a formatted line for the writer thread (or drop it, said once, when the backlog is full)."""
        if len(self._lines) >= _BACKLOG_LINES:
            if not self._warned:
                self._warned = True
                sys.stderr.write("gateway: stdout is not keeping up; dropping log lines\n")
            return
        self._lines.append(line)

    def stop(self) -> None:
        """Write what is left and stop the writer (at exit). Not ``close()``: ``logging.config`` closes
        every handler it finds when a library configures logging, and this one must keep writing."""
        if self._writer.is_alive():
            self._stopping.set()
            self._writer.join(timeout=5)

    def _write_batches(self) -> None:
        while not self._stopping.wait(_FLUSH_INTERVAL_SECONDS):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        lines = self._lines
        if not lines:
            return
        batch = []
        while lines:
            batch.append(lines.popleft())
        try:
            self._stream.write("\n".join(batch) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed: nowhere left to say it
