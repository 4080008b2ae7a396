"""Shared fixtures: an in-process app over either store family, a real server subprocess, a real Redis, a
real PostgreSQL (a throwaway database per session, a fresh schema per test), a real NATS with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
import nats.errors
import pytest
import redis
from litestar.testing import AsyncTestClient

from gateway.config import PostgresDatabase, Settings, SqliteDatabase
from gateway.http.app import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytest_plugins = ("tests.backends",)  # the store backends and the contract suites' fixtures

SECRET = "sorami-webhook-secret-key-2025"
JOB_ID = "e0145eaa-7430-4845-bf8e-df056076db14"


def completed_image(job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:45:00Z", **extra: Any) -> dict[str, Any]:
    """The seed's success payload."""
    return {
        "job_id": job_id,
        "status": "completed",
        "timestamp": timestamp,
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
        **extra,
    }


def completed_blog(job_id: str = "blog-1") -> dict[str, Any]:
    """A blog job's success payload: the seed's envelope with ``data.article``."""
    return {
        "job_id": job_id,
        "status": "completed",
        "timestamp": "2025-10-21T16:45:00Z",
        "data": {
            "article": {"title": "Ten ways to test a webhook", "url": "https://example.test/a", "word_count": 1200},
            "metadata": {"model_name": "gpt-x", "generation_time_seconds": 30},
        },
    }


