"""Throughput and latency of the gateway against a floor and a peer, measured in the same run.

Drives ``POST /api/webhooks/image-completion`` over loopback with ``wrk`` (every job id unique), the
server pinned to one core and wrk to the other, each configuration at each concurrency, repeated and
interleaved so drift on a noisy machine hits every configuration alike. Prints a table and ratios and
saves them as JSON. Beside req/s, p50 and p99 it reports the CPU microseconds each process involved
spent a webhook (read from /proc before and after the measured run: see benchmarks/cpu.py), the
figure a deployment is sized with (docs/capacity.md), and the ratios the project's targets are set
on, with whether each holds. `python -m benchmarks.report` turns the saved JSON into docs/benchmark.md,
docs/capacity.md and the ratio chart. Configurations:

  A        raw ASGI app + msgspec decode (the floor)
  B        bare Litestar handler taking the msgspec Struct (the framework baseline)
  E        FastAPI + pydantic v2 with the secret check, an in-memory dedup dict and three metrics
  G        the gateway, full pipeline, embedded stores, telemetry as shipped (no OTLP endpoint: metrics,
           logs, trace context; spans recorded only when an exporter is configured)
  G-notel  the gateway with traces off (OTEL_SDK_DISABLED) and per-request logs off: telemetry's cost
  G-routed the gateway with webhook POSTs routed by Litestar (benchmarks/apps/routed.py): what taking
           them before the router (gateway/http/webhooks.py: WebhooksFirst, docs/seams.md) buys
  G-otlp   the gateway exporting 10 % of traces over OTLP to a local sink (sharing wrk's core)
  B-granian, G-granian
           B and G served by granian (one worker, one runtime thread) instead of uvicorn + uvloop +
           httptools: the measurement behind the server `gateway serve` uses
  G-dist   the gateway in distributed mode: Redis idempotency store and PostgreSQL job store, the
           machine's own servers on loopback (BENCH_REDIS_URL, BENCH_DATABASE_URL; a schema and key
           prefix of the run's own, dropped after). Not pinned: Redis and PostgreSQL share wrk's core
           (and the server's), so the figure is a floor, not what dedicated database hosts give
  G-fwd    the gateway forwarding every applied event (signed) to a local receiver that answers 200
           at once (sharing wrk's core): the cost of the outbox row and of the dispatcher on the
           server's core; before each measured run and after it the benchmark waits for the receiver
           to stop receiving, so the CPU figure includes delivering what the run ingested
  G-fwd-aiohttp, G-fwd-httpx
           G-fwd with another HTTP client for forwarding (benchmarks/apps/forward_client.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx

from benchmarks import cpu

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "bench-secret"
GRANIAN = [
    sys.executable,
    "-m",
    "granian",
    "--interface",
    "asgi",
    "--workers",
    "1",
    "--runtime-threads",
    "1",
    "--log-level",
    "warning",
    "--no-access-log",
    "--host",
    "127.0.0.1",
]
UVICORN = [
    sys.executable,
    "-m",
    "uvicorn",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--log-level",
    "warning",
    "--no-access-log",
    "--host",
    "127.0.0.1",
]


@dataclass(frozen=True)
class Config:
    name: str
    description: str
    command: list[str]
    env: dict[str, str]
    needs_sink: bool = False
    forwards: bool = False


@dataclass
class Result:
    config: str
    connections: int
    repeat: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int = 0
    """Requests wrk completed in the measured run."""
    cpu_us: dict[str, float] | None = None
    """CPU microseconds a request per process group (``gateway``; for G-dist also ``postgres``,
    ``postgres-background``, ``redis``), and ``gateway-loop``, the part of ``gateway`` its main thread
    (the event loop, under uvicorn) spent; ``None`` where /proc cannot be read."""
    forwarded: int | None = None
    """G-fwd: events the receiver got between the two CPU readings."""


@dataclass(frozen=True)
class Target:
    """One of the ratios the project sets a target on: ``figure`` of ``top`` over that of ``bottom``."""

    label: str
    top: str
    bottom: str
    figure: str  # "rate" (req/s), "p50" or "p99" (ms)
    connections: tuple[int, ...]
    minimum: float | None  # None: reported, no target


TARGETS = (
    Target("G / B (bare Litestar)", "G", "B", "rate", (10, 50), 0.8),
    Target("G / E (FastAPI toy, persists nothing)", "G", "E", "rate", (10, 50), 1.5),
    Target("G-dist / G (Redis + PostgreSQL vs embedded)", "G-dist", "G", "rate", (10, 50), 0.6),
    Target("G-fwd / G (forwarding every event)", "G-fwd", "G", "rate", (10, 50), 0.7),
    Target("p50 of B / p50 of G", "B", "G", "p50", (10,), 0.77),
    Target("p99 of B / p99 of G", "B", "G", "p99", (10,), 0.67),
    Target("G / A (raw ASGI floor)", "G", "A", "rate", (10, 50), None),
)
"""The ratio table of issue 21, in its order, with its targets."""
DEFAULT_CONFIGS = "A,B,E,G,G-notel,G-otlp,G-dist,G-fwd"


DIST_SCHEMA = f"gw_bench_{uuid.uuid4().hex[:8]}"
DIST_DATABASE = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DIST_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DIST_APPLICATION = f"gateway-bench-{DIST_SCHEMA}"
"""The application_name of the gateway's PostgreSQL connections: how its backends are found."""


