"""Telemetry that tells the truth: exact metrics after a scripted mix, traces continuing the sender's,
exemplars pointing at real traces, and no secret anywhere."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.telemetry.logs import BatchingHandler, JsonFormatter, TraceContextFilter, direct_info
from gateway.telemetry.metrics import Metrics, ModelLabels
from gateway.telemetry.tracing import DropCounter, tracer_provider_from_env
from tests.conftest import SECRET, LiveServer, completed_image, failed, free_port, progress

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"
SIGNING_KEY = "whsec_" + base64.b64encode(b"telemetry-test-key-0123456789").decode()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Observed:
    client: AsyncTestClient[Any]
    spans: InMemorySpanExporter
    registry: CollectorRegistry = field(repr=False)

    async def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = (await self.client.get("/metrics")).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
async def observed(tmp_path: Path) -> AsyncIterator[Observed]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = CollectorRegistry()
    settings = Settings(
        webhook_secret=SECRET,
        signing_keys=(base64.b64decode(SIGNING_KEY.removeprefix("whsec_")),),
        database=SqliteDatabase(str(tmp_path / "t.db")),
    )
    async with AsyncTestClient(app=create_app(settings, registry=registry, tracer_provider=provider)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        yield Observed(client, spans, registry)


def with_model(payload: dict[str, Any], model: str | None, seconds: float | None = None) -> dict[str, Any]:
    metadata = {k: v for k, v in (("model_name", model), ("generation_time_seconds", seconds)) if v is not None}
    data = payload.setdefault("data", {})
    data["metadata"] = metadata
    return payload


def blog_completed(job_id: str, model: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": "completed",
        "timestamp": "2025-10-21T16:45:00Z",
        "data": {"article": {"title": "T"}, "metadata": {"model_name": model, "generation_time_seconds": 40}},
    }


def two_images(job_id: str) -> dict[str, Any]:
    payload = completed_image(job_id=job_id)
    payload["data"]["images"] *= 2
    return with_model(payload, "flux", 3.0)


# (route, body or None for a raw request, extra headers, expected kind label, expected outcome)
SCRIPT: list[tuple[str, Any, dict[str, str], str]] = [
    (IMAGE, with_model(completed_image(job_id="i1"), "gemini", 12.5), {}, "applied"),
    (IMAGE, two_images("i2"), {}, "applied"),
    (IMAGE, with_model(progress("generating", job_id="i3"), "gemini"), {}, "applied"),
    (IMAGE, failed(job_id="i3"), {}, "applied"),  # failure takes its model from the earlier event
    (IMAGE, failed(job_id="i4"), {}, "applied"),  # no model ever: unknown
    (IMAGE, progress("saving", job_id="i5"), {}, "applied"),
    (IMAGE, progress("pending", job_id="i6"), {}, "applied"),
    (IMAGE, progress("generating", job_id="i6", timestamp="2025-10-21T16:44:30Z"), {}, "applied"),
    (BLOG, blog_completed("b1", "writer"), {}, "applied"),
    (IMAGE, with_model(completed_image(job_id="i1"), "gemini", 12.5), {}, "duplicate"),
    (BLOG, blog_completed("b1", "writer"), {}, "duplicate"),
    (IMAGE, progress("generating", job_id="i1", timestamp="2025-10-21T16:50:00Z"), {}, "stale"),
    (IMAGE, {"job_id": "i7", "status": "completed", "timestamp": "2025-10-21T16:45:00Z"}, {}, "invalid"),
    (IMAGE, completed_image(job_id="i8"), {"X-Webhook-Secret": ""}, "unauthorized"),
    (IMAGE, completed_image(job_id="i8"), {"X-Webhook-Secret": "wrong"}, "unauthorized"),
    (BLOG, blog_completed("i1", "writer"), {}, "conflict"),
    (IMAGE, None, {"Content-Length": str(10 * 1024 * 1024)}, "too_large"),
    (IMAGE, None, {"Content-Type": "text/plain"}, "unsupported_media_type"),
]


async def test_every_number_equals_the_ground_truth(observed: Observed) -> None:
    expected_requests: Counter[tuple[str, str]] = Counter()
    for route, payload, headers, outcome in SCRIPT:
        kind = "image" if route == IMAGE else "blog"
        if payload is None:
            response = await observed.client.post(
                route, content=b"{}", headers={"Content-Type": "application/json", **headers}
            )
        else:
            request_headers = dict(headers)
            if request_headers.get("X-Webhook-Secret") == "":
                del request_headers["X-Webhook-Secret"]
                observed.client.headers.pop("X-Webhook-Secret")
            response = await observed.client.post(route, json=payload, headers=request_headers)
            observed.client.headers["X-Webhook-Secret"] = SECRET
        answered = response.json().get("outcome") if response.status_code == 200 else None
        assert answered == outcome or response.status_code != 200, (route, payload, response.text)
        expected_requests[(kind, outcome)] += 1

    samples = await observed.samples()

    def value(name: str, **labels: str) -> float:
        """The sample's value, every sender together (the one sender here is ``default``, or ``unknown``)."""
        wanted = frozenset(labels.items())
        return sum(
            count
            for (sample, found), count in samples.items()
            if sample == name and frozenset(item for item in found if item[0] != "sender") == wanted
        )

    for kind in ("image", "blog"):
        for outcome in (
            "applied",
            "duplicate",
            "stale",
            "invalid",
            "unauthorized",
            "conflict",
            "too_large",
            "unsupported_media_type",
            "rate_limited",
            "unavailable",
        ):
            want = expected_requests[(kind, outcome)]
            assert value("gateway_webhook_requests_total", kind=kind, outcome=outcome) == want, (kind, outcome)
            assert value("gateway_webhook_request_duration_seconds_count", kind=kind, outcome=outcome) == want

    assert value("gateway_jobs_finished_total", kind="image", model="gemini", result="completed") == 1
    assert value("gateway_jobs_finished_total", kind="image", model="flux", result="completed") == 1
    assert value("gateway_jobs_finished_total", kind="image", model="gemini", result="failed") == 1
    assert value("gateway_jobs_finished_total", kind="image", model="unknown", result="failed") == 1
    assert value("gateway_jobs_finished_total", kind="blog", model="writer", result="completed") == 1
    assert value("gateway_generation_duration_seconds_count", kind="image", model="gemini") == 1
    assert value("gateway_generation_duration_seconds_sum", kind="image", model="gemini") == 12.5
    assert value("gateway_generation_duration_seconds_sum", kind="image", model="flux") == 3.0
    assert value("gateway_generation_duration_seconds_count", kind="blog", model="writer") == 1
    assert value("gateway_images_total", model="gemini") == 1
    assert value("gateway_images_total", model="flux") == 2
    assert value("gateway_job_duration_seconds_count", kind="image", result="completed") == 2
    assert value("gateway_job_duration_seconds_count", kind="image", result="failed") == 2
    assert value("gateway_job_duration_seconds_count", kind="blog", result="completed") == 1
    # First events create jobs (one transition each); i3 and i6 then move forward once more.
    assert value("gateway_job_transitions_total", kind="image", status="completed") == 2
    assert value("gateway_job_transitions_total", kind="image", status="failed") == 2
    assert value("gateway_job_transitions_total", kind="image", status="generating") == 2
    assert value("gateway_job_transitions_total", kind="image", status="saving") == 1
    assert value("gateway_job_transitions_total", kind="image", status="pending") == 1
    assert value("gateway_job_transitions_total", kind="blog", status="completed") == 1
    assert value("gateway_webhook_auth_failures_total", reason="missing") == 1
    assert value("gateway_webhook_auth_failures_total", reason="bad_secret") == 1
    assert value("gateway_jobs_in_progress", kind="image", status="saving") == 1
    assert value("gateway_jobs_in_progress", kind="image", status="generating") == 1
    assert value("gateway_jobs_in_progress", kind="image", status="pending") == 0
    assert value("gateway_jobs_in_progress", kind="blog", status="generating") == 0
    assert value("gateway_job_oldest_in_progress_seconds", kind="image") >= 0
    assert value("gateway_idempotency_keys") == 10  # one per recorded event, stale included (no webhook-id sent)
    assert value("gateway_build_info", version=__import__("gateway").__version__) == 1


