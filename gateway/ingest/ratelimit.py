"""Stage 1: rate limiting, before a byte of the body is read, so a refused request costs almost nothing.

Every request counts against its address's budget, authenticated or not (guessing secrets is throttled
too); an optional global budget protects the process as a whole. The address is the client's, or the
``X-Forwarded-For`` client when the peer is one of ``GATEWAY_TRUSTED_PROXIES``. Once its credentials
name a sender of ``GATEWAY_SENDERS_FILE``, a request also counts against that sender's own budget, if it
declares one (:meth:`RateLimiter.identified`), kept under a key of its own so senders never share one.

The algorithm is GCRA (the generic cell rate algorithm: a token bucket kept as one timestamp per key).
A key's theoretical arrival time (TAT) is when its budget would be whole again. A request at ``now``
pushes it to ``max(TAT, now) + interval`` (``interval`` = window / count) and is allowed when that is at
most ``tolerance`` (burst x interval) ahead of ``now``; a refused request changes nothing. So a sender
may send ``burst`` requests at once, then one per interval. Times are integer microseconds, so a long
burst does not drift. The Redis backend runs the same arithmetic in Lua, on Redis's clock.

``limits`` (the usual Python library) offers fixed, moving and sliding windows but no GCRA or token
bucket, and its Redis moving window keeps a timestamp per request: hence this small module.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gateway.answers import RefusalReason, WebhookRefused, unavailable
from gateway.gcra import RateDecision, gcra
from gateway.senders import DEFAULT_SENDER, UNKNOWN_SENDER
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from gateway.config import IPNetwork, OnError, Rate, Settings
    from gateway.stores.base import RateLimitStore
    from gateway.telemetry.metrics import Metrics

__all__ = ("RateLimiter", "Senders", "client_address", "gcra")

logger = logging.getLogger(__name__)

MICROSECONDS = 1_000_000
GLOBAL_KEY = "global"
SENDER_KEY_PREFIX = "sender:"
"""Keys of the senders' own budgets: no address is written so, so they never share one with an address."""
_RESULTS = ("allowed", "limited", "error")