def configs(tmp: Path) -> dict[str, Config]:
    gateway = [sys.executable, "-m", "gateway", "serve"]
    base = {"WEBHOOK_SECRET": SECRET, "GATEWAY_LOG_FORMAT": "json"}
    separator = "&" if "?" in DIST_DATABASE else "?"
    return {
        "A": Config("A", "raw ASGI + msgspec (floor)", [*UVICORN, "benchmarks.apps.raw:app"], {}),
        "B": Config("B", "bare Litestar + Struct", [*UVICORN, "benchmarks.apps.bare_litestar:app"], {}),
        "E": Config("E", "FastAPI + pydantic toy", [*UVICORN, "benchmarks.apps.fastapi_receiver:app"], base),
        "G": Config("G", "gateway as shipped", gateway, {**base, "DATABASE_URL": f"sqlite:///{tmp}/g.db"}),
        "B-granian": Config(
            "B-granian", "bare Litestar on granian", [*GRANIAN, "benchmarks.apps.bare_litestar:app"], {}
        ),
        "G-granian": Config(
            "G-granian",
            "gateway on granian",
            [*GRANIAN, "benchmarks.apps.gateway_app:app"],
            {**base, "DATABASE_URL": f"sqlite:///{tmp}/gg.db"},
        ),
        "G-notel": Config(
            "G-notel",
            "gateway, traces and request logs off",
            gateway,
            {
                **base,
                "DATABASE_URL": f"sqlite:///{tmp}/n.db",
                "OTEL_SDK_DISABLED": "true",
                "GATEWAY_LOG_LEVEL": "WARNING",
            },
        ),
        "G-routed": Config(
            "G-routed",
            "gateway, webhooks through Litestar's router",
            [sys.executable, "-m", "benchmarks.apps.routed", "serve"],
            {**base, "DATABASE_URL": f"sqlite:///{tmp}/r.db"},
        ),
        "G-otlp": Config(
            "G-otlp",
            "gateway, OTLP export, 10% sampled (sink on wrk's core)",
            gateway,
            {
                **base,
                "DATABASE_URL": f"sqlite:///{tmp}/o.db",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            },
            needs_sink=True,
        ),
        "G-dist": Config(
            "G-dist",
            "gateway, Redis + PostgreSQL on loopback (sharing the cores)",
            gateway,
            {
                **base,
                "DATABASE_URL": f"{DIST_DATABASE}{separator}search_path={DIST_SCHEMA}"
                f"&application_name={DIST_APPLICATION}",
                "REDIS_URL": DIST_REDIS,
                "GATEWAY_REDIS_KEY_PREFIX": f"bench:{DIST_SCHEMA}:",
                "GATEWAY_IDEMPOTENCY_TTL_SECONDS": "600",
            },
        ),
        "G-fwd": Config(
            "G-fwd",
            "gateway forwarding every event (receiver on wrk's core)",
            gateway,
            {
                **base,
                "DATABASE_URL": f"sqlite:///{tmp}/f.db",
                "GATEWAY_FORWARD_SIGNING_KEY": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            },
            forwards=True,
        ),
        **{
            f"G-fwd-{client}": Config(
                f"G-fwd-{client}",
                f"G-fwd with {client}'s client instead of the home-made one",
                [sys.executable, "-m", "benchmarks.apps.forward_client", client, "serve"],
                {
                    **base,
                    "DATABASE_URL": f"sqlite:///{tmp}/f-{client}.db",
                    "GATEWAY_FORWARD_SIGNING_KEY": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                },
                forwards=True,
            )
            for client in ("aiohttp", "httpx")
        },
    }


