"""Distributed mode for real: two ``gateway serve`` processes sharing one Redis and one PostgreSQL, over
loopback. Every event is applied exactly once under concurrent, shuffled, duplicated delivery; and when
Redis, then PostgreSQL, stop and come back mid-traffic, nothing acknowledged is lost and nothing doubles."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SECRET, LiveServer, PostgresServer, RedisServer, completed_image, progress
from tests.rawhttp import IMAGE, post_webhook

STATUSES = ("pending", "initializing", "generating", "saving", "completed")


def webhooks(jobs: int, prefix: str) -> list[dict[str, Any]]:
    """Five events per job, one per status, a minute apart: ``jobs * 5`` distinct webhooks."""
    events = []
    for number in range(jobs):
        job_id = f"{prefix}-{number}"
        for minute, status in enumerate(STATUSES):
            timestamp = f"2025-10-21T16:{minute:02d}:00Z"
            events.append(
                completed_image(job_id, timestamp)
                if status == "completed"
                else progress(status, job_id=job_id, timestamp=timestamp)
            )
    return events


def outcomes(servers: list[LiveServer]) -> Counter[str]:
    """``gateway_webhook_requests_total`` by outcome, summed over the servers (as Prometheus would)."""
    total: Counter[str] = Counter()
    for server in servers:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            if family.name == "gateway_webhook_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        total[sample.labels["outcome"]] += int(sample.value)
    return total


def gateways(tmp_path: Path, count: int, env: dict[str, str]) -> list[LiveServer]:
    servers = []
    for number in range(count):
        directory = tmp_path / f"gateway-{number}"
        directory.mkdir()
        servers.append(LiveServer(directory, {"WEBHOOK_SECRET": SECRET, **env}))
    return servers


async def history(database_url: str) -> dict[str, list[tuple[str, str, int]]]:
    """Every job's recorded events, straight from PostgreSQL: (status, outcome, id) in id order."""
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch("SELECT job_id, status, outcome, id FROM job_events ORDER BY id")
    finally:
        await db.close()
    jobs: dict[str, list[tuple[str, str, int]]] = {}
    for row in rows:
        jobs.setdefault(row["job_id"], []).append((row["status"], row["outcome"], row["id"]))
    return jobs


