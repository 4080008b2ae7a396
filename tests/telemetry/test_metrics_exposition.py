"""The lock-free metrics expose exactly what prometheus_client's Counter and Histogram expose.

The webhook and delivery metrics count without a lock (``LoopCounter``, ``LoopHistogram``); a scrape must
not see the difference: the same updates on the gateway's metrics and on the same metrics built from
prometheus_client's own classes give the same bytes, in the text format and in OpenMetrics (exemplars
included), with the clock fixed so that ``_created`` and exemplar timestamps agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from gateway.telemetry import metrics as module
from gateway.telemetry.metrics import Metrics, ModelLabels

CLOCK = SimpleNamespace(time=lambda: 1_764_720_000.25)
TRACE = {"trace_id": "0af7651916cd43dd8448eb211c80319c"}


@contextmanager
def fixed_clock() -> Iterator[None]:
    with mock.patch("prometheus_client.metrics.time", CLOCK), mock.patch.object(module, "time", CLOCK):
        yield


def both() -> tuple[tuple[Metrics, CollectorRegistry], tuple[Metrics, CollectorRegistry]]:
    """The gateway's metrics, and the same metrics built from prometheus_client's locked classes."""
    shipped_registry, stock_registry = CollectorRegistry(), CollectorRegistry()
    shipped = Metrics(shipped_registry, ["image", "blog"], ModelLabels())
    with mock.patch.object(module, "LoopCounter", Counter), mock.patch.object(module, "LoopHistogram", Histogram):
        stock = Metrics(stock_registry, ["image", "blog"], ModelLabels())
    assert type(shipped.webhook_requests) is module.LoopCounter  # the comparison is not with itself
    assert type(stock.webhook_requests) is Counter
    return (shipped, shipped_registry), (stock, stock_registry)


def assert_same_exposition(update: Callable[[Metrics], None]) -> bytes:
    with fixed_clock():
        (shipped, shipped_registry), (stock, stock_registry) = both()
        update(shipped)
        update(stock)
    text = generate_latest(shipped_registry)
    assert text == generate_latest(stock_registry)
    assert openmetrics.generate_latest(shipped_registry) == openmetrics.generate_latest(stock_registry)
    return text


def every_hot_metric(metrics: Metrics) -> None:
    count, duration = metrics.request_children[("image", "applied", "default")]
    for seconds in (0.0, 1e-9, 0.00025, 0.0049, 0.005, 0.0051, 9.99, 10.0, 11.0, math.inf, math.nan):
        count.inc()
        duration.observe(seconds)
    duration.observe(0.003, TRACE)  # an exemplar on the 0.005 bucket
    metrics.request_children[("blog", "duplicate", "unknown")][0].inc(2.5)
    metrics.transition_children[("image", module.Status.COMPLETED)].inc()
    metrics.jobs_finished.labels("image", "gemini", "completed", "default").inc()
    metrics.jobs_finished.labels("image", "other", "failed", "default").inc(3)
    metrics.job_duration.labels("image", "completed").observe(42.0)
    metrics.generation_duration.labels("image", "gemini").observe(12.5, TRACE)
    metrics.images.labels("gemini").inc(4)
    for skew in (-400.0, -300.0, -0.05, 0.0, 0.05, 301.0, -math.inf):
        metrics.clock_skew.observe(skew)
    for reason in module.AuthFailure:
        metrics.auth_failure_children[reason, "unknown"].inc()
    metrics.rate_limit_decisions.labels("allowed", "default").inc()
    metrics.deliveries.labels("http", "delivered").inc()
    metrics.deliveries.labels("http", "retried").inc(1, {"trace_id": "1"})
    metrics.delivery_duration.labels("http").observe(0.02, TRACE)


def test_every_webhook_and_delivery_metric_exposes_the_bytes_prometheus_client_would() -> None:
    text = assert_same_exposition(every_hot_metric)
    assert b'gateway_webhook_requests_total{kind="image",outcome="applied",sender="default"} 11.0' in text
    assert b'gateway_webhook_request_duration_seconds_bucket{kind="image",le="0.005",outcome="applied"} 6.0' in text


def test_nothing_observed_exposes_the_same_zero_series() -> None:
    assert_same_exposition(lambda metrics: None)


@settings(deadline=None, max_examples=60)  # two registries an example: slow on a loaded host
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40))
def test_any_observations_land_in_the_buckets_prometheus_client_would_choose(values: list[float]) -> None:
    def update(metrics: Metrics) -> None:
        for value in values:
            metrics.clock_skew.observe(value)
            metrics.request_children[("image", "applied", "default")][1].observe(value)

    assert_same_exposition(update)


def test_the_metrics_refuse_what_prometheus_client_refuses() -> None:
    (shipped, _), (stock, _) = both()
    for metrics in (shipped, stock):
        with pytest.raises(ValueError, match="non-negative"):
            metrics.images.labels("gemini").inc(-1)
        with pytest.raises(ValueError, match="128"):
            metrics.request_children[("image", "applied", "default")][1].observe(0.1, {"trace_id": "x" * 200})
