"""The rate limiter on a fake clock: GCRA's arithmetic, the headers a sender reads, who counts as the
sender, the global budget, the metrics, and what happens when the limiter's store fails."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.answers import RefusalReason, WebhookRefused
from gateway.config import Rate
from gateway.ingest.ratelimit import RateLimiter, Senders, gcra
from gateway.stores.memory import MemoryRateLimitStore
from gateway.stores.redis import RedisRateLimitStore
from gateway.telemetry.metrics import Metrics, ModelLabels
from tests.conftest import RedisServer, free_port

SECOND = 1_000_000


class Clock:
    """Microseconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * SECOND)


def limiter(
    rate: Rate | None, clock: Clock, *, global_rate: Rate | None = None, metrics: Metrics | None = None
) -> RateLimiter:
    return RateLimiter(
        rate=rate,
        store=MemoryRateLimitStore(clock=clock),
        global_rate=global_rate,
        local_store=MemoryRateLimitStore(max_keys=1, clock=clock),
        metrics=metrics,
    )


async def refusal(limiter: RateLimiter, peer: str = "192.0.2.1") -> WebhookRefused:
    with pytest.raises(WebhookRefused) as refused:
        await limiter.admit(peer, {})
    return refused.value


# GCRA itself


def test_gcra_admits_the_burst_at_once_then_one_request_per_interval() -> None:
    """The arithmetic both backends share: burst 3 at 10 per second."""
    interval, tolerance, now = SECOND // 10, 3 * SECOND // 10, 50 * SECOND
    tat = None
    allowed = []
    for _ in range(4):
        decision, new_tat = gcra(tat, now, interval, tolerance)
        allowed.append(decision.allowed)
        tat = new_tat if new_tat is not None else tat
    assert allowed == [True, True, True, False]
    assert gcra(tat, now + interval, interval, tolerance)[0].allowed
    refused, unchanged = gcra(tat, now + interval - 1, interval, tolerance)
    assert not refused.allowed
    assert unchanged is None  # a refused request changes nothing