async def test_model_label_is_bounded(tmp_path: Path) -> None:
    labels = ModelLabels(limit=2)
    assert [labels(m) for m in ("a", "b", "c", "a", None)] == ["a", "b", "other", "a", "unknown"]
    allowed = ModelLabels(allowed=["flux"])
    assert [allowed(m) for m in ("flux", "gemini")] == ["flux", "other"]


def signed_headers(body: str, msg_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SIGNING_KEY).sign(msg_id, now, body),
    }


async def test_server_span_continues_the_senders_trace_with_stage_events(observed: Observed) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}
    response = await observed.client.post(IMAGE, json=completed_image(job_id="traced"), headers=headers)
    assert response.status_code == 200
    spans = observed.spans.get_finished_spans()
    server = next(span for span in spans if span.name == "POST /api/webhooks/image-completion")
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_SPAN_ID
    attributes = dict(server.attributes or {})
    assert attributes["gateway.job_id"] == "traced"
    assert attributes["gateway.kind"] == "image"
    assert attributes["gateway.status"] == "completed"
    assert attributes["gateway.outcome"] == "applied"
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/api/webhooks/image-completion"
    assert attributes["http.response.status_code"] == 200
    stages = [event.name for event in server.events]
    assert stages == ["authenticate", "decode", "deduplicate", "persist"]
    assert all((event.attributes or {})["gateway.stage.duration_ms"] >= 0 for event in server.events)


