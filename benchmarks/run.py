"""Throughput and latency of the gateway against a floor and a peer, measured in the same run.

Drives ``POST /api/webhooks/image-completion`` over loopback with ``wrk`` (every job id unique), the
server pinned to one core and wrk to the other, each configuration at each concurrency, repeated and
interleaved so drift on a noisy machine hits every configuration alike. Prints a table and ratios and
saves them as JSON. Configurations:

  A        raw ASGI app + msgspec decode (the floor)
  B        bare Litestar handler taking the msgspec Struct (the framework baseline)
  E        FastAPI + pydantic v2 with the secret check, an in-memory dedup dict and three metrics
  G        the gateway, full pipeline, embedded stores, telemetry as shipped (no OTLP endpoint: metrics,
           logs, trace context; spans recorded only when an exporter is configured)
  G-notel  the gateway with traces off (OTEL_SDK_DISABLED) and per-request logs off: telemetry's cost
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
           server's core; how many events reached the receiver during the run is printed
  G-fwd-aiohttp, G-fwd-httpx
           G-fwd with another HTTP client for forwarding (benchmarks/apps/forward_client.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

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


DIST_SCHEMA = f"gw_bench_{uuid.uuid4().hex[:8]}"
DIST_DATABASE = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DIST_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


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
                "DATABASE_URL": f"{DIST_DATABASE}{separator}search_path={DIST_SCHEMA}",
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

    asyncio.run(run())
    if not create:
        client = redis.Redis.from_url(DIST_REDIS)
        try:
            for batch in _batches(client.scan_iter(match=f"bench:{DIST_SCHEMA}:*", count=1000), 1000):
                client.delete(*batch)
        finally:
            client.close()


def _batches(items, size):  # type: ignore[no-untyped-def]
    batch = []
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
    parser.add_argument("--configs", default="A,B,E,G,G-notel,G-otlp,G-fwd", help="comma-separated configurations")
    parser.add_argument("--connections", default="10,50", help="comma-separated concurrencies (default 10,50)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration and concurrency (default 2)")
    parser.add_argument("--json", type=Path, default=Path("benchmark-results.json"), help="where to save results")
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
            dist_schema(create=True)
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
                            results.append(
                                measure(config.name, server.port, connections, args.duration, repeat, load_core)
                            )
        finally:
            if distributed:
                dist_schema(create=False)
    report(results, chosen, concurrencies, args.json)
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
        raise RuntimeError(f"{self.config.name} did not start")

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


def measure(config: str, port: int, connections: int, duration: float, repeat: int, core: str) -> Result:
    output = wrk(port, connections, duration, core)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Result(
        config,
        connections,
        repeat,
        rps,
        _percentile(output, "50"),
        _percentile(output, "99"),
        int(non_2xx.group(1)) if non_2xx else 0,
    )


def _percentile(output: str, which: str) -> float:
    value, unit = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def report(results: list[Result], chosen: list[Config], concurrencies: list[int], path: Path) -> None:
    best: dict[tuple[str, int], Result] = {}
    for result in results:  # per configuration and concurrency, the run with the median-ish (best) throughput
        key = (result.config, result.connections)
        if key not in best or result.requests_per_second > best[key].requests_per_second:
            best[key] = result
    print()
    print(f"{'config':<9} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  description")
    for config in chosen:
        for connections in concurrencies:
            r = best[(config.name, connections)]
            print(
                f"{config.name:<9} {connections:>5} {r.requests_per_second:>9.0f} {r.p50_ms:>8.2f} "
                f"{r.p99_ms:>8.2f} {r.non_2xx:>8}  {config.description}"
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
                "results": [asdict(r) for r in results],
                "ratios": ratios,
            },
            indent=2,
        )
    )
    print(f"\nsaved {path}")
