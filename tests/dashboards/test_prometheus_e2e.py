"""The dashboards and alerts against a real Prometheus scraping a real gateway.

One gateway (publishing applied events to a JetStream stream of its own, so deliveries happen) and one
``prometheus`` (scraping every second, with the generated rules and their fast test variant) serve the
whole module. A scripted mix of webhooks (two kinds, several models, every outcome)
runs first; then every panel query of every dashboard, with its template variables substituted as
Grafana would, must return data; then a burst of failures must make the failure alert fire, and its end
must resolve it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import pytest
from standardwebhooks import Webhook

from benchmarks.run import Sink
from dashboards.config import CONFIG, FAST_TEST_CONFIG
from tests.conftest import SECRET, LiveServer, completed_image, failed, progress
from tests.monitoring import (
    DASHBOARDS,
    Prometheus,
    binary,
    committed_dashboards,
    finite,
    load_yaml,
    panels,
    regex_escape,
)

pytestmark = pytest.mark.timeout(180)

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"
SIGNING_KEY = "whsec_" + base64.b64encode(b"e2e-dashboards-signing-key-0123").decode()
IMAGE_MODELS = ("gemini-2.0-flash-exp", "flux")
RATE_INTERVAL = "1m"
"""What ``$__rate_interval`` becomes in the panel queries: the mixed traffic fits inside it."""
FAST_BURN = FAST_TEST_CONFIG.slo.burn_rates[0]


@dataclass
class Stack:
    gateway: LiveServer
    prometheus: Prometheus
    client: httpx.Client
    counter: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def post(self, route: str, payload: Any = None, headers: dict[str, str | None] | None = None, **kwargs: Any) -> int:
        request_headers = {"X-Webhook-Secret": SECRET, **(headers or {})}
        request_headers = {name: value for name, value in request_headers.items() if value is not None}
        if payload is not None:
            kwargs["json"] = payload
        status = self.client.post(route, headers=request_headers, **kwargs).status_code
        self.answers[str(status)] = self.answers.get(str(status), 0) + 1
        return status

    def image_job(self, model: str, *, fail: bool = False, generation_seconds: float = 12.5) -> None:
        job_id = self.next_id("img")
        start = progress("generating", job_id=job_id)
        start["data"] = {"metadata": {"model_name": model}}
        assert self.post(IMAGE, start) == 200
        if fail:
            assert self.post(IMAGE, failed(job_id=job_id)) == 200
            return
        done = completed_image(job_id=job_id)
        done["data"]["metadata"] = {"model_name": model, "generation_time_seconds": generation_seconds}
        done["data"]["images"] *= 2 if model == "flux" else 1
        assert self.post(IMAGE, done) == 200

    def blog_job(self, *, fail: bool = False) -> None:
        job_id = self.next_id("blog")
        assert self.post(BLOG, progress("pending", job_id=job_id)) == 200
        if fail:
            assert self.post(BLOG, failed(job_id=job_id)) == 200
            return
        done = {
            "job_id": job_id,
            "status": "completed",
            "timestamp": "2025-10-21T16:45:00Z",
            "data": {"article": {"title": "T"}, "metadata": {"model_name": "writer", "generation_time_seconds": 40}},
        }
        assert self.post(BLOG, done) == 200

    def mixed_round(self, number: int) -> None:
        """About 25 webhooks of every kind of answer; one job in 25 fails, well inside the fast page."""
        for index in range(4):
            model = IMAGE_MODELS[index % 2]
            self.image_job(model, fail=(number % 4 == 0 and index == 0), generation_seconds=3.0 + 9 * index)
        self.blog_job(fail=(number == 2))
        self.blog_job()
        # Left in progress: the in-progress gauges and the oldest job's age.
        stuck = progress("generating", job_id=self.next_id("stuck"))
        assert self.post(IMAGE, stuck) == 200
        # Duplicate and stale deliveries of a finished job.
        job_id = self.next_id("img")
        done = completed_image(job_id=job_id)
        assert self.post(IMAGE, done) == 200
        assert self.post(IMAGE, done) == 200
        assert self.post(IMAGE, progress("saving", job_id=job_id, timestamp="2025-10-21T16:50:00Z")) == 200
        # Refusals: invalid, wrong kind, unauthenticated (two reasons), wrong content type.
        assert self.post(IMAGE, {"job_id": "x", "status": "completed", "timestamp": "2025-10-21T16:45:00Z"}) == 400
        assert self.post(BLOG, progress("pending", job_id=job_id)) == 409
        assert self.post(IMAGE, completed_image(), {"X-Webhook-Secret": "wrong"}) == 401
        assert self.post(IMAGE, completed_image(), {"X-Webhook-Secret": None}) == 401
        assert self.post(IMAGE, None, {"Content-Type": "text/plain"}, content=b"{}") == 415
        # A Standard Webhooks signed delivery: the clock-skew histogram.
        body = json.dumps(progress("pending", job_id=self.next_id("signed")))
        msg_id = f"msg_{self.counter}"
        now = datetime.now(UTC)
        signed: dict[str, str | None] = {
            "Content-Type": "application/json",
            "X-Webhook-Secret": None,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(SIGNING_KEY).sign(msg_id, now, body),
        }
        assert self.post(IMAGE, None, signed, content=body) == 200


def prometheus_config(target: str) -> dict[str, Any]:
    """The stack's own scrape configuration, pointed at the test gateway, scraping every second."""
    config: dict[str, Any] = load_yaml(DASHBOARDS / "prometheus" / "prometheus.yml")
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config.pop("alerting", None)
    config["rule_files"] = [
        str(DASHBOARDS / "prometheus" / "rules.yml"),
        str(DASHBOARDS / "prometheus" / "rules-fast-test.yml"),
    ]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == CONFIG.job]
    assert len(jobs) == 1, "the stack's Prometheus must scrape the gateway under the rules' job name"
    jobs[0].pop("dns_sd_configs", None)  # the stack finds its replicas by DNS; here there is one target
    jobs[0]["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = jobs
    return config


async def _delete_stream(url: str, name: str) -> None:
    client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream(timeout=2).delete_stream(name)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Stack]:
    executable = binary("prometheus")
    workdir: Path = tmp_path_factory.mktemp("e2e")
    # Applied events are published to JetStream (a stream of this run's own), so the forwarding panels
    # show real deliveries.
    tag = uuid.uuid4().hex[:12]
    stream = f"TEST_E2E_{tag}"
    # Spans are recorded (and exemplars attached) only when a collector receives them: a stand-in one.
    collector = Sink()
    gateway = LiveServer(
        workdir,
        {
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            # Far above the test's traffic: nothing is refused, but the limiter's decisions are counted.
            "GATEWAY_RATE_LIMIT": "10000/second",
            "GATEWAY_NATS_URL": nats_url,
            "GATEWAY_NATS_SUBJECT_PREFIX": f"test_e2e_{tag}.jobs",
            "GATEWAY_NATS_STREAM": stream,
        },
    )
    try:
        prometheus = Prometheus(executable, workdir / "prometheus", prometheus_config(f"127.0.0.1:{gateway.port}"))
    except BaseException:
        gateway.stop()
        collector.close()
        raise
    client = httpx.Client(base_url=gateway.url, timeout=5)
    try:
        prometheus.wait_for(f'up{{job="{CONFIG.job}"}} == 1', timeout=15)
        stack = Stack(gateway, prometheus, client)
        # The scripted mix, spread over several scrapes so every counter moves between two of them.
        for number in range(12):
            stack.mixed_round(number)
            time.sleep(0.6)
        time.sleep(3)  # a few scrapes and rule evaluations after the last webhook
        yield stack
    finally:
        client.close()
        prometheus.stop()
        gateway.stop()
        collector.close()
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _delete_stream(nats_url, stream)).result()