def dist_schema(create: bool) -> None:
    """Create (or drop) the run's own schema and Redis keys for G-dist: the shared servers keep nothing."""
    import asyncio

    import asyncpg
    import redis

    async def run() -> None:
        db = await asyncpg.connect(DIST_DATABASE, timeout=5)
        try:
            await db.execute(f"CREATE SCHEMA {DIST_SCHEMA}" if create else f"DROP SCHEMA {DIST_SCHEMA} CASCADE")
        finally:
            await db.close()

    if create:  # Redis first: a run that cannot start leaves no schema behind
        client = redis.Redis.from_url(DIST_REDIS, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    asyncio.run(run())
    if not create:
        client = redis.Redis.from_url(DIST_REDIS)
        try:
            for batch in _batches(client.scan_iter(match=f"bench:{DIST_SCHEMA}:*", count=1000), 1000):
                client.delete(*batch)
        finally:
            client.close()


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds in all: A, B and G at 10 connections, once")
    parser.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"comma-separated configurations (default {DEFAULT_CONFIGS}; G-dist is left out, with a note, "
        "when PostgreSQL or Redis does not answer)",
    )
    parser.add_argument("--connections", default="10,50", help="comma-separated concurrencies (default 10,50)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration and concurrency (default 2)")
    parser.add_argument("--json", type=Path, default=Path("benchmark-results.json"), help="where to save results")
    parser.add_argument("--note", default="", help="the run's conditions in a sentence, kept in the JSON and the docs")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only measure the in-memory idempotency store holding a million keys (bytes a key)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        nargs="?",
        const=5000,
        help="only profile the hot path in-process with cProfile over N webhooks (default 5000)",
    )
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        nargs="?",
        const=1000,
        help="only count the instructions a webhook takes on the in-process hot path under valgrind's "
        "callgrind, over N webhooks (default 1000): a figure that does not drift with the machine's load",
    )
    parser.add_argument(
        "--profile-output",
        type=Path,
        default=Path("hot-path.prof"),
        help="where --profile saves the raw profile (default hot-path.prof)",
    )
    args = parser.parse_args(argv)
    if args.memory:
        from benchmarks.memory import measure_idempotency_memory

        figures = measure_idempotency_memory()
        args.json.write_text(
            json.dumps(
                {"date": datetime.now(UTC).isoformat(timespec="seconds"), "idempotency_memory": figures}, indent=2
            )
        )
        print(f"saved {args.json}")
        return 0
    if args.profile is not None:
        from benchmarks.profile import profile_hot_path

        profile_hot_path(args.profile, args.profile_output)
        return 0
    if args.instructions is not None:
        from benchmarks.instructions import count_instructions

        try:
            per_webhook = count_instructions(args.instructions)
        except RuntimeError as error:
            print(f"benchmarks: {error}", file=sys.stderr)
            return 2
        print(f"instructions: {per_webhook:,.0f} a webhook over {args.instructions} webhooks (all threads, callgrind)")
        return 0
    if args.quick:
        args.configs, args.connections, args.duration, args.warmup, args.repeats = "A,B,G", "10", 1.0, 0.5, 1
    if shutil.which("wrk") is None:
        print("benchmarks: wrk is missing; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    server_core, load_core = ("0", "1") if cores >= 2 else ("0", "0")
    if cores < 2:
        print("benchmarks: one core only: server and wrk share it; ratios still hold, absolutes do not")

    with tempfile.TemporaryDirectory() as directory:
        available = configs(Path(directory))
        chosen = [available[name] for name in args.configs.split(",")]
        concurrencies = [int(c) for c in args.connections.split(",")]
        distributed = any(config.name == "G-dist" for config in chosen)
        if distributed:
            try:
                dist_schema(create=True)
            except Exception as error:
                if args.configs != DEFAULT_CONFIGS:
                    raise
                print(f"benchmarks: G-dist left out: PostgreSQL or Redis did not answer ({error!r})", flush=True)
                chosen = [config for config in chosen if config.name != "G-dist"]
                distributed = False
        started = datetime.now(UTC).isoformat(timespec="seconds")
        load_before = os.getloadavg()
        results: list[Result] = []
        total = len(chosen) * len(concurrencies) * args.repeats
        done = 0
        try:
            for repeat in range(1, args.repeats + 1):
                for config in chosen:  # interleaved: every configuration once per round
                    with Server(config, server_core, load_core) as server:
                        wrk(server.port, 10, args.warmup, load_core)
                        for connections in concurrencies:
                            done += 1
                            print(
                                f"[{done}/{total}] {config.name} at {connections} connections, run {repeat}", flush=True
                            )
                            results.append(measure(server, connections, args.duration, repeat, load_core))
        finally:
            if distributed:
                dist_schema(create=False)
    conditions = {
        "started": started,
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "duration_seconds": args.duration,
        "warmup_seconds": args.warmup,
        "repeats": args.repeats,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": args.note,
    }
    report(results, chosen, concurrencies, args.json, conditions)
    return 0


class Server:
    """A server process pinned to one core, on a free port, ready when it answers."""

    def __init__(self, config: Config, core: str, sink_core: str) -> None:
        self.config = config
        self.core = core
        self.sink_core = sink_core
        self.port = free_port()
        self.sink: Sink | None = None
        self.receiver: Sink | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, **self.config.env, "GATEWAY_PORT": str(self.port), "PYTHONPATH": str(ROOT)}
        if self.config.needs_sink:
            self.sink = Sink()
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{self.sink.port}"
        if self.config.forwards:
            self.receiver = Sink()
            env["GATEWAY_FORWARD_URL"] = f"http://127.0.0.1:{self.receiver.port}/hooks"
        command = [*self.config.command, "--port", str(self.port)]
        self.process = subprocess.Popen(
            ["taskset", "-c", self.core, *command],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.config.name} exited: {self.process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.process.kill()  # never left running behind a run that gave up on it
        self.process.wait()
        raise RuntimeError(f"{self.config.name} did not start within 30 s")

    def settle(self) -> int:
        """Wait (at most 30 s) until the forwarding receiver stops receiving; answer its count (0 without)."""
        if self.receiver is None:
            return 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            count = self.receiver.count
            time.sleep(0.3)
            if self.receiver.count == count:
                break
        return self.receiver.count

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        if self.sink is not None:
            self.sink.close()
        if self.receiver is not None:
            print(f"{self.config.name}: the receiver got {self.receiver.count} forwarded events", flush=True)
            self.receiver.close()


class Sink:
    """A stand-in OTLP/HTTP collector (or forwarding receiver) that accepts every POST, so export costs
    what it would. HTTP/1.1, so clients keep their connections."""

    def __init__(self) -> None:
        self.count = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.count += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrk(port: int, connections: int, duration: float, core: str) -> str:
    command = [
        "taskset",
        "-c",
        core,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(HERE / "unique.lua"),
        f"http://127.0.0.1:{port}",
    ]
    return subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, "WEBHOOK_SECRET": SECRET}
    ).stdout


