"""A sender's ed25519 keys from a JSON Web Key Set (``jwks_url``), kept fresh off the request path.

The set is fetched at start-up, again every :data:`REFRESH_SECONDS`, and on demand when a signature
verifies with none of the cached keys (a rotation the schedule has not seen yet), at most once every
:data:`MIN_REFETCH_SECONDS`. A failed fetch keeps the last good set: verification goes on with it, the
``gateway_jwks_state`` gauge says ``stale``, and one log line marks each change of state. Until a first
set is fetched the state is ``unavailable`` and the sender's webhooks are answered 503 with
``Retry-After`` (:meth:`KeySet.retry_after`); the gateway starts regardless.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.signatures import Ed25519PublicKey

if TYPE_CHECKING:
    from prometheus_client import Gauge

__all__ = (
    "FETCH_TIMEOUT_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_KEYS",
    "MIN_REFETCH_SECONDS",
    "REFRESH_SECONDS",
    "InvalidKeySet",
    "JwksState",
    "KeySet",
    "fetch_url",
    "parse_key_set",
)

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 900.0
"""How often the set is fetched again on schedule."""
MIN_REFETCH_SECONDS = 60.0
"""The shortest time between two fetches: on-demand refreshes, and retries while the endpoint is down."""
FETCH_TIMEOUT_SECONDS = 10.0
MAX_BODY_BYTES = 1024 * 1024
"""A larger answer is no key set: refused unread."""
MAX_KEYS = 32
"""A set with more ed25519 keys is refused (the last good set kept): rotation needs two or three."""
_ED25519_BYTES = 32


class JwksState(enum.StrEnum):
    """The ``state`` label of ``gateway_jwks_state``."""

    FRESH = "fresh"
    """The last fetch succeeded."""
    STALE = "stale"
    """The last fetch failed: verifying with the last good set."""
    UNAVAILABLE = "unavailable"
    """No set fetched yet: the sender's webhooks are answered 503."""


class InvalidKeySet(ValueError):
    """An answer that holds no usable ed25519 key. The message says why in a few words."""


class _Jwk(msgspec.Struct, frozen=True):
    kty: str | None = None
    crv: str | None = None
    x: str | None = None
    use: str | None = None


class _Jwks(msgspec.Struct, frozen=True):
    keys: list[_Jwk]


_decode = msgspec.json.Decoder(_Jwks).decode


