"""Graceful shutdown of a real ``gateway serve``: SIGTERM in the middle of a stream of webhooks.

Every webhook answered 2xx is in the store exactly once, every one refused with 503 is not, none gets a
500; the process exits by itself within its deadline; and resending what was refused or unanswered to
the restarted gateway leaves every event recorded exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from gateway.config import ConfigError, Settings
from tests.conftest import SECRET, LiveServer
from tests.rawhttp import webhook_request
from tests.traffic import IMAGE, Tally, host_port, proxied, recorded_events, send_stream, through, webhook_body


def _environment(request: pytest.FixtureRequest, family: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    """The server's environment for a store family, and where its events can be counted."""
    if family == "embedded":
        path = tmp_path / "live.db"
        return {"DATABASE_URL": f"sqlite:///{path}"}, str(path)
    database_url = request.getfixturevalue("database_url")
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "GATEWAY_REDIS_KEY_PREFIX": prefix}, database_url


def _start(tmp_path: Path, env: dict[str, str]) -> LiveServer:
    return LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET, **env})


def _resend(server: LiveServer, job_ids: set[str]) -> dict[str, str]:
    """Resend webhooks to ``server``; each one's outcome."""
    outcomes = {}
    with httpx.Client(base_url=server.url, headers={"X-Webhook-Secret": SECRET}, timeout=10) as client:
        for job_id in sorted(job_ids):
            response = client.post(IMAGE, content=webhook_body(job_id), headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            outcomes[job_id] = response.json()["outcome"]
    return outcomes


def _check_then_resend(server_env: dict[str, str], database: str, tmp_path: Path, prefix: str, tally: Tally) -> None:
    assert not tally.other, f"answers other than 2xx and 503: {tally.other}"
    events = recorded_events(database, prefix)
    assert all(events[job_id] == 1 for job_id in tally.answered), "an acknowledged webhook is lost or doubled"
    assert not tally.refused & events.keys(), "a webhook refused with 503 was recorded"
    assert all(count == 1 for count in events.values())
    restarted = _start(tmp_path, server_env)
    try:
        outcomes = _resend(restarted, tally.refused | tally.unanswered)
    finally:
        restarted.stop()
    for job_id in tally.refused:
        assert outcomes[job_id] == "applied"
    events = recorded_events(database, prefix)
    assert set(events) == tally.answered | tally.refused | tally.unanswered
    assert set(events.values()) == {1}


@pytest.mark.parametrize("family", ["embedded", "distributed"])
def test_sigterm_mid_stream_loses_and_doubles_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, family: str
) -> None:
    env, database = _environment(request, family, tmp_path)
    server = _start(tmp_path, env)
    tally = Tally()
    prefix = f"stop-{family}"

    async def scenario() -> float:
        done = asyncio.Event()
        stream = asyncio.create_task(send_stream(server.port, prefix, connections=8, until=done, tally=tally))
        await asyncio.sleep(1.0)
        assert tally.answered, "no webhook got through before SIGTERM"
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while server.process.poll() is None and time.monotonic() - signalled < 15:
            await asyncio.sleep(0.02)
        exited = time.monotonic() - signalled
        done.set()
        await stream
        return exited

    exited = asyncio.run(scenario())
    assert server.process.returncode == 0, server.log.read_text()
    assert exited < 5, f"took {exited:.1f} s to stop with only short requests in flight"
    assert len(tally.answered) > 100
    _check_then_resend(env, database, tmp_path, prefix, tally)


def test_a_request_cut_off_by_the_deadline_before_its_write_is_refused_with_503(tmp_path: Path) -> None:
    """A sender trickling its body keeps a request in flight past the deadline: it gets a 503, never a
    500, the process still exits on time, and nothing of it is recorded."""
    server = _start(tmp_path, {"GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": "1"})
    body = webhook_body("slow-1")

    async def scenario() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = webhook_request(body)
        writer.write(request[: len(request) - len(body) + 10])  # the head and 10 bytes of the body
        await writer.drain()
        await asyncio.sleep(0.3)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        while server.process.poll() is None:
            await asyncio.sleep(0.02)
        return answer, time.monotonic() - signalled

    answer, exited = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"retry-after: 5" in answer.lower()
    assert b"shutting down" in answer
    assert 1 <= exited < 5
    assert server.process.returncode == 0
    assert recorded_events(str(tmp_path / "live.db"), "slow") == {}


