"""A profile of the gateway's hot path (``--profile``): where a webhook's CPU time goes.

Builds the app as ``gateway serve`` does (SQLite in a temporary directory, telemetry as shipped) and
drives unique completed-image webhooks straight into it over ASGI, ten at a time, under ``cProfile``
timing the event loop thread's CPU (the SQLite writer thread's share shows as the total's remainder);
no HTTP server or socket, so the figures are the app's own. Prints the heaviest functions by own
time and by cumulative time and saves the raw profile for ``snakeviz``/``pstats``.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

__all__ = ("profile_hot_path", "run_hot_path")

_SECRET = "bench-secret"
_CONCURRENCY = 10


def profile_hot_path(requests: int, output: Path) -> None:
    """Profile ``requests`` webhooks; print the top functions and save the profile to ``output``."""
    profiler = cProfile.Profile(time.thread_time)  # the event loop's own CPU, not time spent waiting
    started = 0.0

    def begin() -> None:
        nonlocal started
        started = time.process_time()
        profiler.enable()

    def end() -> None:
        profiler.disable()

    run_hot_path(requests, begin, end)
    cpu_us = (time.process_time() - started) / requests * 1e6
    print(
        f"profile: {requests} webhooks, {cpu_us:.0f} us of process CPU each under the profiler "
        "(all threads; cProfile roughly doubles the loop's share: compare shares, not totals)"
    )
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    stats.dump_stats(output)
    print(f"saved {output} (open with: python -m pstats {output})")


def run_hot_path(
    requests: int,
    begin: Callable[[], None],
    end: Callable[[], None],
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run,
) -> None:
    """Build the app as ``gateway serve`` does (SQLite in a temporary directory, telemetry as shipped), warm it
    up, then drive ``requests`` unique webhooks into it over ASGI, ten at a time, between ``begin()`` and
    ``end()``, on the event loop ``run`` starts. Raises ``RuntimeError`` if any is not answered 200."""
    with tempfile.TemporaryDirectory() as directory:
        os.environ.update(WEBHOOK_SECRET=_SECRET, DATABASE_URL=f"sqlite:///{directory}/profile.db")
        from gateway.config import Settings
        from gateway.http.app import create_app

        app = create_app(Settings.from_env())
        run(_drive(app, requests, begin, end))


async def _drive(app: Any, requests: int, begin: Callable[[], None], end: Callable[[], None]) -> None:
    async with app.lifespan():  # opens the backends, and closes them however the run ends
        for n in range(200):  # warm-up: caches, label children, the SQLite file
            await _post(app, f"warmup-{n}")
        prefix = uuid.uuid4().hex[:8]
        begin()
        try:
            await asyncio.gather(
                *(_worker(app, f"{prefix}-{w}", requests // _CONCURRENCY) for w in range(_CONCURRENCY))
            )
        finally:
            end()


async def _worker(app: Any, prefix: str, count: int) -> None:
    for n in range(count):
        status = await _post(app, f"{prefix}-{n}")
        if status != 200:
            raise RuntimeError(f"the gateway answered {status}")


async def _post(app: Any, job_id: str) -> int:
    body = msgspec.json.encode(
        {
            "job_id": f"profile-{job_id}",
            "status": "completed",
            "timestamp": "2026-11-26T10:00:00Z",
            "data": {
                "images": [
                    {
                        "url": "http://localhost:9006/generated_images/x/image_1.png",
                        "format": "PNG",
                        "dimensions": "1024x1024",
                        "size_bytes": 2048576,
                    }
                ],
                "metadata": {"model_name": "gemini-2.0-flash-exp", "generation_time_seconds": 12.5},
            },
        }
    )
    path = b"/api/webhooks/image-completion"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"x-webhook-secret", _SECRET.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the body was read whole; nothing else arrives
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]
