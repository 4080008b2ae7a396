"""What ``gateway serve`` tells an operator when it cannot start, and where to look once it has.

A store that cannot be opened or a port already taken is an operator's mistake to fix, not a bug: it is
said in one line on stderr (naming the URL without its password, or the path, and what to check) and the
process exits non-zero. The traceback behind it is logged only with ``GATEWAY_LOG_LEVEL=debug``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from uvicorn.lifespan.on import LifespanOn

from gateway.config import PostgresDatabase

if TYPE_CHECKING:
    from uvicorn.lifespan.on import LifespanSendMessage

    from gateway.config import Database

__all__ = ("ReportingLifespan", "StartupFailure", "browse_lines", "job_store_failure", "port_taken")


class StartupFailure(Exception):
    """The app cannot start for a reason the operator fixes; ``str()`` is one line saying which and how."""


def job_store_failure(database: Database, cause: BaseException | None) -> StartupFailure:
    """The failure for a job store that did not open; ``cause`` is what the driver raised."""
    reason = _reason(cause)
    if isinstance(database, PostgresDatabase):
        return StartupFailure(
            f"cannot open the job store at {database.shown} ({reason}). Check DATABASE_URL: that PostgreSQL "
            "runs and listens at that host and port, that the database exists (createdb) and that the user "
            "and password are right"
        )
    return StartupFailure(
        f"cannot open the job store at {os.path.abspath(database.path)} ({reason}). Check DATABASE_URL: "
        "the path must name a file (not a directory) in a directory the gateway may write to"
    )


def _reason(cause: BaseException | None) -> str:
    if cause is None:
        return "no reason given"
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__


def port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound now because something listens there (bound as asyncio binds
    it, with ``SO_REUSEADDR``). A host that does not resolve is left for the server to report."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def browse_lines(host: str, port: int) -> list[str]:
    """Where to look once the server listens: the status page, the API docs and the metrics."""
    # Bound to every interface: this machine's loopback address is one that answers.
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(  # noqa: S104 (a name, not a bind)
        host, f"[{host}]" if ":" in host else host
    )
    base = f"http://{shown}:{port}"
    return [
        f"gateway: listening on {base}",
        f"  status page  {base}/status",
        f"  API docs     {base}/schema",
        f"  metrics      {base}/metrics",
    ]


class ReportingLifespan(LifespanOn):
    """uvicorn's lifespan handler, except that an app failing to start with a :class:`StartupFailure`
    prints its line on stderr instead of having its traceback logged (which ``GATEWAY_LOG_LEVEL=debug``
    keeps). uvicorn then exits with its start-up failure status (3)."""

    async def send(self, message: LifespanSendMessage) -> None:
        if message["type"] == "lifespan.startup.failed":
            # Litestar sends this from the ``except`` block of the exception that stopped the start-up.
            failure = _startup_failure(sys.exc_info()[1])
            if failure is not None:
                print(f"gateway: {failure}", file=sys.stderr, flush=True)
                if not logging.getLogger("gateway").isEnabledFor(logging.DEBUG):
                    message = {"type": "lifespan.startup.failed", "message": ""}
        await super().send(message)


def _startup_failure(error: BaseException | None) -> StartupFailure | None:
    """The :class:`StartupFailure` in ``error``, its exception groups or its causes, if any."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, StartupFailure):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend((current.__cause__, current.__context__))
    return None