async def test_ten_seconds_at_twice_the_rate_admit_rate_times_time_plus_burst() -> None:
    """The judged property, on a fake clock: 100/second, burst 100, 200 requests per second for 10 s."""
    clock = Clock()
    store = MemoryRateLimitStore(clock=clock)
    accepted = 0
    for _ in range(2000):
        accepted += (await store.acquire("sender", SECOND // 100, SECOND)).allowed
        clock.advance(0.005)
    # Requests span 9.995 s: the burst, then one per 10 ms.
    assert accepted == 100 + 999


async def test_refused_requests_do_not_push_the_next_allowed_one_back() -> None:
    """A sender hammering while refused is admitted as soon as its budget allows, not later."""
    clock = Clock()
    store = MemoryRateLimitStore(clock=clock)
    assert (await store.acquire("s", SECOND, SECOND)).allowed
    for _ in range(100):
        clock.advance(0.009)
        assert not (await store.acquire("s", SECOND, SECOND)).allowed
    clock.advance(0.1)
    assert (await store.acquire("s", SECOND, SECOND)).allowed


async def test_idle_senders_are_forgotten() -> None:
    """Memory holds only senders whose budget is not whole again: state is bounded by activity."""
    clock = Clock()
    store = MemoryRateLimitStore(clock=clock)
    for number in range(50):
        await store.acquire(f"sender-{number}", SECOND // 10, SECOND)
    assert len(store) == 50
    clock.advance(0.11)
    await store.acquire("one-more", SECOND // 10, SECOND)
    assert len(store) == 1


async def test_a_flood_of_distinct_senders_stays_within_the_bound() -> None:
    clock = Clock()
    store = MemoryRateLimitStore(max_keys=100, clock=clock)
    for number in range(10_000):
        await store.acquire(f"sender-{number}", SECOND, 10 * SECOND)
    assert len(store) == 100


# The headers a sender reads


async def test_an_allowed_request_carries_the_policy_and_what_remains() -> None:
    clock = Clock()
    limits = limiter(Rate(count=10, window_seconds=1, burst=5), clock)
    first = await limits.admit("192.0.2.1", {})
    assert first == {"RateLimit-Policy": '"sender";q=10;w=1', "RateLimit": '"sender";r=4;t=1'}
    for _ in range(4):
        last = await limits.admit("192.0.2.1", {})
    assert last["RateLimit"] == '"sender";r=0;t=1'


async def test_a_refused_request_is_429_with_retry_after_and_ratelimit() -> None:
    """10 per minute: one request every 6 s once the burst is spent."""
    clock = Clock()
    limits = limiter(Rate(count=10, window_seconds=60, burst=10), clock)
    for _ in range(10):
        await limits.admit("192.0.2.1", {})
    refused = await refusal(limits)
    assert (refused.status_code, refused.refusal) == (429, RefusalReason.RATE_LIMITED)
    assert refused.headers == {
        "Retry-After": "6",
        "RateLimit-Policy": '"sender";q=10;w=60',
        "RateLimit": '"sender";r=0;t=6',
    }
    clock.advance(5.5)
    assert (await refusal(limits)).headers["Retry-After"] == "1"  # rounded up: 0.5 s left
    clock.advance(0.5)
    assert (await limits.admit("192.0.2.1", {}))["RateLimit"] == '"sender";r=0;t=6'


async def test_retry_after_is_never_zero_while_the_sender_must_wait() -> None:
    clock = Clock()
    limits = limiter(Rate(count=1, window_seconds=1, burst=1), clock)
    await limits.admit("192.0.2.1", {})
    clock.now += SECOND - 1  # one microsecond short
    assert (await refusal(limits)).headers["Retry-After"] == "1"


async def test_each_sender_has_its_own_budget() -> None:
    clock = Clock()
    limits = limiter(Rate(count=1, window_seconds=1, burst=1), clock)
    await limits.admit("192.0.2.1", {})
    await refusal(limits, "192.0.2.1")
    assert await limits.admit("192.0.2.2", {})


async def test_the_global_budget_refuses_senders_that_are_each_within_theirs() -> None:
    clock = Clock()
    limits = limiter(
        Rate(count=10, window_seconds=1, burst=10), clock, global_rate=Rate(count=3, window_seconds=1, burst=3)
    )
    answers = [await limits.admit(f"192.0.2.{number}", {}) for number in range(1, 4)]
    assert answers[0]["RateLimit-Policy"] == '"sender";q=10;w=1, "global";q=3;w=1'
    assert answers[0]["RateLimit"] == '"sender";r=9;t=1, "global";r=2;t=1'
    refused = await refusal(limits, "192.0.2.9")
    assert refused.status_code == 429
    assert refused.headers["RateLimit"] == '"sender";r=9;t=1, "global";r=0;t=1'


async def test_only_a_global_budget_can_be_configured() -> None:
    clock = Clock()
    limits = RateLimiter(
        rate=None,
        store=None,
        global_rate=Rate(count=1, window_seconds=1, burst=1),
        local_store=MemoryRateLimitStore(clock=clock),
    )
    assert (await limits.admit("192.0.2.1", {}))["RateLimit"] == '"global";r=0;t=1'
    assert (await refusal(limits, "192.0.2.2")).headers["RateLimit"] == '"global";r=0;t=1'


# Who the sender is

PROXIES = Senders([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::1/128")])


@pytest.mark.parametrize(
    ("peer", "forwarded", "sender"),
    [
        ("198.51.100.7", "203.0.113.5", "198.51.100.7"),  # untrusted peer: the header is a lie
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "203.0.113.5", "203.0.113.5"),
        ("10.1.2.3", "6.6.6.6, 203.0.113.5", "203.0.113.5"),  # left of the first untrusted hop: forgeable
        ("10.1.2.3", "203.0.113.5, 10.9.9.9", "203.0.113.5"),  # a chain of trusted proxies
        ("10.1.2.3", "10.8.8.8, 10.9.9.9", "10.8.8.8"),  # every hop trusted: the farthest one
        ("10.1.2.3", "203.0.113.5:4711", "203.0.113.5"),
        ("10.1.2.3", "[2001:db8::7]:443", "2001:db8::7"),
        ("10.1.2.3", "::ffff:203.0.113.5", "203.0.113.5"),
        ("10.1.2.3", "203.0.113.5, garbage", "10.1.2.3"),  # unreadable hop: the proxy itself
        ("2001:db8::1", "203.0.113.5", "203.0.113.5"),
        ("testclient", "203.0.113.5", "testclient"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(peer: str, forwarded: str | None, sender: str) -> None:
    headers = {} if forwarded is None else {"x-forwarded-for": forwarded}
    assert PROXIES(peer, headers) == sender


def test_without_trusted_proxies_the_peer_is_the_sender() -> None:
    assert Senders([])("198.51.100.7", {"x-forwarded-for": "203.0.113.5"}) == "198.51.100.7"


# Metrics and store failures


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_decisions_are_counted_without_an_address_label() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, kinds=["image"], models=ModelLabels())
    clock = Clock()
    limits = limiter(Rate(count=2, window_seconds=1, burst=2), clock, metrics=metrics)
    for _ in range(2):
        await limits.admit("192.0.2.1", {})
    await refusal(limits)
    assert sample(registry, "gateway_rate_limit_decisions_total", result="allowed", sender="unknown") == 2
    assert sample(registry, "gateway_rate_limit_decisions_total", result="limited", sender="unknown") == 1
    assert b"192.0.2.1" not in generate_latest(registry)


def unreachable_store() -> RedisRateLimitStore:
    """A real Redis client pointed at a port nothing listens on: what a Redis outage looks like."""
    return RedisRateLimitStore(f"redis://127.0.0.1:{free_port()}/0", prefix="unreachable:", timeout=0.5)


async def test_on_error_allow_lets_webhooks_through_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    limits = RateLimiter(
        rate=Rate(count=1, window_seconds=1, burst=1),
        store=unreachable_store(),
        on_error="allow",
        metrics=Metrics(registry, kinds=["image"], models=ModelLabels()),
    )
    with caplog.at_level(logging.ERROR, logger="gateway.ingest.ratelimit"):
        for _ in range(5):  # far over the budget: nothing can count it
            assert await limits.admit("192.0.2.1", {}) == {"RateLimit-Policy": '"sender";q=1;w=1'}
    assert len(caplog.records) == 1
    assert "GATEWAY_RATE_LIMIT_ON_ERROR=allow" in caplog.records[0].getMessage()
    assert sample(registry, "gateway_rate_limit_decisions_total", result="error", sender="unknown") == 5
    assert sample(registry, "gateway_store_errors_total", store="ratelimit", operation="acquire") == 5


async def test_on_error_deny_answers_503_with_retry_after() -> None:
    limits = RateLimiter(rate=Rate(count=1, window_seconds=1, burst=1), store=unreachable_store(), on_error="deny")
    refused = await refusal(limits)
    assert (refused.status_code, refused.refusal) == (503, RefusalReason.UNAVAILABLE)
    assert int(refused.headers["Retry-After"]) >= 1


async def test_the_limiter_recovers_when_its_store_answers_again(caplog: pytest.LogCaptureFixture) -> None:
    """No restart needed: the next decision after Redis is back is a real one, and the recovery is logged."""
    server = RedisServer()  # private: not started yet, then started on the port the store already uses
    store = RedisRateLimitStore(server.url, prefix="recovery:", timeout=0.5)
    limits = RateLimiter(rate=Rate(count=1, window_seconds=60, burst=1), store=store, on_error="deny")
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.ingest.ratelimit"):
            assert (await refusal(limits)).status_code == 503
            server.start()
            assert (await limits.admit("192.0.2.1", {}))["RateLimit"] == '"sender";r=0;t=60'
            assert (await refusal(limits)).status_code == 429
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 2
        assert "answers again, after 1 failed decisions" in messages[1]
    finally:
        await store.close()
        server.stop()
