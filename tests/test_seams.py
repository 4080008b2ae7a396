"""The contracts of the seams over other libraries (docs/seams.md): what each one relies on, checked
against the installed version, so that an upgrade which breaks one fails here rather than in production.

- ``WebhooksFirst`` (gateway/http/webhooks.py): a webhook ``POST`` taken before Litestar's router gets
  exactly the answer, metrics and server span that the same request gets through the router; its
  ``openapi_schema`` adds the raw routes' operations to Litestar's document when that is first read.
- The JSON log handler (gateway/telemetry/logs.py): installed through logging's public API, and the
  direct per-webhook line is used only while it is the root logger's only handler.
- No other module reads another library's private name.
"""

from __future__ import annotations

import ast
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import get
from litestar.openapi.spec import Operation, PathItem
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.http.webhooks import WebhooksFirst
from gateway.telemetry.logs import BatchingHandler, configure_logging, direct_info
from tests.conftest import SECRET, completed_blog, completed_image

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"

# (method, path, JSON body or None, headers): every kind of answer a webhook path gives.
REQUESTS: list[tuple[str, str, Any, dict[str, str]]] = [
    ("POST", IMAGE, completed_image(job_id="seam-1"), {"X-Webhook-Secret": SECRET}),
    ("POST", IMAGE, completed_image(job_id="seam-1"), {"X-Webhook-Secret": SECRET}),  # duplicate
    ("POST", BLOG, completed_blog(job_id="seam-2"), {"X-Webhook-Secret": SECRET}),
    ("POST", BLOG, completed_image(job_id="seam-1"), {"X-Webhook-Secret": SECRET}),  # another kind's payload: 400
    ("POST", IMAGE, completed_image(job_id="seam-3"), {"X-Webhook-Secret": "wrong"}),
    ("POST", IMAGE, {"job_id": "seam-4"}, {"X-Webhook-Secret": SECRET}),
    ("POST", f"{IMAGE}/", completed_image(job_id="seam-5"), {"X-Webhook-Secret": SECRET}),
    ("GET", IMAGE, None, {}),
    ("PUT", BLOG, None, {}),
    ("OPTIONS", IMAGE, None, {}),
    ("POST", "/api/webhooks/video-completion", completed_image(job_id="seam-6"), {"X-Webhook-Secret": SECRET}),
]


Answer = tuple[int, list[tuple[str, str]], bytes]
"""Status, headers (but ``date``) and body."""