def test_a_write_in_flight_at_the_deadline_is_finished_and_answered_truthfully(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """PostgreSQL made slow (0.15 s each way, through a proxy) so that writes are still running when the
    1 s deadline cuts the requests off: each finishes its write and is answered for what it did."""
    host, port = host_port(database_url)
    with proxied(host, port) as proxy:
        env = {
            "DATABASE_URL": through(database_url, proxy),
            "REDIS_URL": redis_url,
            "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
            "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": "1",
            "GATEWAY_STORE_TIMEOUT_SECONDS": "10",
        }
        server = _start(tmp_path, env)
        tally = Tally()

        async def scenario() -> None:
            done = asyncio.Event()
            proxy.latency = 0.15
            stream = asyncio.create_task(send_stream(server.port, "deadline", connections=6, until=done, tally=tally))
            await asyncio.sleep(1.0)
            server.process.send_signal(signal.SIGTERM)
            while server.process.poll() is None:
                await asyncio.sleep(0.02)
            done.set()
            await stream

        asyncio.run(scenario())
        proxy.heal()
        log = server.log.read_text()
        assert server.process.returncode == 0, log
        assert "timeout graceful shutdown exceeded" in log  # the deadline did cut requests off
        assert "Exception in ASGI application" not in log
        _check_then_resend({**env, "GATEWAY_STORE_TIMEOUT_SECONDS": "2"}, database_url, tmp_path, "deadline", tally)


def test_the_shutdown_deadline_is_whole_seconds_within_an_hour() -> None:
    assert Settings.from_env({}).shutdown_timeout_seconds == 20
    assert Settings.from_env({"GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": "45"}).shutdown_timeout_seconds == 45
    for bad in ("0", "1.5", "3601"):
        with pytest.raises(ConfigError, match="GATEWAY_SHUTDOWN_TIMEOUT_SECONDS"):
            Settings.from_env({"GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": bad})


class _TraceSink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that only keeps what it is sent."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        _TraceSink.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return None


def test_sigterm_flushes_queued_spans_and_the_last_log_lines(tmp_path: Path) -> None:
    """Spans still queued for export (the batch processor would wait 10 minutes) are exported at shutdown,
    and the log ends with uvicorn's last words: nothing telemetry held is lost by stopping."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _TraceSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    _TraceSink.received.clear()
    try:
        server = _start(
            tmp_path,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
            },
        )
        with httpx.Client(base_url=server.url, headers={"X-Webhook-Secret": SECRET}, timeout=5) as client:
            for number in range(5):
                response = client.post(
                    IMAGE, content=webhook_body(f"flushed-{number}"), headers={"Content-Type": "application/json"}
                )
                assert response.status_code == 200
        assert not _TraceSink.received, "exported before shutdown: the test would prove nothing"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
    finally:
        sink.shutdown()
    exported = b"".join(_TraceSink.received)
    for number in range(5):
        assert f"flushed-{number}".encode() in exported
    assert server.log.read_text().rstrip().endswith(f"Finished server process [{server.process.pid}]")


async def test_a_backend_whose_close_fails_is_logged_and_the_others_still_close(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown closes the backends in reverse order of opening: one failing to close (here the live
    streams' wake-up, closed before the job store) is logged, and the job store behind it still closes."""
    from gateway.http.app import create_app
    from gateway.model import StoreUnavailable
    from gateway.wakeup import Wakeup

    async def fail(_: Wakeup) -> None:
        raise RuntimeError("the wake-up would not stop")

    monkeypatch.setattr(Wakeup, "stop", fail)
    app = create_app(settings)
    jobs = app.state["jobs"]
    async with app.lifespan():
        await jobs.ping()  # open while the app runs
    with pytest.raises(StoreUnavailable):
        await jobs.ping()  # closed, although the wake-up's close failed before it
    failures = [record for record in caplog.records if "closing the wakeup failed" in record.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "the wake-up would not stop" in str(failures[0].exc_info[1])


def test_apps_built_and_closed_again_and_again_leave_no_thread_behind(settings: Settings) -> None:
    """Building an app and running its lifespan starts nothing that outlives it: after many app
    lifecycles (tests, reloads) the process has no more threads than after the first."""
    from litestar.testing import TestClient

    from gateway.http.app import create_app

    def lifecycle() -> None:
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200

    lifecycle()  # whatever is started once per process (the SQLite connection's thread ends with it)
    baseline = threading.active_count()
    for _ in range(10):
        lifecycle()
    assert threading.active_count() <= baseline, [thread.name for thread in threading.enumerate()]


async def test_an_unhandled_error_is_logged_with_its_traceback_through_the_root_logger(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request that fails unexpectedly is answered 500 and its traceback reaches the handlers on the
    root logger (the gateway's JSON or console lines), not a handler of Litestar's own."""
    from litestar.testing import AsyncTestClient

    from gateway.http.app import create_app
    from gateway.stores.sqlite import SqliteJobStore

    async def broken(_: SqliteJobStore, job_id: str) -> None:
        raise RuntimeError(f"an unexpected failure reading {job_id}")

    monkeypatch.setattr(SqliteJobStore, "get", broken)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/api/jobs/job-unhandled")
    assert response.status_code == 500
    assert "an unexpected failure" not in response.text
    (logged,) = [record for record in caplog.records if record.name == "litestar"]
    assert "/api/jobs/job-unhandled" in logged.getMessage()
    assert logged.exc_info is not None
    assert "an unexpected failure reading job-unhandled" in str(logged.exc_info[1])
    assert not logging.getLogger("litestar").handlers  # only the root logger's handlers write it
