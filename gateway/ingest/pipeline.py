"""The ingest pipeline, every stage in order. Read this module top to bottom.

1. rate limit -- the sender's budget, then the process's (429 with ``Retry-After`` and ``RateLimit``),
   before anything else reads the request, so a refused request costs almost nothing
2. admission  -- content type and announced size checked from the headers alone (415, 413)
3. body       -- the body read, cut off past the size limit (413)
4. authenticate -- shared secret or Standard Webhooks signature (401)
5. decode     -- msgspec validation into a normalised event (400 naming the field path)
6. deduplicate -- a delivery seen before is acknowledged as ``duplicate`` and changes nothing
7. transition + persist -- one job-store transaction decides the status change and records the event
   (409 for a job of another kind; 503 with ``Retry-After`` when a store fails, never half-applied)

The transport (:mod:`gateway.http`) only turns a request into headers and body chunks and the result
into a response, so the whole pipeline is testable without HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from gateway.ingest.admission import check_headers, read_body
from gateway.ingest.authenticate import Authenticator
from gateway.ingest.decode import decode_event
from gateway.ingest.deduplicate import idempotency_keys
from gateway.ingest.errors import Refusal, Rejection
from gateway.model import KindConflict, Outcome, Status
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.ingest.ratelimit import RateLimiter
    from gateway.kinds import JobKind
    from gateway.stores.base import IdempotencyStore, JobStore

__all__ = ("Accepted", "Pipeline")

logger = logging.getLogger(__name__)

_MAX_DELIVERY_ID = 256
_RETRY_AFTER_SECONDS = "5"
_NO_HEADERS: Mapping[str, str] = {}


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The 200 answer: the webhook is durably recorded (or was already)."""

    received: bool = True
    job_id: str
    status: Status
    """The job's status after this webhook."""
    outcome: Outcome


class Pipeline:
    """Takes one webhook from raw headers and body to an event applied exactly once."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        idempotency: IdempotencyStore,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._limiter = limiter
        self._max_body_bytes = settings.max_body_bytes
        self._authenticator = Authenticator(settings.webhook_secret, settings.signing_keys, settings.tolerance_seconds)
        self._jobs = jobs
        self._idempotency = idempotency
        self._clock = clock

    async def ingest(
        self, kind: JobKind, headers: Mapping[str, str], chunks: AsyncIterable[bytes], *, client: str
    ) -> tuple[Accepted, Mapping[str, str]]:
        """Run every stage; return the answer and its headers (``RateLimit``), or raise :class:`Rejection`.

        ``headers`` must be keyed by lower-case names (as ASGI servers deliver them); ``client`` is the
        peer's address, the sender unless a trusted proxy names another in ``X-Forwarded-For``.
        """
        answer_headers = _NO_HEADERS if self._limiter is None else await self._limiter.admit(client, headers)
        check_headers(headers, self._max_body_bytes)
        body = await read_body(chunks, self._max_body_bytes)

        now = self._clock()
        if self._authenticator.verify(headers, body, now) is not None:
            raise Rejection(401, Refusal.UNAUTHORIZED, "Missing or invalid webhook credentials")

        delivery_id = headers.get("webhook-id")
        if delivery_id is not None and len(delivery_id) > _MAX_DELIVERY_ID:
            raise Rejection(400, Refusal.INVALID, f"webhook-id is longer than {_MAX_DELIVERY_ID} characters")
        event = decode_event(kind, body, delivery_id, datetime.fromtimestamp(now, UTC))

        keys = idempotency_keys(event)
        if not await self._claim(keys):
            status = await self._status_of(event.job_id)
            duplicate = Accepted(job_id=event.job_id, status=status or event.status, outcome=Outcome.DUPLICATE)
            return duplicate, answer_headers

        try:
            applied = await self._jobs.apply(event)
        except KindConflict as conflict:
            await self._release_quietly(keys)
            raise Rejection(
                409,
                Refusal.CONFLICT,
                f"Job {conflict.job_id!r} is a {conflict.kind!r} job: post its webhooks to "
                f"/api/webhooks/{conflict.kind}-completion",
            ) from None
        except StoreUnavailable:
            await self._release_quietly(keys)
            raise _unavailable() from None
        except BaseException:
            # Cancelled (client gone, shutdown): the claim must not outlive the work it stood for.
            await self._release_quietly(keys)
            raise
        return Accepted(job_id=event.job_id, status=applied.status, outcome=applied.outcome), answer_headers

    async def _claim(self, keys: tuple[str, ...]) -> bool:
        try:
            return await self._idempotency.claim(keys)
        except StoreUnavailable:
            raise _unavailable() from None

    async def _status_of(self, job_id: str) -> Status | None:
        try:
            return await self._jobs.status_of(job_id)
        except StoreUnavailable:
            raise _unavailable() from None

    async def _release_quietly(self, keys: tuple[str, ...]) -> None:
        try:
            await self._idempotency.release(keys)
        except StoreUnavailable:
            logger.exception("could not release idempotency keys after a failure")


def _unavailable() -> Rejection:
    return Rejection(
        503,
        Refusal.UNAVAILABLE,
        "A store is unavailable; nothing was recorded. Retry later with the same request.",
        headers={"Retry-After": _RETRY_AFTER_SECONDS},
    )