def substituted(expr: str, values: dict[str, list[str]]) -> str:
    """``expr`` as Grafana sends it: multi-value variables become ``(a|b)``, escaped for a regex."""
    for name, chosen in values.items():
        escaped = [regex_escape(value) for value in chosen]
        expr = expr.replace(f"${name}", escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})")
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def variable_values(stack: Stack, dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each query variable's options, found by running its ``label_values`` query like Grafana does."""
    values: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match, f"{dashboard['uid']}: variable {variable['name']} is not a label_values query"
        selector = substituted(match.group(1), values)
        options = stack.prometheus.label_values(match.group(2), selector)
        assert options, f"{dashboard['uid']}: variable {variable['name']} has no option ({selector})"
        values[variable["name"]] = sorted(options)
    return values


def test_every_panel_query_returns_data(stack: Stack) -> None:
    assert set(stack.answers) == {"200", "400", "401", "409", "415"}
    checked = 0
    empty: list[str] = []
    for uid, dashboard in committed_dashboards().items():
        values = variable_values(stack, dashboard)
        for panel in panels(dashboard):
            # A repeated panel is drawn once per value of its variable: each copy must show data.
            repeat = panel.get("repeat")
            choices = [{**values, repeat: [value]} for value in values[repeat]] if repeat else [values]
            for chosen in choices:
                for target in panel["targets"]:
                    expr = substituted(target["expr"], chosen)
                    checked += 1
                    if not finite(stack.prometheus.query(expr)):
                        empty.append(f"{uid} / {panel['title']} ({chosen.get(repeat or '', '')}): {expr}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    assert checked >= 40
    print(f"\n{checked} panel queries returned data")


def test_latency_panels_have_exemplars_with_trace_ids(stack: Stack) -> None:
    latency = [
        (panel["title"], target["expr"])
        for dashboard in committed_dashboards().values()
        for panel in panels(dashboard)
        for target in panel["targets"]
        if target.get("exemplar")
    ]
    assert latency
    values = {"job": [CONFIG.job], "instance": [f"127.0.0.1:{stack.gateway.port}"], "model": ["flux"]}
    for title, expr in latency:
        series = stack.prometheus.exemplars(substituted(expr, values), seconds=600)
        trace_ids = [ex["labels"].get("trace_id", "") for s in series for ex in s["exemplars"]]
        assert trace_ids, f"{title}: no exemplar stored for {expr}"
        assert all(re.fullmatch(r"[0-9a-f]{32}", trace_id) for trace_id in trace_ids), title


def fast_page(stack: Stack) -> dict[str, Any] | None:
    for alert in stack.prometheus.alerts():
        labels = alert["labels"]
        if (
            labels.get("alertname") == "GatewayJobFailureBudgetBurn"
            and labels.get("long") == FAST_BURN.long
            and labels.get("kind") == "image"
        ):
            return alert
    return None


def test_failure_alert_fires_and_resolves(stack: Stack) -> None:
    # The mixed traffic's few failures (one job in 25) are within the fast page's threshold.
    for _ in range(4):
        stack.image_job("flux")
    assert fast_page(stack) is None

    started = time.monotonic()
    fired_after = None
    while time.monotonic() - started < 40:
        for index in range(5):  # three failures in five jobs
            stack.image_job("gemini-2.0-flash-exp", fail=index < 3)
        alert = fast_page(stack)
        if alert is not None and alert["state"] == "firing":
            fired_after = time.monotonic() - started
            break
        time.sleep(0.5)
    assert fired_after is not None, f"the failure alert did not fire: {stack.prometheus.alerts()}"
    assert alert["labels"]["severity"] == FAST_BURN.severity
    assert alert["labels"]["short"] == FAST_BURN.short
    assert alert["annotations"]["runbook_url"].endswith("#gatewayjobfailurebudgetburn")
    assert alert["annotations"]["description"].startswith("image jobs on gateway failed at ")

    recovered = time.monotonic()
    resolved_after = None
    while time.monotonic() - recovered < 60:
        for _ in range(5):
            stack.image_job("gemini-2.0-flash-exp")
        if fast_page(stack) is None:
            resolved_after = time.monotonic() - recovered
            break
        time.sleep(0.5)
    assert resolved_after is not None, f"the failure alert did not resolve: {fast_page(stack)}"
    print(f"\nfailure alert fired after {fired_after:.1f} s of failures, resolved {resolved_after:.1f} s after")