def failed(job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:45:00Z") -> dict[str, Any]:
    """The seed's failure payload."""
    return {"job_id": job_id, "status": "failed", "timestamp": timestamp, "error_message": "Clé API Google invalide"}


def progress(status: str, job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:44:00Z") -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "timestamp": timestamp}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(webhook_secret=SECRET, database=SqliteDatabase(str(tmp_path / "gateway.db")))


@pytest.fixture(params=["embedded", "distributed"])
def family_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for one store family: SQLite + memory, or PostgreSQL + Redis (real servers, never fakes).

    A test module opts in by overriding ``settings`` with this fixture: every test then runs on both.
    """
    if request.param == "embedded":
        return Settings(webhook_secret=SECRET, database=SqliteDatabase(str(tmp_path / "gateway.db")))
    return Settings(
        webhook_secret=SECRET,
        database=PostgresDatabase(request.getfixturevalue("database_url")),
        redis_url=request.getfixturevalue("redis_url"),
        redis_key_prefix=request.getfixturevalue("redis_prefix"),
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        test_client.headers["X-Webhook-Secret"] = SECRET
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A ``gateway serve`` subprocess on a free port, with its own database."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "server.log"
        full_env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'live.db'}",
            "GATEWAY_PORT": str(self.port),
            **env,
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"], env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not become healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def stopping() -> Iterator[list[LiveServer]]:
    """Servers a test started, stopped even when it fails."""
    servers: list[LiveServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET})
    yield server
    server.stop()


def _unavailable(reason: str) -> NoReturn:
    """Skip a test whose service is missing, except in CI, where a skipped Redis test is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (``TEST_REDIS_URL``, default the machine's on 127.0.0.1:6379); never a fake."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        _unavailable(f"no Redis answers at TEST_REDIS_URL={url} ({error}); run `redis-server --daemonize yes`")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own, so tests (and parallel runs) sharing one Redis never collide; its
    keys are deleted afterwards, so idempotency keys (72 h by default) do not pile up in a shared Redis."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(
        os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"), socket_connect_timeout=1, socket_timeout=1
    )
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # no Redis: the test that asked for a prefix was skipped or failed for it already
    finally:
        client.close()


async def _jetstream_answers(url: str) -> None:
    client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
    try:
        await client.jetstream(timeout=2).account_info()
    finally:
        await client.close()


@pytest.fixture(scope="session")
def nats_url() -> str:
    """A real NATS server with JetStream (``TEST_NATS_URL``, default the machine's on 127.0.0.1:4222); never a
    fake. Tests keep to subjects and streams of their own."""
    url = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
    try:
        # On its own thread and loop, like _admin: a test's loop may already be running.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _jetstream_answers(url)).result()
    except (OSError, TimeoutError, nats.errors.Error) as error:
        _unavailable(
            f"no NATS with JetStream answers at TEST_NATS_URL={urlsplit(url).hostname}:{urlsplit(url).port} "
            f"({type(error).__name__}: {error}); run `nats-server -js` (apt-get install nats-server)"
        )
    return url


class RedisServer:
    """A private ``redis-server`` on a free port, for tests that stop it: the shared one is never stopped."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server is not installed (apt-get install redis-server)")
        self.binary = str(binary)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=2)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _admin(url: str, *statements: str) -> None:
    """Run ``statements`` on their own thread and loop: fixtures may be set up while a test's loop runs."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _execute(url, *statements)).result()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this test session's own on a real PostgreSQL (``TEST_DATABASE_URL``, default the
    machine's on 127.0.0.1:5432), dropped at the end: other users of that server are never disturbed."""
    url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(url, f'CREATE DATABASE "{name}"')
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        _unavailable(
            f"no PostgreSQL answers at TEST_DATABASE_URL={urlsplit(url).hostname} ({type(error).__name__}: {error}); "
            "start one (apt-get install postgresql) or set TEST_DATABASE_URL"
        )
    yield _with_database(url, name)
    _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """A fresh, empty schema in the session's database, selected through ``search_path`` in the URL."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    _admin(postgres_database, f'CREATE SCHEMA "{schema}"')
    return f"{postgres_database}?search_path={schema}"


class PostgresServer:
    """A private PostgreSQL cluster (``initdb``) on a free port, for tests that stop it: the shared one is
    never stopped. PostgreSQL refuses to run as root, so under root it runs as user ``postgres``."""

    def __init__(self) -> None:
        initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
        if initdb is None:
            _unavailable("PostgreSQL's initdb is not installed (apt-get install postgresql)")
        self.bin = Path(initdb).parent
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                _unavailable("running as root without runuser: cannot start PostgreSQL as another user")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.directory = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.directory / "data"
        if self.as_user:
            shutil.chown(self.directory, "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60, cwd="/"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        """A fast shutdown: sessions are cut off mid-transaction, as in a crash or a failover."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
"""Debian's Chromium (``.ci/services`` installs it), or ``TEST_CHROMIUM``; playwright's own browser download
is never used."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A real headless Chromium driven by playwright, shared by one module's tests (it starts in about a
    second). Skipped locally when Chromium or playwright is missing; a failure under ``CI=true``."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(
            f"no Chromium at {CHROMIUM}: apt-get install chromium, or set TEST_CHROMIUM (never `playwright install`)"
        )
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Error as error:
            _unavailable(f"Chromium at {CHROMIUM} does not start under playwright: {error.message.splitlines()[0]}")
        yield launched
        launched.close()


# Markers for a fast subset (registered in pyproject.toml; docs/contributing.md). Each test is marked by
# what it uses, so a new test needs no decorator: a fixture below (by name, or a parameter value of a
# backend-parametrized fixture that reaches the service through request.getfixturevalue) adds
# ``services``; code that starts a process, in the test, its module's fixtures or the module's functions
# it calls, adds ``server``; a hypothesis test is ``fuzz``. Load and soak tests carry their marker explicitly.
_SERVICE_FIXTURES = frozenset(
    {
        "database_url",
        "postgres_database",
        "postgres_server",
        "redis_url",
        "redis_prefix",
        "redis_server",
        "nats_url",
        "nats_server",
    }
)
_SERVICE_PARAMS = frozenset({"distributed", "postgres", "postgresql", "redis", "nats", "jetstream"})
_SERVER_FIXTURES = frozenset({"live_server", "stopping", "redis_server", "postgres_server"})
_PROCESS_STARTS = ("LiveServer", "run_gateway(", "subprocess.", "Popen(", "create_subprocess_")


def _starts_a_process(item: pytest.Item) -> bool:
    """Whether the test's own code, a fixture defined in (or imported into) its module, or a function of
    its module that either calls by name, contains one of ``_PROCESS_STARTS``."""
    import inspect

    module = getattr(item, "module", None)
    function = getattr(item, "function", None)
    if module is None or function is None:
        return False
    own = [function, *(getattr(module, name) for name in getattr(item, "fixturenames", ()) if hasattr(module, name))]
    helpers: list[Any] = []
    for code in own:
        names = getattr(getattr(inspect.unwrap(code), "__code__", None), "co_names", ())
        helpers += [getattr(module, name) for name in names if inspect.isfunction(getattr(module, name, None))]
    return any(_mentions_a_process_start(code) for code in [*own, *helpers])


@functools.cache
def _mentions_a_process_start(code: Any) -> bool:
    """Whether ``code``'s source contains one of ``_PROCESS_STARTS``; read once per function, not once per
    test that uses it (``inspect.getsource`` tokenizes the module)."""
    import inspect

    try:
        source = inspect.getsource(code)
    except (OSError, TypeError):
        return False
    return any(start in source for start in _PROCESS_STARTS)


_MODULE_MARKERS = {
    "tests/http/test_schemathesis.py": (frozenset({"server", "fuzz"}), frozenset({"server"})),
}
"""Modules whose every test carries exactly one of these sets of the markers (``tests/test_markers.py``
checks it): when ``-m`` deselects them all, the module is not even imported. Collecting the
schemathesis module builds every operation's examples, seconds of CPU for tests the fast subset leaves
out anyway."""


_MODULE_PLUGINS = {"tests/http/test_schemathesis.py": "schemathesis.pytest.plugin"}
"""The pytest plugin only a module of :data:`_MODULE_MARKERS` needs: not among the plugins pyproject.toml's
``addopts`` name, but loaded by :func:`pytest_configure` unless ``-m`` deselects every test of that module.
Loading schemathesis's plugin imports most of schemathesis."""


def pytest_configure(config: pytest.Config) -> None:
    """Load the plugins of :data:`_MODULE_PLUGINS` whose module may be collected."""
    for path, plugin in _MODULE_PLUGINS.items():
        loaded = sys.modules.get(plugin)
        if not _deselects_module(config, path) and (loaded is None or not config.pluginmanager.is_registered(loaded)):
            config.pluginmanager.import_plugin(plugin)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip a module of :data:`_MODULE_MARKERS` all of whose tests the ``-m`` expression deselects."""
    path = collection_path.as_posix().removeprefix(f"{config.rootpath.as_posix()}/")
    return True if _deselects_module(config, path) else None


def _deselects_module(config: pytest.Config, path: str) -> bool:
    """Whether ``-m`` deselects every test of the module at ``path`` (relative to the root), by the sets of
    markers :data:`_MODULE_MARKERS` declares for it; False for any other module."""
    expression = config.getoption("markexpr", "")
    sets = _MODULE_MARKERS.get(path, ())
    return bool(sets and expression and not any(_selects(expression, marks) for marks in sets))


def _selects(expression: str, marks: frozenset[str]) -> bool:
    """Whether ``-m expression`` selects a test carrying ``marks``; True (collect, and let pytest decide)
    for anything but marker names joined by ``and``, ``or``, ``not`` and parentheses."""
    import ast

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return True
    plain = (ast.Expression, ast.BoolOp, ast.UnaryOp, ast.Not, ast.And, ast.Or, ast.Name, ast.Load)
    if not all(isinstance(node, plain) for node in ast.walk(tree)):
        return True
    names = {node.id: node.id in marks for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return bool(eval(compile(tree, "<-m>", "eval"), {"__builtins__": {}}, names))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``services`` (live PostgreSQL, Redis or NATS), ``browser`` (Chromium), ``server`` (a
    ``gateway serve`` or another process) and ``fuzz`` (hypothesis) from what each collected test uses."""
    from hypothesis import is_hypothesis_test

    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        values = {value for value in callspec.params.values() if isinstance(value, str)} if callspec else set()
        if names & _SERVICE_FIXTURES or values & _SERVICE_PARAMS:
            item.add_marker(pytest.mark.services)
        if "browser" in names:
            item.add_marker(pytest.mark.browser)
        if names & _SERVER_FIXTURES or _starts_a_process(item):
            item.add_marker(pytest.mark.server)
        if is_hypothesis_test(getattr(item, "function", None)):
            item.add_marker(pytest.mark.fuzz)