def parse_key_set(body: bytes) -> tuple[Ed25519PublicKey, ...]:
    """The ed25519 public keys (``kty`` ``OKP``, ``crv`` ``Ed25519``) of a JWK Set, in order.

    Keys of another type or curve, or meant for encryption (``use`` ``enc``), are skipped, as RFC 7517
    asks of keys a reader does not understand.

    Raises:
        InvalidKeySet: not a JWK Set, an ed25519 key whose ``x`` is not 32 bytes of base64url, no
            ed25519 key at all, or more than :data:`MAX_KEYS` of them.
    """
    try:
        jwks = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidKeySet(f"not a JWK Set ({error})") from None
    found = []
    for position, jwk in enumerate(jwks.keys):
        if jwk.kty != "OKP" or jwk.crv != "Ed25519" or jwk.use not in (None, "sig"):
            continue
        try:
            raw = base64.urlsafe_b64decode((jwk.x or "") + "=" * (-len(jwk.x or "") % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _ED25519_BYTES:
            raise InvalidKeySet(f"keys[{position}].x is not a 32-byte ed25519 key in base64url")
        found.append(Ed25519PublicKey.from_public_bytes(raw))
        if len(found) > MAX_KEYS:
            # A fal signature names no key: each is tried in turn on the event loop, so a set's size is a
            # cost every request, authenticated or not, would pay.
            raise InvalidKeySet(f"holds more than {MAX_KEYS} ed25519 keys")
    if not found:
        raise InvalidKeySet("holds no ed25519 key (kty OKP, crv Ed25519)")
    return tuple(found)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to refuse: it could lead from ``https`` to ``http``."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"accept": "application/json"})  # noqa: S310 (senders.check_jwks_url)
    with _opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as answer:
        body: bytes = answer.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise InvalidKeySet(f"the answer is larger than {MAX_BODY_BYTES} bytes")
    return body


async def fetch_url(url: str) -> bytes:
    """The body of a ``200`` answer to ``GET url`` (verified TLS, no redirects; in a worker thread).

    Raises:
        OSError: the endpoint could not be reached or answered another status (``urllib.error.URLError``).
        InvalidKeySet: the answer is too large.
    """
    return await asyncio.to_thread(_get, url)


class KeySet:
    """One sender's keys from its ``jwks_url``: :attr:`keys` is the last good set (empty until one)."""

    def __init__(
        self,
        sender: str,
        url: str,
        state_gauge: Gauge | None = None,
        *,
        fetch: Callable[[str], Awaitable[bytes]] = fetch_url,
        refresh_seconds: float = REFRESH_SECONDS,
        min_refetch_seconds: float = MIN_REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sender = sender
        self.url = url
        self.keys: tuple[Ed25519PublicKey, ...] = ()
        self.state = JwksState.UNAVAILABLE
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self.min_refetch_seconds = min_refetch_seconds
        """The shortest time between two fetches (tests lower it to see a rotation at once)."""
        self._clock = clock
        self._last_attempt: float | None = None
        self._inflight: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        """Whether the failure in progress is logged already (one line per change of state)."""
        self._gauges = (
            {state: state_gauge.labels(sender, state) for state in JwksState} if state_gauge is not None else {}
        )
        self._show(JwksState.UNAVAILABLE)

    def retry_after(self) -> int:
        """Whole seconds until the next fetch may run (at least 1): the ``Retry-After`` of a 503."""
        if self._last_attempt is None:
            return 1
        left = self._last_attempt + self.min_refetch_seconds - self._clock()
        return max(1, int(left) + (left % 1 > 0))

    async def refresh(self) -> bool:
        """Fetch the set now (one fetch for concurrent callers); whether the keys changed. Never raises:
        a failure keeps the last good set and is logged once per change of state."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        self._inflight = asyncio.get_running_loop().create_future()
        try:
            changed = await self._fetch_once()
        except BaseException as error:
            self._inflight.set_exception(error)
            self._inflight.exception()  # retrieved: concurrent waiters re-raise it themselves
            raise
        else:
            self._inflight.set_result(changed)
            return changed
        finally:
            self._inflight = None

    async def refresh_unknown(self) -> bool:
        """A signature verified with none of the keys: refresh if the last fetch is at least
        :data:`MIN_REFETCH_SECONDS` old (or one is running); whether the keys changed."""
        if self._inflight is None and not self._due(self.min_refetch_seconds):
            return False
        return await self.refresh()

    async def _fetch_once(self) -> bool:
        self._last_attempt = self._clock()
        try:
            keys = parse_key_set(await self._fetch(self.url))
        except (OSError, InvalidKeySet) as error:
            self._failed(error)
            return False
        changed = _raw(keys) != _raw(self.keys)
        self.keys = keys
        if self.state is not JwksState.FRESH or changed:
            logger.info("jwks: %d ed25519 key(s) for sender %s from %s", len(keys), self.sender, self.url)
        self._show(JwksState.FRESH)
        return changed

    def _failed(self, error: Exception) -> None:
        if self._failing:
            return
        self._failing = True
        if self.state is JwksState.FRESH:
            logger.warning(
                "jwks: fetching %s for sender %s failed (%s); verifying with the last good set of %d key(s)",
                self.url,
                self.sender,
                error,
                len(self.keys),
            )
            self._show(JwksState.STALE)
        else:
            logger.warning(
                "jwks: fetching %s for sender %s failed (%s); its webhooks are answered 503 until a set is fetched",
                self.url,
                self.sender,
                error,
            )

    def _show(self, state: JwksState) -> None:
        self._failing = state is not JwksState.FRESH and self._failing
        self.state = state
        for each, gauge in self._gauges.items():
            gauge.set(1 if each is state else 0)

    def _due(self, after: float) -> bool:
        return self._last_attempt is None or self._clock() - self._last_attempt >= after

    async def start(self) -> None:
        """Fetch the first set (a failure leaves the state ``unavailable``), then keep it fresh in the
        background: every :data:`REFRESH_SECONDS`, or every :data:`MIN_REFETCH_SECONDS` while failing."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=f"gateway-jwks-{self.sender}")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            wait = self._refresh_seconds if self.state is JwksState.FRESH else MIN_REFETCH_SECONDS
            await asyncio.sleep(wait)
            await self.refresh()


def _raw(keys: tuple[Ed25519PublicKey, ...]) -> list[bytes]:
    return [key.public_bytes(Encoding.Raw, PublicFormat.Raw) for key in keys]