async def _answers(
    tmp_path: Path, *, webhooks_first: bool
) -> tuple[list[Answer], str, list[tuple[str, dict[str, Any]]]]:
    """The answers to :data:`REQUESTS`, the webhook metrics and the server spans of a new app."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = Settings(webhook_secret=SECRET, database=SqliteDatabase(str(tmp_path / f"{webhooks_first}.db")))
    app = create_app(settings, registry=CollectorRegistry(), tracer_provider=provider, webhooks_first=webhooks_first)
    answers = []
    async with AsyncTestClient(app=app) as client:
        for method, path, body, headers in REQUESTS:
            response = await client.request(method, path, json=body, headers=headers)
            shown = sorted((name, value) for name, value in response.headers.items() if name != "date")
            answers.append((response.status_code, shown, response.content))
        metrics = "\n".join(
            line
            for line in (await client.get("/metrics")).text.splitlines()
            if line.startswith(("gateway_webhook_requests_total", "gateway_events_total", "gateway_auth_failures"))
        )
    server_spans = [
        (span.name, {key: value for key, value in (span.attributes or {}).items() if key != "gateway.trace_ms"})
        for span in spans.get_finished_spans()
        if span.name.startswith(("POST ", "GET ", "PUT ", "OPTIONS "))
    ]
    return answers, metrics, server_spans


async def test_webhooks_taken_before_the_router_are_answered_as_through_it(tmp_path: Path) -> None:
    first, first_metrics, first_spans = await _answers(tmp_path, webhooks_first=True)
    routed, routed_metrics, routed_spans = await _answers(tmp_path, webhooks_first=False)
    assert [status for status, _, _ in first] == [200, 200, 200, 400, 401, 400, 200, 405, 405, 204, 404]
    for request, taken_first, through_router in zip(REQUESTS, first, routed, strict=True):
        assert taken_first == through_router, request[:2]
    assert "gateway_webhook_requests_total" in first_metrics
    assert first_metrics == routed_metrics
    assert any(name == f"POST {IMAGE}" for name, _ in first_spans)
    assert first_spans == routed_spans


def test_the_raw_routes_are_documented_when_the_document_is_first_read() -> None:
    """Litestar's own paths come first, then ``webhook_paths``, asked for at the document's first read
    and not again, until Litestar rebuilds the document for a route registered later."""
    asked: list[str] = []

    def raw_routes() -> dict[str, PathItem]:
        asked.append("asked")
        return {"/raw": PathItem(post=Operation(summary="a raw ASGI route"))}

    @get("/first", sync_to_thread=False)
    def first() -> str:
        return "first"

    @get("/later", sync_to_thread=False)
    def later() -> str:
        return "later"

    # logging_config=None: Litestar's default would give its logger a handler for the rest of the process.
    app = WebhooksFirst(webhooks={}, webhook_paths=raw_routes, route_handlers=[first], logging_config=None)
    assert asked == []
    assert list(app.openapi_schema.paths or {}) == ["/first", "/raw"]
    assert app.openapi_schema is app.openapi_schema
    assert asked == ["asked"]
    app.register(later)
    assert list(app.openapi_schema.paths or {}) == ["/first", "/later", "/raw"]
    assert asked == ["asked", "asked"]


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger's handlers and level, restored after the test (configure_logging replaces them)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, BatchingHandler):
            handler.stop()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_the_json_handler_is_attached_with_logging_s_public_api(root_logging: logging.Logger) -> None:
    """configure_logging leaves exactly its handler on the root logger (replacing what was there), and
    only while that holds may the per-webhook line skip logging: with another handler beside it (a
    library's, a test's) or a console format, the line goes through logging, where that handler sees it."""
    logger = logging.getLogger("gateway.webhook")
    writers = _log_writers()
    configure_logging("INFO", "json")
    (handler,) = root_logging.handlers
    assert isinstance(handler, BatchingHandler)
    assert direct_info(logger) is not None
    extra = logging.NullHandler()
    root_logging.addHandler(extra)
    assert direct_info(logger) is None
    root_logging.removeHandler(extra)
    configure_logging("INFO", "console")
    assert direct_info(logger) is None
    # The writer thread of the handler replaced ended with it: one per process, however often configured.
    assert _log_writers() == writers + 1


def _log_writers() -> int:
    """How many log writer threads are alive."""
    return [thread.name for thread in threading.enumerate()].count("gateway-log-writer")


SEAM_PRIVATE_NAMES = {("gateway/telemetry/metrics.py", "stock._validate_exemplar")}
"""The private names of other libraries the seams read (docs/seams.md), where the code spells them."""


def test_no_module_reads_another_library_s_private_name_outside_the_seams() -> None:
    """``lib._name`` or ``from lib import _name`` for a library ``lib`` that is not gateway: only where a
    seam of docs/seams.md says so (its pin and contract test keep it honest)."""
    root = Path(__file__).resolve().parents[1]

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found: set[tuple[str, str]] = set()
    for path in sorted((root / "gateway").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module = path.relative_to(root).as_posix()
        foreign: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                foreign |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
                if node.module.split(".")[0] == "gateway":
                    continue
                foreign |= {alias.asname or alias.name for alias in node.names}
                found |= {
                    (module, f"from {node.module} import {alias.name}") for alias in node.names if private(alias.name)
                }
        foreign.discard("gateway")
        found |= {
            (module, f"{node.value.id}.{node.attr}")
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in foreign
        }
    assert found == SEAM_PRIVATE_NAMES
