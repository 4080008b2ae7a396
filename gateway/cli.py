"""The ``gateway`` command: ``serve`` runs the HTTP server, ``migrate`` brings the schema up to date,
``deliveries`` lists and replays the delivery outbox, ``send`` posts a test webhook to a running gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

import asyncpg

from gateway import __version__, backends
from gateway import cli_deliveries as delivery_commands
from gateway.config import ConfigError, PostgresDatabase, Settings, configured_urls
from gateway.redact import scrub, url_secrets
from gateway.send import add_send_parser, run_send
from gateway.telemetry.logs import configure_logging
from gateway.telemetry.tracing import check_tracing_env

if TYPE_CHECKING:
    from types import FrameType

    from gateway.wakeup import Wakeup

__all__ = ("main",)

_KEEP_ALIVE_SECONDS = 5
"""How long a connection may stay idle between requests (uvicorn's default), or before its first one."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        check_tracing_env()
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, url_secrets(*configured_urls(settings)))
    if args.command == "serve":
        return _serve(settings, args.host, args.port, args.workers)
    if args.command == "deliveries":
        return delivery_commands.run(settings, args)
    if args.command == "send":
        return run_send(args, settings)
    return _migrate(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Webhook ingest gateway for generation job-status webhooks. "
        "Configuration comes from environment variables (docs/reference/configuration.md).",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the HTTP server",
        description="Run the gateway's HTTP server (uvicorn with uvloop and httptools). "
        "Applies pending database migrations at start-up.",
    )
    serve.add_argument("--host", help="address to bind (default: $GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to bind, 1-65535 (default: $GATEWAY_PORT or 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes: only 1 (scale with replicas instead; see docs/distributed.md)",
    )

    commands.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description="Apply pending schema migrations to DATABASE_URL; safe to run repeatedly.",
    )
    delivery_commands.add_parser(commands)
    add_send_parser(commands)
    return parser


def _port(value: str) -> int:
    if not value.isdecimal() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value!r}")
    return int(value)


def _serve(settings: Settings, host: str | None, port: int | None, workers: int) -> int:
    if workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1:
        print(
            "gateway: --workers above 1 is refused: run one gateway process per replica (container, VM or "
            "systemd unit) and scale with replicas. Several workers in one process group would split "
            "/metrics between them (exemplars and store-read gauges cannot be merged) and, with SQLite, "
            "share one embedded store. See docs/distributed.md.",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    from gateway.http.limits import TransportBounds, bounded_protocol

    # uvicorn handles SIGTERM and SIGINT itself (graceful shutdown), then raises the signal again once it
    # is done. With the default action that kills the process on the spot, skipping atexit: the last log
    # lines (the batched writer's) would be lost. This handler makes it a normal exit instead.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_quietly)
    from gateway.http.app import create_app
    from gateway.startup import ReportingLifespan, browse_lines, port_taken

    bind_host = host or settings.host
    bind_port = port if port is not None else settings.port
    if port_taken(bind_host, bind_port):
        print(
            f"gateway: port {bind_port} on {bind_host} is already in use (another gateway or program listens there): "
            "stop it, or choose another port with --port or GATEWAY_PORT",
            file=sys.stderr,
        )
        return 1
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=bind_host,
        port=bind_port,
        loop="auto",
        # httptools, with bounds on request heads and bodies and JSON errors (gateway.http.limits)
        http=bounded_protocol(
            TransportBounds(
                body_timeout=settings.body_timeout_seconds,
                idle_timeout=_KEEP_ALIVE_SECONDS,
                max_body_bytes=settings.max_body_bytes,
                max_buffered_bytes=settings.max_buffered_bytes,
            )
        ),
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        log_level=settings.log_level.lower(),
        log_config=None,  # the gateway's own handler (JSON or console) formats uvicorn's records too
        access_log=False,
        proxy_headers=False,
        # SIGTERM: stop accepting, let requests in flight finish for this long, then cut them off (a webhook
        # cut off before its write is answered 503; one already writing finishes, see Pipeline), then the
        # lifespan shutdown closes the stores and flushes spans.
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    config.load()
    config.lifespan_class = ReportingLifespan  # a store that cannot be opened: one line, not a traceback
    wakeup: Wakeup = app.state["wakeup"]

    class Server(uvicorn.Server):
        """uvicorn's server, which also ends the live streams the moment it is told to stop.

        uvicorn waits for open connections before the app's shutdown hooks run, and a live stream never
        ends by itself: without this, SIGTERM would wait for every browser tab to go away.
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            with contextlib.suppress(RuntimeError):  # no loop running yet: no stream to end
                asyncio.get_running_loop().call_soon_threadsafe(wakeup.close)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print("\n".join(browse_lines(bind_host, bind_port)), file=sys.stderr, flush=True)
            # What exists once the app has started (modules, the app, its stores and telemetry) lives as
            # long as the process: frozen out of the cyclic collector's sight, a full collection no longer
            # walks it. Full collections of that heap were the p99 under load (docs/benchmark.md).
            gc.collect()
            gc.freeze()

    Server(config).run()
    return 0


def _exit_quietly(signum: int, _: FrameType | None) -> None:
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


def _migrate(settings: Settings) -> int:
    database = settings.database
    where = database.shown if isinstance(database, PostgresDatabase) else database.path
    try:
        applied = asyncio.run(backends.migrate(database))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        url = database.url if isinstance(database, PostgresDatabase) else None
        print(f"gateway: cannot migrate {where}: {type(error).__name__}: {scrub(str(error), url)}", file=sys.stderr)
        return 1
    if applied:
        print(f"gateway: applied migrations {', '.join(map(str, applied))} to {where}")
    else:
        print(f"gateway: {where} is up to date")
    return 0