def measure(server: Server, connections: int, duration: float, repeat: int, core: str) -> Result:
    """One measured wrk run against ``server``, with the CPU its processes spent on it."""
    delivered = server.settle()
    before = snapshot(server)
    output = wrk(server.port, connections, duration, core)
    delivered = server.settle() - delivered
    after = snapshot(server)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    usage = cpu.usage(before, after, requests)
    return Result(
        server.config.name,
        connections,
        repeat,
        rps,
        _percentile(output, "50"),
        _percentile(output, "99"),
        int(non_2xx.group(1)) if non_2xx else 0,
        requests,
        {group: round(us, 1) for group, us in usage.items()} or None,
        delivered if server.receiver is not None else None,
    )


def snapshot(server: Server) -> cpu.Snapshot:
    """CPU seconds so far of the server's process tree and, for G-dist, of PostgreSQL and Redis."""
    pid = server.process.pid
    groups: cpu.Snapshot = {"gateway": {pid: cpu.tree_seconds(pid)}}
    if "granian" not in server.config.command:  # granian serves from a worker process: no loop thread here
        groups["gateway-loop"] = {pid: cpu.main_thread_seconds(pid)}  # part of "gateway", not added to it
    if server.config.name == "G-dist":
        groups.update(_database_processes())
    return groups


