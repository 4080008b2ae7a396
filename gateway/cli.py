"""The ``gateway`` command: ``serve`` runs the HTTP server, ``migrate`` brings the schema up to date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config import ConfigError, Settings
from gateway.telemetry.logs import configure_logging
from gateway.telemetry.tracing import check_tracing_env

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        check_tracing_env()
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        return _serve(settings, args.host, args.port, args.workers)
    return _migrate(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Webhook ingest gateway for generation job-status webhooks. "
        "Configuration comes from environment variables (see README: Configuration).",
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
        help="worker processes (default 1; embedded stores allow only 1)",
    )

    commands.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description="Apply pending schema migrations to DATABASE_URL; safe to run repeatedly.",
    )
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
            "gateway: --workers above 1 is refused: the embedded stores (SQLite job store, in-memory "
            "idempotency store) belong to one process. Run one worker per process until the shared "
            "Redis/PostgreSQL stores exist.",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    if not settings.authenticates:
        print(
            "gateway: WARNING: no WEBHOOK_SECRET or WEBHOOK_SIGNING_KEYS set: accepting unauthenticated "
            "webhooks (development mode only)",
            file=sys.stderr,
        )
    uvicorn.run(
        "gateway.http.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        loop="auto",
        http="auto",
        log_level=settings.log_level.lower(),
        log_config=None,  # the gateway's own handler (JSON or console) formats uvicorn's records too
        access_log=False,
        proxy_headers=False,
    )
    return 0


def _migrate(settings: Settings) -> int:
    from gateway.stores.sqlite import migrate

    applied = migrate(settings.database.path)
    if applied:
        print(f"gateway: applied migrations {', '.join(map(str, applied))} to {settings.database.path}")
    else:
        print(f"gateway: {settings.database.path} is up to date")
    return 0