async def test_unsampled_sender_gets_no_spans(observed: Observed) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"}
    assert (await observed.client.post(IMAGE, json=completed_image(), headers=headers)).status_code == 200
    assert observed.spans.get_finished_spans() == ()


async def test_openmetrics_exemplars_point_at_exported_traces(observed: Observed) -> None:
    await observed.client.post(IMAGE, json=with_model(completed_image(job_id="ex"), "gemini", 12.5))
    trace_ids = {format(span.context.trace_id, "032x") for span in observed.spans.get_finished_spans()}
    text = (await observed.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})).text
    exemplar_ids = _exemplars(text)
    names = {name for name, _ in exemplar_ids}
    assert "gateway_webhook_request_duration_seconds" in names
    assert "gateway_generation_duration_seconds" in names
    assert {trace_id for _, trace_id in exemplar_ids} <= trace_ids
    assert exemplar_ids


def _exemplars(openmetrics: str) -> set[tuple[str, str]]:
    """(histogram, trace id) of every exemplar. A regex, because client_python's own OpenMetrics parser
    rejects a histogram with negative buckets (the clock-skew one), which Prometheus accepts."""
    return set(re.findall(r'^(\w+)_bucket\{[^}]*\} \S+ # \{trace_id="([0-9a-f]{32})"\}', openmetrics, re.MULTILINE))