def _database_processes() -> cpu.Snapshot:
    import asyncio

    import asyncpg
    import redis

    async def backends() -> list[tuple[int, str, str]]:
        db = await asyncpg.connect(DIST_DATABASE, timeout=5)
        try:
            rows = await db.fetch("SELECT pid, backend_type, application_name FROM pg_stat_activity")
        finally:
            await db.close()
        return [(row["pid"], row["backend_type"] or "", row["application_name"] or "") for row in rows]

    rows = asyncio.run(backends())
    client = redis.Redis.from_url(DIST_REDIS)
    try:
        redis_pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return {
        "postgres": cpu.processes([pid for pid, _, name in rows if name == DIST_APPLICATION], "postgres"),
        "postgres-background": cpu.processes(
            [pid for pid, kind, _ in rows if kind not in ("client backend", "")], "postgres"
        ),
        "redis": cpu.processes([redis_pid], "redis"),
    }


def _percentile(output: str, which: str) -> float:
    value, unit = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


CPU_GROUPS = ("gateway", "postgres", "postgres-background", "redis")


def best_runs(results: list[Result]) -> dict[tuple[str, int], Result]:
    """Per configuration and concurrency, the run with the highest rate of its repeats (all its figures)."""
    best: dict[tuple[str, int], Result] = {}
    for result in results:
        key = (result.config, result.connections)
        if key not in best or result.requests_per_second > best[key].requests_per_second:
            best[key] = result
    return best


def total_cpu_us(result: Result) -> float | None:
    """CPU microseconds a webhook of every process group measured for ``result``, added up."""
    if not result.cpu_us:
        return None
    return round(sum(us for group, us in result.cpu_us.items() if group in CPU_GROUPS), 1)


def target_rows(best: dict[tuple[str, int], Result]) -> list[dict[str, object]]:
    """The issue's ratio table from the best runs: each ratio's value per concurrency, the same ratio
    computed from total CPU a webhook (rate ratios only: the cost of ``bottom`` over that of ``top``),
    its target and whether it holds at every concurrency it is set at (``None``: not measured, or none)."""
    rows: list[dict[str, object]] = []
    for target in TARGETS:
        values: dict[str, float] = {}
        by_cpu: dict[str, float] = {}
        for connections in target.connections:
            top, bottom = best.get((target.top, connections)), best.get((target.bottom, connections))
            if top is None or bottom is None:
                continue
            if target.figure == "rate":
                values[str(connections)] = round(top.requests_per_second / bottom.requests_per_second, 3)
                top_cpu, bottom_cpu = total_cpu_us(top), total_cpu_us(bottom)
                if top_cpu and bottom_cpu:
                    by_cpu[str(connections)] = round(bottom_cpu / top_cpu, 3)
            else:
                figure = f"{target.figure}_ms"
                values[str(connections)] = round(getattr(top, figure) / getattr(bottom, figure), 3)
        measured = len(values) == len(target.connections)
        rows.append(
            {
                "ratio": target.label,
                "top": target.top,
                "bottom": target.bottom,
                "figure": target.figure,
                "connections": list(target.connections),
                "values": values,
                "by_cpu": by_cpu,
                "target": target.minimum,
                "holds": (
                    all(value >= target.minimum for value in values.values())
                    if measured and target.minimum is not None
                    else None
                ),
            }
        )
    return rows


