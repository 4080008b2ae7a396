"""``gateway deliveries list|replay|enable``: the outbox from an operator's shell.

The commands work on the configured store directly (``DATABASE_URL``), not through the HTTP API: they
need no API token and work while the gateway is down. A running gateway's dispatcher picks replayed
rows up at its next poll (within a second).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from gateway import backends
from gateway.config import Settings
from gateway.outbox import DeliveryState, Outbox
from gateway.stores.base import StoreUnavailable
from gateway.telemetry.metrics import SINKS

__all__ = ("Commands", "add_parser", "run")

_encode = msgspec.json.Encoder().encode
_FORWARDING_OFF = (
    "gateway: forwarding is off, so no delivery is recorded: set GATEWAY_FORWARD_URL (your app's endpoint) "
    "or GATEWAY_NATS_URL (a NATS server with JetStream) and restart the gateway to forward every applied event"
)


class Commands(Protocol):
    """Where ``add_parser`` adds its command: what ``ArgumentParser.add_subparsers()`` answers."""

    def add_parser(
        self, name: str, *, help: str | None = ..., description: str | None = ...
    ) -> argparse.ArgumentParser: ...


def add_parser(commands: Commands) -> None:
    """The ``deliveries`` command and its subcommands."""
    deliveries = commands.add_parser(
        "deliveries",
        help="list, replay or re-enable event deliveries (the outbox)",
        description="Work on the delivery outbox in DATABASE_URL directly (no running gateway needed). "
        "See docs/forwarding.md.",
    )
    actions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="print deliveries, newest first, one JSON object a line",
        description="Print deliveries newest first, one JSON object a line (the body is the event as sent).",
    )
    listing.add_argument("--state", choices=[state.value for state in DeliveryState], help="only this state")
    listing.add_argument("--job-id", help="only this job's deliveries")
    listing.add_argument("--limit", type=_positive, default=50, help="how many at most (default 50)")
    replay = actions.add_parser(
        "replay",
        help="deliver events again, with their original event id and sequence",
        description="Put deliveries back to pending, due now: one by id, or every one in a state "
        "(--state dead). The event keeps its id (webhook-id), so the app's deduplication still works.",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_positive, help="the delivery's id (from `list`)")
    which.add_argument("--state", choices=["dead", "delivered"], help="replay every delivery in this state")
    replay.add_argument("--job-id", help="with --state: only this job's deliveries")
    enable = actions.add_parser(
        "enable",
        help="re-enable a sink disabled by a 410 Gone",
        description="Re-enable a sink whose endpoint answered 410 Gone; its pending deliveries go out again.",
    )
    enable.add_argument("--sink", choices=SINKS, default="http", help="the sink (default http)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    forwarding = settings.forward_url is not None or settings.nats_url is not None
    if args.action == "list" and not forwarding:
        print(_FORWARDING_OFF, file=sys.stderr)  # first: the store may not even exist yet
    try:
        return asyncio.run(_run(settings, args, forwarding=forwarding))
    except StoreUnavailable as error:
        print(f"gateway: the store does not answer ({error}); is DATABASE_URL right and migrated?", file=sys.stderr)
        return 1


async def _run(settings: Settings, args: argparse.Namespace, *, forwarding: bool) -> int:
    database = backends.job_database(settings, pool_size=1, timeout=max(settings.store_timeout_seconds, 10.0))
    await database.open(apply_migrations=False)
    try:
        return await _act(database.outbox, args, forwarding=forwarding)
    finally:
        await database.close()


async def _act(outbox: Outbox, args: argparse.Namespace, *, forwarding: bool) -> int:
    """Carry out ``args.action``; ``forwarding`` says whether a sink is configured (notes go to stderr, so
    the listing on stdout stays one JSON object a line; with forwarding off, :func:`run` said so already)."""
    now = datetime.now(UTC)
    if args.action == "list":
        state = DeliveryState(args.state) if args.state else None
        page = await outbox.list_deliveries(state=state, job_id=args.job_id, limit=args.limit, cursor=None)
        for listed in page.deliveries:
            print(_encode(listed).decode())
        if forwarding and not page.deliveries:
            print("gateway: no deliveries match", file=sys.stderr)
        return 0
    if args.action == "enable":
        was_disabled = await outbox.enable_sink(args.sink)
        print(f"gateway: {args.sink} sink {'re-enabled' if was_disabled else 'was not disabled'}")
        return 0
    if args.id is not None:
        if args.job_id is not None:
            print("gateway: --job-id goes with --state, not with an id", file=sys.stderr)
            return 2
        record = await outbox.replay(args.id, now)
        if record is None:
            print(f"gateway: no delivery with id {args.id}", file=sys.stderr)
            return 1
        print(f"gateway: delivery {record.id} ({record.event_id}) is {record.state}")
        return 0
    count = await outbox.replay_all(DeliveryState(args.state), args.job_id, now)
    print(f"gateway: {count} deliveries replayed")
    return 0


def _positive(value: str) -> int:
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)
