"""Honest readiness: a job store that answers reads but cannot write is not ready, and says so once.

The database is made full for real, without mounting anything: SQLite with ``PRAGMA max_page_count`` on
the gateway's own writer connection (``SQLITE_FULL``, what a full disk answers), PostgreSQL with a trigger
in the test's own schema raising SQLSTATE 53100 (``disk_full``, what PostgreSQL answers when it cannot
extend a file). Reads (``SELECT 1``) keep answering in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.config import PostgresDatabase, Settings
from gateway.http import health
from gateway.http.app import create_app
from gateway.http.health import WriteProbe
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.sqlite import SqliteJobStore
from tests.conftest import SECRET, completed_image

IMAGE = "/api/webhooks/image-completion"
REFUSED = 30


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    return family_settings


class Disk:
    """Fills the job store's database and frees it again."""

    def __init__(self, store: SqliteJobStore | PostgresJobStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    async def fill(self) -> None:
        if isinstance(self._store, SqliteJobStore):
            # Not one page more than the file has: any write that needs a new page is refused.
            await self._store.executor.run("test_fill", lambda db: db.execute("PRAGMA max_page_count = 1"))
            return
        await self._postgres(
            """CREATE FUNCTION {schema}.disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100';
               END $$""",
            "CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON {schema}.jobs"
            " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.disk_full()",
            "CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON {schema}.job_events"
            " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.disk_full()",
        )

    async def free(self) -> None:
        if isinstance(self._store, SqliteJobStore):
            await self._store.executor.run("test_free", lambda db: db.execute("PRAGMA max_page_count = 1073741823"))
            return
        await self._postgres("DROP FUNCTION {schema}.disk_full() CASCADE")

    async def _postgres(self, *statements: str) -> None:
        database = self._settings.database
        assert isinstance(database, PostgresDatabase)
        schema = '"' + parse_qs(urlsplit(database.url).query)["search_path"][0] + '"'
        connection = await asyncpg.connect(database.url)
        try:
            for statement in statements:
                await connection.execute(statement.format(schema=schema))
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """The app with its lifespan run on this loop (the job store's futures live on it), and a client."""
    app = create_app(settings)
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        transport = httpx.ASGITransport(app=app)
        headers = {"X-Webhook-Secret": SECRET}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
            yield app, client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The gateway's ERROR lines (the records are read when the test looks)."""
    caplog.set_level(logging.INFO, logger="gateway")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logging.getLogger("gateway").addHandler(handler)
    yield records
    logging.getLogger("gateway").removeHandler(handler)


def _large(job_id: str) -> dict[str, Any]:
    """A webhook whose row needs a page of its own: smaller than the readiness probe's, so readiness goes
    down no later than the webhooks start failing."""
    body = completed_image(job_id=job_id)
    image = body["data"]["images"][0]
    body["data"]["images"] = [
        {**image, "url": f"http://localhost:9006/{job_id}/{n}/{'x' * 800}.png"} for n in range(10)
    ]
    return body


async def _readiness_becomes(client: httpx.AsyncClient, status_code: int) -> Any:
    """``/readyz``'s answer once it has this status: it probes at most once a second."""
    deadline = time.monotonic() + 10
    while (ready := await client.get("/readyz")).status_code != status_code:
        assert time.monotonic() < deadline, f"/readyz still answers {ready.status_code}: {ready.text}"
        await asyncio.sleep(0.1)
    return ready.json()


def _store_errors(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_store_errors_total{") and 'store="job"' in line
    )


async def test_a_full_database_is_not_ready_and_logs_its_outage_once(
    settings: Settings, errors: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probed every 50 ms rather than at most once a second (that bound is the test below's): readiness
    # follows the disk without the test waiting out the interval, twice.
    monkeypatch.setattr(health, "_PROBE_SECONDS", 0.05)
    async with serving(settings) as (app, client):
        disk = Disk(app.state["jobs"], settings)
        assert (await client.post(IMAGE, json=completed_image(job_id="before"))).status_code == 200
        assert (await client.get("/readyz")).json() == {
            "status": "ready",
            "stores": {"jobs": "ok", "idempotency": "ok"},
        }
        errors_before = _store_errors((await client.get("/metrics")).text)

        await disk.fill()
        # Pages still free in the file take a few more writes; then every write is refused.
        accepted = 0
        while (await client.post(IMAGE, json=_large(f"filling-{accepted}"))).status_code == 200:
            accepted += 1
            assert accepted < 100, "the database never filled up"
        ready = await _readiness_becomes(client, 503)
        assert ready["stores"]["jobs"] == "unwritable"
        codes = []
        for number in range(REFUSED):
            codes.append((await client.post(IMAGE, json=_large(f"during-{number}"))).status_code)
            if number % 10 == 0:  # readiness probes in between stay down and log nothing
                assert (await client.get("/readyz")).status_code == 503
        assert set(codes) == {503}
        assert (await client.get("/api/jobs/before")).status_code == 200  # reads still answer

        outage = [record for record in errors if record.levelno >= logging.ERROR]
        assert len(outage) == 1, [record.getMessage() for record in outage]
        assert "job store writes fail" in outage[0].getMessage()
        assert _store_errors((await client.get("/metrics")).text) - errors_before == REFUSED + 1

        await disk.free()
        await _readiness_becomes(client, 200)
        assert (await client.post(IMAGE, json=_large("after"))).status_code == 200
        recovered = [record.getMessage() for record in errors if record.levelno == logging.WARNING]
        assert "job store writes work again" in recovered
        assert len([record for record in errors if record.levelno >= logging.ERROR]) == 1


async def test_readiness_probe_changes_nothing_a_reader_sees(client: AsyncTestClient[Any]) -> None:
    """The probe's row is inserted and deleted in one transaction: no reader ever sees it."""
    assert (await client.post(IMAGE, json=completed_image(job_id="j1"))).status_code == 200
    for _ in range(3):
        assert (await client.get("/readyz")).status_code == 200
    assert [job["job_id"] for job in (await client.get("/api/jobs")).json()["jobs"]] == ["j1"]


async def test_asking_for_readiness_often_probes_at_most_once_a_second() -> None:
    """``/readyz`` needs no credential: a flood of it must not become a flood of writes."""
    probes = 0

    class Jobs:
        async def ping(self) -> None:
            pass

        async def probe_write(self) -> None:
            nonlocal probes
            probes += 1
            await asyncio.sleep(0)

    now = [100.0]
    probe = WriteProbe(Jobs(), clock=lambda: now[0])  # type: ignore[arg-type]
    assert set(await asyncio.gather(*(probe.state() for _ in range(50)))) == {"ok"}
    assert probes == 1
    now[0] += 0.5
    await probe.state()
    assert probes == 1
    now[0] += 0.5
    await probe.state()
    assert probes == 2