async def test_no_secret_or_signature_leaks(observed: Observed, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps(completed_image(job_id="secretive"))
    headers = signed_headers(body, "msg_leak")
    signature = headers["webhook-signature"].split(",", 1)[1]
    with caplog.at_level(logging.DEBUG):
        await observed.client.post(IMAGE, content=body, headers=headers)
        observed.client.headers["X-Webhook-Secret"] = SECRET + "-wrong"
        await observed.client.post(IMAGE, json=completed_image(job_id="refused"))
        await observed.client.post(IMAGE, content=body, headers=headers | {"webhook-signature": "v1,AAAA"})
    metrics_text = (await observed.client.get("/metrics")).text
    span_text = " ".join(
        f"{span.name} {dict(span.attributes or {})} {[event.attributes for event in span.events]}"
        for span in observed.spans.get_finished_spans()
    )
    logs = caplog.text + " ".join(str(record.__dict__) for record in caplog.records)
    secrets = (SECRET, signature, SIGNING_KEY.removeprefix("whsec_"), '"images"')
    for haystack in (logs, metrics_text, span_text):
        for secret in secrets:
            assert secret not in haystack


class BlockedExporter(SpanExporter):
    """An exporter stuck until released, like a collector that stopped answering."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(timeout=30)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


async def test_stuck_exporter_never_delays_webhooks_and_drops_are_counted(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics_registry = CollectorRegistry()
    dropped = Metrics(metrics_registry, ["image"], ModelLabels()).spans_dropped
    exporter = BlockedExporter()
    counter = DropCounter(dropped, queue_size=8)
    provider = TracerProvider()
    provider.add_span_processor(counter)
    provider.add_span_processor(
        BatchSpanProcessor(counter.watch(exporter), max_queue_size=8, max_export_batch_size=4, schedule_delay_millis=10)
    )
    settings = Settings(webhook_secret=SECRET, database=SqliteDatabase(str(tmp_path / "d.db")))
    async with AsyncTestClient(app=create_app(settings, registry=registry, tracer_provider=provider)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        for number in range(40):
            response = await client.post(IMAGE, json=completed_image(job_id=f"job-{number}"))
            assert response.status_code == 200
        # Every webhook was answered while the exporter was still stuck.
        assert exporter.exported == 0
    exporter.release.set()
    provider.shutdown()  # flushes what the queue still holds
    lost = dropped._value.get()
    assert lost > 0
    assert exporter.exported + lost == 40  # one server span per webhook: each exported or counted lost


def test_unreachable_collector_counts_failed_exports() -> None:
    registry = CollectorRegistry()
    dropped = Metrics(registry, ["image"], ModelLabels()).spans_dropped
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "0.2",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the OTLP exporter reads its endpoint and timeout from the process environment
    try:
        provider = tracer_provider_from_env(dropped, env)
        with provider.get_tracer("test").start_as_current_span("lost"):
            pass
        provider.force_flush(timeout_millis=5000)
        provider.shutdown()
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
    assert dropped._value.get() == 1


def test_json_log_line_per_request_with_trace_ids(tmp_path: Path) -> None:
    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET, "GATEWAY_LOG_FORMAT": "json"})
    try:
        headers = {"X-Webhook-Secret": SECRET, "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}
        httpx.post(f"{server.url}{IMAGE}", json=completed_image(job_id="logged"), headers=headers)
        httpx.post(f"{server.url}{IMAGE}", json={"job_id": "logged"}, headers=headers)
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("logger") == "gateway.webhook"]
    assert [(line["job_id"], line["outcome"], line["http_status"]) for line in requests[:1]] == [
        ("logged", "applied", 200)
    ]
    assert requests[1]["outcome"] == "invalid"
    # No exporter configured: the gateway records no span of its own, so its lines name the sender's span.
    assert all(line["trace_id"] == TRACE_ID and line["span_id"] == PARENT_SPAN_ID for line in requests)
    assert all({"kind", "duration_ms", "level", "time"} <= line.keys() for line in requests)
    assert SECRET not in server.log.read_text()


async def test_rate_limited_webhooks_are_counted(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = Settings.from_env(
        {
            "WEBHOOK_SECRET": SECRET,
            "GATEWAY_RATE_LIMIT": "1/minute",
            "GATEWAY_RATE_LIMIT_BURST": "2",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'rl.db'}",
        }
    )
    async with AsyncTestClient(app=create_app(settings, registry=registry)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        statuses = [(await client.post(IMAGE, json=completed_image(job_id=f"rl-{n}"))).status_code for n in range(5)]
        text = (await client.get("/metrics")).text
    assert statuses == [200, 200, 429, 429, 429]
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    # Refused by the address's budget before any credential was read: no sender is known.
    unknown, default = ("sender", "unknown"), ("sender", "default")
    assert (
        samples[
            ("gateway_webhook_requests_total", frozenset({("kind", "image"), ("outcome", "rate_limited"), unknown}))
        ]
        == 3
    )
    assert (
        samples[("gateway_webhook_requests_total", frozenset({("kind", "image"), ("outcome", "applied"), default}))]
        == 2
    )
    assert samples[("gateway_rate_limit_decisions_total", frozenset({("result", "limited"), unknown}))] == 3
    assert samples[("gateway_rate_limit_decisions_total", frozenset({("result", "allowed"), default}))] == 2


def test_a_stdout_nobody_reads_never_blocks_the_gateway(tmp_path: Path) -> None:
    """A stalled log shipper fills the pipe: the gateway keeps answering (and drops log lines)."""
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("GATEWAY_", "WEBHOOK_"))},
        "WEBHOOK_SECRET": SECRET,
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_FORMAT": "json",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'stalled.db'}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 20  # as LiveServer waits: a loaded machine starts slowly
            while True:
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "gateway did not start listening within 20 s"
                    time.sleep(0.05)
            # ~600 JSON lines are several times what a pipe buffers (64 KiB) while nobody reads it.
            answers = [
                client.post(IMAGE, json=completed_image(job_id=f"stalled-{n}"), headers={"X-Webhook-Secret": SECRET})
                for n in range(600)
            ]
            assert all(answer.status_code == 200 for answer in answers)
            assert client.get("/healthz").status_code == 200
    finally:
        server.kill()
        server.wait(timeout=10)


def test_the_direct_webhook_line_is_the_line_logging_would_write() -> None:
    """The per-webhook line skips logging's machinery under `gateway serve`'s JSON logs: it must come
    out exactly as a record through the handler would, trace ids included."""
    stream = io.StringIO()
    handler = BatchingHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logger = logging.getLogger("gateway.webhook")
    try:
        write = direct_info(logger)
        assert write is not None
        fields: dict[str, object] = {"kind": "image", "job_id": "j1", "status": None, "http_status": 200}
        parent = trace.SpanContext(int(TRACE_ID, 16), int(PARENT_SPAN_ID, 16), is_remote=True)
        with trace.use_span(trace.NonRecordingSpan(parent)):
            logger.info("webhook %s", "applied", extra=dict(fields))
            write("webhook applied", dict(fields))
        handler._drain()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    through_logging, direct = (json.loads(line) for line in stream.getvalue().splitlines())
    for line in (direct, through_logging):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line.pop("time"))
    assert direct == through_logging
    assert direct["trace_id"] == TRACE_ID
    assert direct["span_id"] == PARENT_SPAN_ID
    assert "status" not in direct
