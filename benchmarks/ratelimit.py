"""What the rate limiter costs per request: stage 1 with the memory and the Redis store, against a no-op.

Each row times ``RateLimiter.admit`` as the pipeline calls it (sender lookup, the store's decision, the
headers, the metrics), over many senders, in one process and one run so the figures compare:

- ``baseline``: an ``admit`` that does nothing, the cost of the loop and the await themselves;
- ``allowed`` / ``limited``: a generous rate (every request admitted) or a spent one (every request
  refused, which raises the 429 ``WebhookRefused``);
- ``sequential``: one decision at a time, i.e. the latency one request pays; ``concurrent``: many in
  flight at once, as under load (Redis round trips overlap).

    python benchmarks/ratelimit.py                 # memory and the Redis at $TEST_REDIS_URL or 127.0.0.1
    python benchmarks/ratelimit.py --redis-url none --decisions 100000
    python benchmarks/ratelimit.py --quick         # a smoke run (the test suite runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.answers import WebhookRefused
from gateway.config import Rate
from gateway.ingest.ratelimit import RateLimiter
from gateway.stores.base import RateLimitStore
from gateway.stores.memory import MemoryRateLimitStore
from gateway.stores.redis import RedisRateLimitStore
from gateway.telemetry.metrics import Metrics, ModelLabels

GENEROUS = Rate(count=1_000_000, window_seconds=1, burst=1_000_000)
SPENT = Rate(count=1, window_seconds=3600, burst=1)
HEADERS: Mapping[str, str] = {"content-type": "application/json", "content-length": "512"}

Admit = Callable[[str, Mapping[str, str]], Awaitable[Mapping[str, str]]]


@dataclass(frozen=True)
class Row:
    limiter: str
    path: str
    mode: str
    decisions: int
    seconds: float

    @property
    def micros(self) -> float:
        return self.seconds / self.decisions * 1e6


async def _noop(peer: str, headers: Mapping[str, str]) -> Mapping[str, str]:
    return HEADERS


async def _time(admit: Admit, peers: list[str], decisions: int, concurrency: int) -> float:
    """Wall time of ``decisions`` calls, ``concurrency`` at a time, a refusal counting as a decision."""

    async def worker(offset: int, count: int) -> None:
        for number in range(offset, offset + count):
            try:  # noqa: SIM105 (contextlib.suppress would add its own cost to every call)
                await admit(peers[number % len(peers)], HEADERS)
            except WebhookRefused:
                pass

    share = decisions // concurrency
    started = time.perf_counter()
    await asyncio.gather(*(worker(index * share, share) for index in range(concurrency)))
    return time.perf_counter() - started


def _limiter(rate: Rate, store: RateLimitStore) -> RateLimiter:
    # Real metrics on a throwaway registry: their cost is part of the stage's.
    metrics = Metrics(CollectorRegistry(), kinds=["image"], models=ModelLabels())
    return RateLimiter(rate=rate, store=store, metrics=metrics)


async def _measure(
    name: str, make_store: Callable[[], RateLimitStore], peers: list[str], decisions: int, concurrency: int
) -> list[Row]:
    rows = []
    modes = [("sequential", 1), ("concurrent", concurrency)] if concurrency > 1 else [("sequential", 1)]
    for path, rate in (("allowed", GENEROUS), ("limited", SPENT)):
        for mode, in_flight in modes:
            store = make_store()
            limiter = _limiter(rate, store)
            await _time(limiter.admit, peers, min(decisions, 1000), in_flight)  # warm up; spends SPENT budgets
            seconds = await _time(limiter.admit, peers, decisions, in_flight)
            rows.append(Row(name, path, mode, decisions - decisions % in_flight, seconds))
            await store.close()
    return rows


async def _redis_answers(url: str) -> str | None:
    store = RedisRateLimitStore(url, timeout=1.0)
    try:
        await store.ping()
    except Exception as error:
        return f"{error.__cause__ or error}"
    finally:
        await store.close()
    return None


async def run(args: argparse.Namespace) -> list[Row]:
    peers = [f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" for n in range(args.senders)]
    baseline = await _time(_noop, peers, args.decisions, 1)
    rows = [Row("none", "baseline", "sequential", args.decisions, baseline)]
    rows += await _measure("memory", MemoryRateLimitStore, peers, args.decisions, 1)
    if args.redis_url != "none":
        problem = await _redis_answers(args.redis_url)
        if problem is not None:
            print(f"redis: skipped, {args.redis_url} does not answer ({problem})", file=sys.stderr)
            if args.require_redis:
                raise SystemExit(1)
        else:
            prefix = f"bench:{uuid.uuid4().hex[:8]}:"
            decisions = max(args.concurrency, args.decisions // args.redis_divisor)
            rows += await _measure(
                "redis",
                lambda: RedisRateLimitStore(args.redis_url, prefix=prefix),
                peers,
                decisions,
                args.concurrency,
            )
    return rows


def report(rows: list[Row]) -> str:
    baseline = rows[0].micros
    header = ("limiter", "path", "mode", "decisions", "us/decision", "added us", "x baseline")
    lines = ["{:<8} {:<9} {:<11} {:>9} {:>12} {:>9} {:>11}".format(*header)]
    for row in rows:
        lines.append(
            f"{row.limiter:<8} {row.path:<9} {row.mode:<11} {row.decisions:>9} {row.micros:>12.2f} "
            f"{row.micros - baseline:>9.2f} {row.micros / baseline:>11.1f}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Per-decision cost of the rate limiter (stage 1) with the memory and the Redis store, "
        "against a no-op baseline measured in the same run.",
        epilog="Loopback only. Figures are per call of RateLimiter.admit, headers and metrics included.",
    )
    parser.add_argument("--decisions", type=int, default=50_000, help="decisions per memory row (default 50000)")
    parser.add_argument(
        "--redis-divisor",
        type=int,
        default=10,
        help="Redis rows time decisions/DIVISOR calls, being slower (default 10)",
    )
    parser.add_argument("--senders", type=int, default=1000, help="distinct sender addresses cycled (default 1000)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight for 'concurrent' rows")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis to measure against, 'none' to skip (default $TEST_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument("--require-redis", action="store_true", help="fail instead of skipping an absent Redis")
    parser.add_argument("--quick", action="store_true", help="a few hundred decisions: a smoke run, not a measurement")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (the server's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.decisions, args.redis_divisor, args.concurrency = 400, 2, 8
    if args.loop == "uvloop":
        import uvloop

        rows = uvloop.run(run(args))
    else:
        rows = asyncio.run(run(args))
    print(f"rate limiter cost per decision ({args.loop}, {args.senders} senders)")
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