def target_text(row: dict[str, object]) -> str:
    """``>= 0.8 at both`` / ``>= 0.77 at 10`` / ``reported``."""
    if row["target"] is None:
        return "reported"
    connections = cast("list[int]", row["connections"])
    at = "both" if len(connections) > 1 else str(connections[0])
    return f">= {row['target']} at {at}"


def holds_text(row: dict[str, object]) -> str:
    return {True: "yes", False: "NO", None: "-" if row["target"] is None else "not measured"}[row["holds"]]  # type: ignore[index]


def report(
    results: list[Result],
    chosen: list[Config],
    concurrencies: list[int],
    path: Path,
    conditions: dict[str, object] | None = None,
) -> None:
    best = best_runs(results)
    print()
    print(
        f"{'config':<9} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7}"
        f"  {'CPU us a webhook: gateway':>25} {'(loop)':>6} {'postgres':>8} {'pg-bg':>6} {'redis':>6}"
        f" {'total':>6}  description"
    )
    for config in chosen:
        for connections in concurrencies:
            r = best[(config.name, connections)]
            usage = r.cpu_us or {}
            cells = [f"{usage[group]:.0f}" if group in usage else "-" for group in CPU_GROUPS]
            loop = f"{usage['gateway-loop']:.0f}" if "gateway-loop" in usage else "-"
            total = total_cpu_us(r)
            print(
                f"{config.name:<9} {connections:>5} {r.requests_per_second:>8.0f} {r.p50_ms:>7.2f} "
                f"{r.p99_ms:>7.2f} {r.non_2xx:>7}  {cells[0]:>25} {loop:>6} {cells[1]:>8} {cells[2]:>6} {cells[3]:>6} "
                f"{'-' if total is None else f'{total:.0f}':>6}  {config.description}"
                + (f" ({r.forwarded} delivered)" if r.forwarded is not None else "")
            )
    ratios: dict[str, float] = {}
    for connections in concurrencies:
        for top, bottom in (
            ("G", "B"),
            ("G", "E"),
            ("G", "A"),
            ("G", "G-notel"),
            ("G-otlp", "B"),
            ("B", "A"),
            ("G-dist", "B"),
            ("G-dist", "G"),
            ("G-fwd", "G"),
            ("B-granian", "B"),
            ("G-granian", "G"),
        ):
            if (top, connections) in best and (bottom, connections) in best:
                name = f"{top}/{bottom}@{connections}"
                ratios[name] = (
                    best[(top, connections)].requests_per_second / best[(bottom, connections)].requests_per_second
                )
    print()
    for name, ratio in ratios.items():
        print(f"{name:<18} {ratio:5.2f}")
    if any(key.startswith("G/G-notel") for key in ratios):
        for connections in concurrencies:
            key = f"G/G-notel@{connections}"
            if key in ratios:
                print(f"telemetry cost at {connections} connections: {100 * (1 - ratios[key]):.1f}% of throughput")
    for connections in concurrencies:
        key = f"G-fwd/G@{connections}"
        if key in ratios:
            print(f"forwarding cost at {connections} connections: {100 * (1 - ratios[key]):.1f}% of throughput")
    targets = target_rows(best)
    print()
    print(f"{'ratio':<44} {'@10':>5} {'@50':>5}  {'by CPU @10':>10} {'@50':>5}  {'target':<16} holds")
    for row in targets:
        tables = cast("list[dict[str, float]]", [row["values"], row["by_cpu"]])
        cells = [f"{table[c]:.2f}" if c in table else "" for table in tables for c in ("10", "50")]
        print(
            f"{row['ratio']:<44} {cells[0]:>5} {cells[1]:>5}  {cells[2]:>10} {cells[3]:>5}  "
            f"{target_text(row):<16} {holds_text(row)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cores": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "server": "uvicorn + uvloop + httptools, one worker pinned to one core; wrk -t1 on the other",
                "conditions": conditions or {},
                "configs": {config.name: config.description for config in chosen},
                "connections": concurrencies,
                "results": [asdict(r) for r in results],
                "best": [asdict(best[(config.name, c)]) for config in chosen for c in concurrencies],
                "ratios": ratios,
                "targets": targets,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nsaved {path}")
