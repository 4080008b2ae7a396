"""Soak: a bounded-time load on a live ``gateway serve`` with many distinct jobs, senders and models, sampling
what could grow without bound, and a report of each figure's start, end, peak and slope.

    python -m benchmarks.soak --minutes 5                       # SQLite + memory stores
    python -m benchmarks.soak --minutes 5 --database-url postgresql://postgres@127.0.0.1/test \\
        --redis-url redis://127.0.0.1:6379/0                      # PostgreSQL + Redis
    python -m benchmarks.soak --seconds 20 --json soak.json      # a quick look

The gateway runs with every bounded structure under pressure: a rate limit on (every request claims to
come from one of 200 000 senders through a trusted proxy, each allowed 10 a minute, so the limiter holds
tens of thousands of keys), spans exported to an endpoint that never answers (the export queue fills and
drops), 1 000 distinct model names (the ``model`` label is capped), and a small idempotency cap
(``--idempotency-max-keys``, reached within the run so its plateau shows). Retention is exercised by the
same prune the gateway's retention task runs (``prune_finished``), called by this driver every sample with
a window of ``--retention-seconds`` instead of days, so the store's size plateaus within minutes too.

Samples (every ``--sample-seconds``): the gateway's resident memory, open file descriptors and sockets
(from /proc), and from /metrics the idempotency keys, model label values, rate limiter keys, queued and
dropped spans; the SQLite file with its WAL (or the PostgreSQL tables' size). Memory is judged flat when
its slope over the second half of the run is under ``--max-rss-slope-mib`` MiB a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

SECRET = "soak-secret"
IMAGE = "/api/webhooks/image-completion"
SENDERS = 200_000
MODELS = 1_000
STATUSES = ("pending", "generating", "completed")


@dataclass
class Sample:
    elapsed_s: float
    webhooks: int
    rss_mib: float
    fds: int
    sockets: int
    idempotency_keys: float
    model_labels: int
    rate_limit_keys: float
    spans_queued: float
    spans_dropped: float
    store_mib: float
    pruned_jobs: int


@dataclass
class Figure:
    name: str
    start: float
    end: float
    peak: float
    slope_per_min: float
    """Least-squares slope over the second half of the run."""


@dataclass
class Report:
    mode: str
    vacuums: bool
    """PostgreSQL's autovacuum was off, so the driver vacuumed after each prune."""
    seconds: float
    webhooks: int
    rate_per_s: float
    failures: dict[str, int]
    figures: list[Figure]
    rss_flat: bool
    samples: list[Sample] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="Soak a live gateway for a bounded time with many distinct jobs; report whether memory, "
        "file descriptors, connections, the idempotency store, model labels, rate limiter keys, the span "
        "queue and the store's size stay bounded. Exit status 1 if resident memory keeps growing.",
    )
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float, help="how long to run (default 3)")
    duration.add_argument("--seconds", type=float, help="how long to run, in seconds")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections (16)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument(
        "--idempotency-max-keys", type=int, default=100_000, help="GATEWAY_IDEMPOTENCY_MAX_KEYS (100000)"
    )
    parser.add_argument(
        "--retention-seconds", type=float, default=60.0, help="prune jobs finished longer ago than this (60)"
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (a schema of the run's own is created and dropped)")
    parser.add_argument("--redis-url", help="Redis URL for the idempotency store and rate limits")
    parser.add_argument("--max-rss-slope-mib", type=float, default=1.0, help="MiB/min counted as flat (1.0)")
    parser.add_argument("--json", type=Path, help="also write the report and every sample as JSON here")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 3)
    report = asyncio.run(_soak(args, seconds))
    print(_render(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0 if report.rss_flat else 1


async def _soak(args: argparse.Namespace, seconds: float) -> Report:
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as directory:
        async with _Store(args, Path(directory)) as store:
            return await _drive(args, seconds, store, Path(directory))


async def _drive(args: argparse.Namespace, seconds: float, store: _Store, directory: Path) -> Report:
    port = _free_port()
    env = {
        **os.environ,
        "WEBHOOK_SECRET": SECRET,
        "GATEWAY_PORT": str(port),
        "DATABASE_URL": store.url,
        "GATEWAY_IDEMPOTENCY_MAX_KEYS": str(args.idempotency_max_keys),
        "GATEWAY_RATE_LIMIT": "10/minute",
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{_free_port()}",  # nothing listens there
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }
    if args.redis_url:
        env |= {"REDIS_URL": args.redis_url, "GATEWAY_REDIS_KEY_PREFIX": store.prefix}
    log = (Path(directory) / "gateway.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the load
        [sys.executable, "-m", "gateway", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, process)
        await store.open()
        load = _Load(port, args.connections)
        samples: list[Sample] = []
        started = time.monotonic()
        senders = [asyncio.create_task(load.run()) for _ in range(args.connections)]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while (elapsed := time.monotonic() - started) < seconds:
                pruned = await store.prune(args.retention_seconds)
                samples.append(await _sample(client, process.pid, store, elapsed, load.ok, pruned))
                await asyncio.sleep(min(args.sample_seconds, max(0.0, seconds - elapsed)))
            load.stop = True
            await asyncio.gather(*senders)
            samples.append(await _sample(client, process.pid, store, time.monotonic() - started, load.ok, 0))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()
        await store.close()
    figures = _figures(samples)
    rss = next(figure for figure in figures if figure.name == "rss_mib")
    elapsed = samples[-1].elapsed_s
    return Report(
        mode="postgresql+redis" if args.database_url else "sqlite+memory",
        vacuums=store.vacuums,
        seconds=round(elapsed, 1),
        webhooks=load.ok,
        rate_per_s=round(load.ok / elapsed, 1),
        failures=dict(load.failures),
        figures=figures,
        rss_flat=rss.slope_per_min <= args.max_rss_slope_mib,
        samples=samples,
    )


class _Load:
    """Keep-alive connections posting distinct jobs' webhooks (three events each), one after another."""

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: dict[str, int] = {}
        self.stop = False
        self._run_id = uuid.uuid4().hex[:8]
        self._jobs = iter(range(10**12))

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not self.stop:
                job = next(self._jobs)
                model = f"model-{random.randrange(MODELS)}"  # noqa: S311 - spread, not secrecy
                for minute, status in enumerate(STATUSES):
                    code = await self._post(reader, writer, self._body(job, status, minute, model), job)
                    if 200 <= code < 300:
                        self.ok += 1
                    else:
                        self.failures[str(code)] = self.failures.get(str(code), 0) + 1
        finally:
            writer.close()

    def _body(self, job: int, status: str, minute: int, model: str) -> bytes:
        payload: dict[str, Any] = {
            "job_id": f"soak-{self._run_id}-{job}",
            "status": status,
            "timestamp": f"2025-10-21T16:{minute:02d}:00Z",
            "data": {"metadata": {"model_name": model, "generation_time_seconds": 12.5}},
        }
        if status == "completed":
            payload["data"]["images"] = [{"url": f"https://img.test/{job}.png", "dimensions": "1024x1024"}]
        return json.dumps(payload).encode()

    async def _post(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, job: int) -> int:
        sender = job % SENDERS
        writer.write(
            f"POST {IMAGE} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nX-Webhook-Secret: {SECRET}\r\n"
            f"X-Forwarded-For: 10.{sender >> 16}.{(sender >> 8) & 255}.{sender & 255}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        code = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        return code


class _Store:
    """The run's job store: a SQLite file in the run's directory, or a PostgreSQL schema of its own. Also
    runs the retention prune (the gateway's own code) on it, and measures its size."""

    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.prefix = f"soak:{uuid.uuid4().hex[:8]}:"
        self._postgres = args.database_url
        self._redis = args.redis_url
        if self._postgres:
            self._schema = f"soak_{uuid.uuid4().hex[:8]}"
            self.url = f"{self._postgres}{'&' if '?' in self._postgres else '?'}search_path={self._schema}"
        else:
            self.path = directory / "gateway.db"
            self.url = f"sqlite:///{self.path}"
        self._jobs: Any = None
        self.vacuums = False
        """Whether this driver runs VACUUM after pruning (PostgreSQL with autovacuum off)."""

    async def __aenter__(self) -> _Store:
        if self._postgres:
            await self._admin(f'CREATE SCHEMA "{self._schema}"')
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._postgres:
            await self._admin(f'DROP SCHEMA IF EXISTS "{self._schema}" CASCADE')
        if self._redis:
            import redis

            client = redis.Redis.from_url(self._redis)
            for chunk in _chunks(client.scan_iter(match=f"{self.prefix}*", count=1000), 1000):
                client.delete(*chunk)
            client.close()

    async def _admin(self, statement: str) -> Any:
        import asyncpg

        connection = await asyncpg.connect(self._postgres)
        try:
            return await connection.fetchval(statement)
        finally:
            await connection.close()

    async def open(self) -> None:
        if self._postgres:
            self.vacuums = await self._admin("SHOW autovacuum") == "off"
        from gateway.stores.postgres import PostgresJobStore
        from gateway.stores.sqlite import SqliteJobStore

        self._jobs = PostgresJobStore(self.url) if self._postgres else SqliteJobStore(str(self.path))
        await self._jobs.open(apply_migrations=False)

    async def close(self) -> None:
        if self._jobs is not None:
            await self._jobs.close()

    async def prune(self, window_seconds: float) -> int:
        before = datetime.now(UTC) - timedelta(seconds=window_seconds)
        total = 0
        while (count := await self._jobs.prune_finished(before, 500)) > 0:
            total += count
        if self.vacuums:
            # The server's autovacuum is off: do its work, or deleted rows would never be reused.
            await self._admin(f'VACUUM "{self._schema}".jobs, "{self._schema}".job_events')
        return total

    async def size_mib(self) -> float:
        if self._postgres:
            tables = f"'\"{self._schema}\".jobs'"
            events = f"'\"{self._schema}\".job_events'"
            size = await self._admin(f"SELECT pg_total_relation_size({tables}) + pg_total_relation_size({events})")
            return float(size) / 2**20
        files = [self.path, Path(f"{self.path}-wal")]
        return sum(file.stat().st_size for file in files if file.exists()) / 2**20


async def _sample(
    client: httpx.AsyncClient, pid: int, store: _Store, elapsed: float, webhooks: int, pruned: int
) -> Sample:
    families = {f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)}

    def value(name: str) -> float:
        family = families.get(name)
        return sum(s.value for s in family.samples if not s.name.endswith("_created")) if family else 0.0

    models = {s.labels["model"] for s in families["gateway_jobs_finished"].samples if "model" in s.labels}
    links, rss_kib = _process(pid)
    return Sample(
        elapsed_s=round(elapsed, 1),
        webhooks=webhooks,
        rss_mib=round(rss_kib / 1024, 1),
        fds=len(links),
        sockets=sum(link.startswith("socket:") for link in links),
        idempotency_keys=value("gateway_idempotency_keys"),
        model_labels=len(models),
        rate_limit_keys=value("gateway_rate_limit_keys"),
        spans_queued=value("gateway_spans_queued"),
        spans_dropped=value("gateway_spans_dropped"),
        store_mib=round(await store.size_mib(), 2),
        pruned_jobs=pruned,
    )


def _process(pid: int) -> tuple[list[str], int]:
    """The process's open file descriptors (what each points at) and resident memory in KiB, from /proc."""
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed between listing and reading
            links.append(os.readlink(fd))
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return links, next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _figures(samples: list[Sample]) -> list[Figure]:
    names = (
        "rss_mib",
        "fds",
        "sockets",
        "idempotency_keys",
        "model_labels",
        "rate_limit_keys",
        "spans_queued",
        "store_mib",
    )
    second_half = [s for s in samples if s.elapsed_s >= samples[-1].elapsed_s / 2]
    figures = []
    for name in names:
        values = [float(getattr(s, name)) for s in samples]
        figures.append(
            Figure(
                name=name,
                start=values[0],
                end=values[-1],
                peak=max(values),
                slope_per_min=round(
                    _slope([s.elapsed_s for s in second_half], [float(getattr(s, name)) for s in second_half]) * 60, 3
                ),
            )
        )
    return figures


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


def _render(report: Report) -> str:
    lines = [
        f"soak: {report.mode}, {report.seconds:.0f} s, {report.webhooks} webhooks answered 2xx "
        f"({report.rate_per_s}/s), other answers: {report.failures or 'none'}",
        "",
        f"{'figure':<18}{'start':>12}{'end':>12}{'peak':>12}{'slope/min (2nd half)':>24}",
    ]
    lines += [f"{f.name:<18}{f.start:>12g}{f.end:>12g}{f.peak:>12g}{f.slope_per_min:>24g}" for f in report.figures]
    dropped = report.samples[-1].spans_dropped
    pruned = sum(s.pruned_jobs for s in report.samples)
    lines += [
        "",
        f"spans dropped (exporter unreachable): {dropped:g}; jobs pruned by retention: {pruned}",
        f"resident memory {'FLAT' if report.rss_flat else 'GROWING'} over the second half",
    ]
    if report.vacuums:
        lines.append("PostgreSQL's autovacuum is off: the driver ran VACUUM after each prune, as autovacuum would")
    return "\n".join(lines)


async def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        for _ in range(200):
            if process.poll() is not None:
                raise RuntimeError("the gateway exited at start-up")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become ready")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chunks(items: Any, size: int) -> Any:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


if __name__ == "__main__":
    sys.exit(main())