async def test_two_processes_apply_200_concurrent_copies_of_50_webhooks_exactly_once(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str, stopping: list[LiveServer]
) -> None:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "GATEWAY_REDIS_KEY_PREFIX": redis_prefix}
    stopping.extend(gateways(tmp_path, 2, env))
    events = webhooks(10, "once")
    copies = [event for event in events for _ in range(200)]
    random.Random(50).shuffle(copies)
    codes: Counter[int] = Counter()
    answers: Counter[str] = Counter()
    queue = [json.dumps(payload).encode() for payload in copies]

    async def worker(server: LiveServer) -> None:
        """One keep-alive connection sending one webhook after another; 200 of them keep 200 in flight.
        Plain HTTP/1.1 on a socket: an HTTP client library would spend more CPU than the two servers."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            while queue:
                body = queue.pop()
                for _ in range(20):  # a sender retries a 503 (a store busy past its timeout)
                    answer = await post_webhook(reader, writer, body)
                    code = answer.status
                    codes[code] += 1
                    if code != 503:
                        break
                    await asyncio.sleep(0.2)
                assert code == 200, answer.body
                answers[json.loads(answer.body)["outcome"]] += 1
        finally:
            writer.close()

    started = time.monotonic()
    async with asyncio.timeout(100):
        await asyncio.gather(*(worker(stopping[number % 2]) for number in range(200)))
    elapsed = time.monotonic() - started

    recorded = await history(database_url)
    counted = outcomes(stopping)
    print(
        f"{len(copies)} webhooks ({len(events)} distinct) in {elapsed:.1f} s over 2 processes: "
        f"answers {dict(answers)}, "
        f"codes {dict(codes)}; metrics {dict(counted)}; {sum(map(len, recorded.values()))} events in PostgreSQL"
    )
    assert set(codes) <= {200, 503}
    assert sum(len(events) for events in recorded.values()) == len(events)  # every event once, none twice
    assert answers["applied"] + answers["stale"] == len(events)
    assert answers["duplicate"] == len(copies) - len(events)
    # History and metrics agree, across both processes.
    in_history = Counter(outcome for events in recorded.values() for _, outcome, _ in events)
    assert counted["applied"] == in_history["applied"] == answers["applied"]
    assert counted["stale"] == in_history["stale"] == answers["stale"]
    assert counted["duplicate"] == answers["duplicate"]
    for job_id, entries in recorded.items():
        applied = [STATUSES.index(status) for status, outcome, _ in entries if outcome == "applied"]
        assert applied == sorted(applied), f"{job_id} moved backwards: {entries}"
        final = httpx.get(f"{stopping[0].url}/api/jobs/{job_id}", timeout=5).json()
        assert final["status"] == "completed"


async def test_redis_then_postgresql_restarted_mid_traffic_lose_nothing_and_double_nothing(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer, stopping: list[LiveServer]
) -> None:
    env = {
        "DATABASE_URL": postgres_server.url,
        "REDIS_URL": redis_server.url,
        "GATEWAY_STORE_TIMEOUT_SECONDS": "0.5",
    }
    stopping.extend(gateways(tmp_path, 2, env))
    events = webhooks(150, "fault")
    random.Random(7).shuffle(events)
    first: dict[int, int] = {}
    readiness: Counter[str] = Counter()
    async with httpx.AsyncClient(
        headers={"X-Webhook-Secret": SECRET},
        timeout=10,
        # Idle connections are dropped well before the gateway's keep-alive timeout (uvicorn's 5 s, httpx's
        # default too): the retries come after seconds of outages, and a connection the server closes just
        # as a request goes out on it is a ReadError, a client's race rather than the gateway's answer.
        limits=httpx.Limits(max_connections=32, keepalive_expiry=2),
    ) as client:

        async def send(number: int) -> int:
            answer = await client.post(stopping[number % 2].url + IMAGE, json=events[number])
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) >= 1
            return answer.status_code

        async def traffic() -> None:
            per_second = 150
            start = time.monotonic()

            async def timed(number: int) -> None:
                await asyncio.sleep(max(0.0, start + number / per_second - time.monotonic()))
                first[number] = await send(number)

            await asyncio.gather(*(timed(number) for number in range(len(events))))

        async def watch_readiness(done: asyncio.Event) -> None:
            while not done.is_set():
                for server in stopping:
                    stores = (await client.get(f"{server.url}/readyz")).json()["stores"]
                    readiness.update(name for name, state in stores.items() if state != "ok")
                await asyncio.sleep(0.1)

        async def faults() -> None:
            await asyncio.sleep(0.8)
            await asyncio.to_thread(redis_server.stop)
            await asyncio.sleep(0.8)
            await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(0.8)
            await asyncio.to_thread(postgres_server.stop)
            await asyncio.sleep(0.8)
            await asyncio.to_thread(postgres_server.start)

        done = asyncio.Event()
        async with asyncio.timeout(60):
            watcher = asyncio.create_task(watch_readiness(done))
            await asyncio.gather(traffic(), faults())
            done.set()
            await watcher

        codes = Counter(first.values())
        acknowledged = {events[number]["job_id"] + events[number]["status"] for number, c in first.items() if c == 200}
        recorded = await history(postgres_server.url)
        in_database = {job_id + status for job_id, entries in recorded.items() for status, _, _ in entries}
        lost = acknowledged - in_database
        assert set(codes) <= {200, 503}, codes  # never a 500, never a dropped connection
        assert not lost, f"acknowledged but not recorded: {sorted(lost)[:5]}"

        # The sender retries every 503 (after Retry-After; shortened here) until it gets a 200.
        pending = [number for number, code in first.items() if code == 503]
        retried = len(pending)
        for _ in range(40):
            if not pending:
                break
            answers = await asyncio.gather(*(send(number) for number in pending))
            pending = [number for number, code in zip(pending, answers, strict=True) if code != 200]
            await asyncio.sleep(0.25)
        assert not pending, f"{len(pending)} webhooks still refused after the stores came back"

    recorded = await history(postgres_server.url)
    counts = Counter((job_id, status) for job_id, entries in recorded.items() for status, _, _ in entries)
    print(
        f"{len(events)} webhooks: first answers {dict(codes)}, {retried} retried until 200; readiness saw "
        f"{dict(readiness)} unavailable; {sum(counts.values())} events in PostgreSQL"
    )
    assert codes[503] > 0, "the outages refused nothing: this run tested nothing"
    assert readiness["idempotency"] > 0
    assert readiness["jobs"] > 0
    assert len(counts) == len(events)  # zero lost
    assert set(counts.values()) == {1}  # zero doubled
    for entries in recorded.values():
        applied = [STATUSES.index(status) for status, outcome, _ in entries if outcome == "applied"]
        assert applied == sorted(applied)
    for server in stopping:
        assert (await asyncio.to_thread(httpx.get, f"{server.url}/readyz", timeout=5)).status_code == 200


def test_a_replica_started_before_its_database_answers_503_until_it_does(
    tmp_path: Path, redis_url: str, redis_prefix: str, stopping: list[LiveServer]
) -> None:
    """With GATEWAY_MIGRATE_ON_START=false a replica starts whatever PostgreSQL's state; until the database
    answers, webhooks get 503 with Retry-After (never a 500) and /readyz names the job store."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/gateway",
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
        "GATEWAY_MIGRATE_ON_START": "false",
        "GATEWAY_STORE_TIMEOUT_SECONDS": "0.5",
    }
    stopping.extend(gateways(tmp_path, 1, env))
    server = stopping[0]
    answer = httpx.post(server.url + IMAGE, json=completed_image("early"), headers={"X-Webhook-Secret": SECRET})
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) >= 1
    ready = httpx.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["stores"] == {"jobs": "unavailable", "idempotency": "ok"}