def client_address(scope: Mapping[str, Any]) -> str:
    """The peer's address from an ASGI scope (``unknown`` when the server does not say, e.g. a Unix socket)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Senders:
    """Who sent a request: the peer's address, or the client a trusted proxy names in ``X-Forwarded-For``.

    The header is read right to left, skipping trusted proxies: the first untrusted hop is the sender.
    Entries left of it were written by that sender, so they can be forged and are never read. Only the
    last ``X-Forwarded-For`` line counts: the nearest proxy either appended to it or added it.
    """

    __slots__ = ("_trusted",)

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted)

    def __call__(self, peer: str, headers: Mapping[str, str]) -> str:
        if not self._trusted:
            return peer
        forwarded = headers.get("x-forwarded-for")
        if forwarded is None or not self._is_trusted(_parse_address(peer)):
            return peer
        sender = peer
        for hop in reversed(forwarded.split(",")):
            address = _parse_address(hop)
            if address is None:
                break  # a hop no proxy would write: keep the last one we could read
            sender = str(address)
            if not self._is_trusted(address):
                break
        return sender

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self._trusted)


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as servers and proxies write it: bare, ``[v6]:port`` or ``v4:port``; IPv4-mapped IPv6
    is read as IPv4 so one sender has one key."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_NO_HEADERS: Mapping[str, str] = {}


class _Policy:
    """One named budget: its GCRA parameters and the header items it produces."""

    __slots__ = ("interval", "item", "name", "tolerance")

    def __init__(self, name: str, rate: Rate) -> None:
        self.name = name
        self.interval = rate.window_seconds * MICROSECONDS // rate.count
        if self.interval < 1:
            raise ValueError(f"{name} rate above one request per microsecond")
        self.tolerance = rate.burst * self.interval
        self.item = f'"{name}";q={rate.count};w={rate.window_seconds}'
        """Its ``RateLimit-Policy`` item, e.g. ``"sender";q=100;w=1``."""

    def state(self, decision: RateDecision) -> tuple[str, int]:
        """The ``RateLimit`` item for ``decision`` and its ``t``: whole seconds until one more request fits
        (so at least 1; for a refused request, the ``Retry-After``)."""
        headroom = max(0, self.tolerance - decision.backlog_us)
        remaining = headroom // self.interval
        wait_us = (remaining + 1) * self.interval - headroom
        wait = -(-wait_us // MICROSECONDS)
        return f'"{self.name}";r={remaining};t={wait}', wait


class _Count(Protocol):
    def inc(self, amount: float = ...) -> None: ...


class _Uncounted:
    """Stands in for a metric when the limiter runs without :class:`Metrics` (tests, benchmarks)."""

    def inc(self, amount: float = 1) -> None:
        return None


class RateLimiter:
    """Stage 1: counts a request against its sender's budget, then the global one; refuses it with 429.

    ``store`` holds the senders' state (memory, or Redis shared by replicas); ``local_store`` the global
    budget, always in this process. When ``store`` fails, ``on_error`` decides: ``allow`` lets the request
    through unlimited, ``deny`` answers 503; either way it is counted, and logged once per incident.
    """

    def __init__(
        self,
        *,
        rate: Rate | None,
        store: RateLimitStore | None,
        global_rate: Rate | None = None,
        local_store: RateLimitStore | None = None,
        on_error: OnError = "allow",
        trusted_proxies: Sequence[IPNetwork] = (),
        metrics: Metrics | None = None,
        sender_rates: Mapping[str, Rate | None] | None = None,
    ) -> None:
        """``sender_rates``: every sender by name, with its own budget (``None``: none); default, the one
        ``default`` sender without a budget."""
        sender_rates = {DEFAULT_SENDER: None} if sender_rates is None else sender_rates
        budgets = {name: rate for name, rate in sender_rates.items() if rate is not None}
        if (
            (rate is not None and store is None)
            or (global_rate is not None and local_store is None)
            or (budgets and store is None)
        ):
            raise ValueError("every configured rate needs a store")
        self._budgets = {name: _Policy(f"{SENDER_KEY_PREFIX}{name}", budget) for name, budget in budgets.items()}
        self._sender = _Policy("sender", rate) if rate is not None else None
        self._global = _Policy("global", global_rate) if global_rate is not None else None
        self._store = store
        self._local_store = local_store
        self._on_error = on_error
        self._senders = Senders(trusted_proxies)
        self._policy_header = ", ".join(policy.item for policy in (self._sender, self._global) if policy)
        self._failures = 0
        # Label children resolved once: the hot path only calls .inc().
        names = (*sender_rates, UNKNOWN_SENDER)
        self._decisions: dict[tuple[str, str], _Count] = dict.fromkeys(
            ((name, result) for name in names for result in _RESULTS), _Uncounted()
        )
        self._store_errors: _Count = _Uncounted()
        if metrics is not None:
            for name, result in self._decisions:
                self._decisions[name, result] = metrics.rate_limit_decisions.labels(result, name)
            self._store_errors = metrics.store_errors.labels("ratelimit", "acquire")
        self._allowed = self._decisions[UNKNOWN_SENDER, "allowed"]
        self._limited = self._decisions[UNKNOWN_SENDER, "limited"]
        self._errors = self._decisions[UNKNOWN_SENDER, "error"]

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: RateLimitStore | None,
        local_store: RateLimitStore | None,
        metrics: Metrics | None = None,
    ) -> RateLimiter | None:
        """The limiter ``settings`` ask for, or ``None`` when no limit is configured."""
        senders = settings.active_senders
        if (
            settings.rate_limit is None
            and settings.global_rate_limit is None
            and all(sender.rate is None for sender in senders)
        ):
            return None
        return cls(
            rate=settings.rate_limit,
            store=store,
            global_rate=settings.global_rate_limit,
            local_store=local_store,
            on_error=settings.rate_limit_on_error,
            trusted_proxies=settings.trusted_proxies,
            metrics=metrics,
            sender_rates={sender.name: sender.rate for sender in senders},
        )

    async def admit(self, peer: str, headers: Mapping[str, str]) -> Mapping[str, str]:
        """Count one request from ``peer``; return the headers of its answer or raise :class:`WebhookRefused`.

        ``headers`` must be keyed by lower-case names; only ``X-Forwarded-For`` is read, and only when
        ``peer`` is a trusted proxy. The decision is counted for sender ``unknown``.
        """
        answer, owed = await self.admit_address(peer, headers)
        if owed:
            self._allowed.inc()
        return answer

    async def admit_address(self, peer: str, headers: Mapping[str, str]) -> tuple[Mapping[str, str], bool]:
        """As :meth:`admit`, except that an allowed request is not counted yet: the second item says so,
        and the caller then counts it once its sender is known (:meth:`identified`, :meth:`unidentified`).
        A refusal (or a failure of the store) is counted at once, for sender ``unknown``."""
        items: list[str] = []
        failed = False
        if self._sender is not None and self._store is not None:
            address = self._senders(peer, headers)
            try:
                decision = await self._store.acquire(address, self._sender.interval, self._sender.tolerance)
            except StoreUnavailable as failure:
                self._store_failed(failure)
                failed = True
                if self._on_error == "deny":
                    self._errors.inc()
                    raise unavailable("ratelimit") from None
            else:
                if self._failures:
                    self._store_recovered()
                item, wait = self._sender.state(decision)
                items.append(item)
                if not decision.allowed:
                    self._limited.inc()
                    raise self._refuse(items, wait)
        if self._global is not None and self._local_store is not None:
            decision = await self._local_store.acquire(GLOBAL_KEY, self._global.interval, self._global.tolerance)
            item, wait = self._global.state(decision)
            items.append(item)
            if not decision.allowed:
                # One count per request: a failure of the senders' store outranks this refusal.
                (self._errors if failed else self._limited).inc()
                raise self._refuse(items, wait)
        if failed:
            self._errors.inc()
        if not self._policy_header:
            return _NO_HEADERS, not failed
        if not items:
            return {"RateLimit-Policy": self._policy_header}, not failed
        return {"RateLimit-Policy": self._policy_header, "RateLimit": ", ".join(items)}, not failed

    async def identified(self, sender: str, answer: Mapping[str, str], owed: bool) -> Mapping[str, str]:
        """Count a request of ``sender`` against its own budget, if it has one; return ``answer`` (the
        headers :meth:`admit_address` gave) with that budget's items, or raise :class:`WebhookRefused` (429
        naming the budget). ``owed``: the request is not counted yet (as :meth:`admit_address` said)."""
        policy = self._budgets.get(sender)
        if policy is None or self._store is None:
            if owed:
                self._decisions[sender, "allowed"].inc()
            return answer
        try:
            decision = await self._store.acquire(policy.name, policy.interval, policy.tolerance)
        except StoreUnavailable as failure:
            self._store_failed(failure)
            self._decisions[sender, "error"].inc()
            if self._on_error == "deny":
                raise unavailable("ratelimit") from None
            return answer
        if self._failures:
            self._store_recovered()
        item, wait = policy.state(decision)
        policies = ", ".join(filter(None, (answer.get("RateLimit-Policy"), policy.item)))
        state = ", ".join(filter(None, (answer.get("RateLimit"), item)))
        if not decision.allowed:
            self._decisions[sender, "limited"].inc()
            raise WebhookRefused(
                429,
                RefusalReason.RATE_LIMITED,
                f"Rate limit of sender {sender!r} exceeded; nothing was recorded. Retry after {wait} s with the "
                "same request.",
                headers={"Retry-After": str(wait), "RateLimit-Policy": policies, "RateLimit": state},
            )
        self._decisions[sender, "allowed"].inc()
        return {"RateLimit-Policy": policies, "RateLimit": state}

    def unidentified(self) -> None:
        """Count an allowed request refused before any sender was identified (sender ``unknown``)."""
        self._allowed.inc()

    def _refuse(self, items: list[str], wait: int) -> WebhookRefused:
        return WebhookRefused(
            429,
            RefusalReason.RATE_LIMITED,
            f"Rate limit exceeded; nothing was recorded. Retry after {wait} s with the same request.",
            headers={"Retry-After": str(wait), "RateLimit-Policy": self._policy_header, "RateLimit": ", ".join(items)},
        )

    def _store_failed(self, failure: StoreUnavailable) -> None:
        self._store_errors.inc()
        self._failures += 1
        if self._failures == 1:
            logger.error(
                "rate limiter store unavailable (%s); GATEWAY_RATE_LIMIT_ON_ERROR=%s applies until it answers",
                failure.__cause__ or failure,
                self._on_error,
            )

    def _store_recovered(self) -> None:
        logger.warning("rate limiter store answers again, after %d failed decisions", self._failures)
        self._failures = 0
