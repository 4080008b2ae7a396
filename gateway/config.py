"""Configuration: every setting the gateway reads, from the environment, validated once at start-up.

:class:`Settings` declares each setting once: its variable, type, default, bounds and description
(:func:`gateway.envvars.setting`); :meth:`Settings.from_env` reads them all with one generic reader, then
applies the rules that join several settings. A bad value stops start-up with a :class:`ConfigError`
naming the variable, so a typo in a deployment never turns into a gateway that silently runs with a
default. Secret values are never echoed back. The configuration reference (docs/reference/configuration.md)
is generated from this declaration.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from gateway.envvars import ConfigError, read, setting
from gateway.kinds import KINDS
from gateway.redact import shown_url
from gateway.senders import DEFAULT_SENDER, SenderFormat, SendersError, check_jwks_url, parse_senders
from gateway.signatures import Ed25519PublicKey, InvalidKey, parse_key, parse_public_key

__all__ = (
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "ConfigError",
    "Database",
    "IPNetwork",
    "OnError",
    "PostgresDatabase",
    "Rate",
    "SenderSettings",
    "Settings",
    "SqliteDatabase",
    "configured_urls",
)

Environment = Literal["development", "production"]
LogFormat = Literal["json", "console"]
OnError = Literal["allow", "deny"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MIB = 1024 * 1024
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PERIOD_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600}
_MAX_RATE_PER_SECOND = 1_000_000  # one request per microsecond: the limiter's clock resolution
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_NATS_SCHEMES = ("nats", "tls")
_FORWARD_SCHEMES = ("http", "https")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_FORWARD_STATUSES = ("pending", "initializing", "generating", "saving", "completed", "failed", "canceled")
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000, 36000, 36000)
"""Standard Webhooks' example schedule (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), extended by
10-hour steps to about three days in all, like a sender's retry horizon."""
_MAX_RETRY_DELAY_SECONDS = 7 * 86400
_RATE_FORM = "A rate `<count>/<second|minute|hour>` and an integer burst, at least 1"
_NATS_NAME = r"[A-Za-z0-9_-]+"
"""A token of a NATS subject, or a JetStream stream's name."""


SQLITE_BUSY_TIMEOUT_SECONDS = 5.0
"""How long a SQLite statement waits for a lock another connection holds on the file, by default."""


@dataclass(frozen=True, slots=True)
class SqliteDatabase:
    """The embedded job store: one SQLite file (or ``:memory:`` for throwaway runs)."""

    path: str
    busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS
    """How long a statement waits for a lock another connection holds on the file (SQLite's
    ``busy_timeout``); past it the store is unavailable and webhooks are answered 503."""


@dataclass(frozen=True, slots=True)
class PostgresDatabase:
    """The shared job store: a PostgreSQL database every replica writes to.

    The URL may carry a password, so it is left out of ``repr`` and never echoed in errors.
    """

    url: str = field(repr=False)

    @property
    def shown(self) -> str:
        """The URL with every password masked (user-info and query), for log lines and messages."""
        return shown_url(self.url)


Database = SqliteDatabase | PostgresDatabase


@dataclass(frozen=True, slots=True)
class Rate:
    """A sustained rate with a burst: ``count`` requests per window on average, at most ``burst`` at once."""

    count: int
    window_seconds: int
    """The period: 1, 60 or 3600 (the ``w`` of the ``RateLimit-Policy`` header)."""
    burst: int


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """One sender, its credentials resolved: a ``[senders.<name>]`` table of ``GATEWAY_SENDERS_FILE``, or
    the ``default`` sender of ``WEBHOOK_SECRET`` and ``WEBHOOK_SIGNING_KEYS`` without a file."""

    name: str
    kinds: frozenset[str] | None = None
    """The kinds it may post; ``None``: every kind."""
    secret: str | None = field(default=None, repr=False)
    signing_keys: tuple[bytes, ...] = field(default=(), repr=False)
    rate: Rate | None = None
    """Its own budget, once it is identified; ``None``: only the per-address limit applies."""
    format: SenderFormat = "native"
    kind: str | None = None
    """A provider sender's one kind (its ``kinds`` is then that kind alone)."""
    public_keys: tuple[Ed25519PublicKey, ...] = field(default=(), repr=False)
    """Its ed25519 keys (``whpk_``): Standard Webhooks ``v1a``, or fal's signatures."""
    jwks_url: str | None = None
    """Where more of its ed25519 keys are published (fetched at start-up and kept fresh: :mod:`gateway.jwks`)."""

    @property
    def authenticates(self) -> bool:
        return self.secret is not None or bool(self.signing_keys) or bool(self.public_keys) or self.jwks_url is not None

    @property
    def provider(self) -> bool:
        """Whether it is an AI provider, posting its own callbacks to its own route."""
        return self.format != "native"


# --- Conversions the generic reader cannot do: each is given the text of its variables. ---


def _database(value: str) -> Database:
    scheme, sep, rest = value.partition("://")
    if scheme == "sqlite" and sep and rest.startswith("/") and len(rest) > 1:
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
        path = rest[1:]
        if path != ":memory:":
            parent = Path(path).expanduser().parent
            if not parent.is_dir():
                raise ConfigError(f"DATABASE_URL: directory {str(parent)!r} does not exist")
        return SqliteDatabase(path)
    if scheme.lower() in _POSTGRES_SCHEMES and sep:
        location = rest.rpartition("@")[2]
        if not location or location.startswith(("/", "?")):
            # A URL without a host would silently mean a local socket: say so rather than guess.
            raise ConfigError("DATABASE_URL: a postgresql:// URL needs a host, e.g. postgresql://user@db:5432/gateway")
        return PostgresDatabase(value)
    if scheme.lower().startswith("sqlite:") or (scheme.lower() == "sqlite" and sep):
        raise ConfigError(
            "DATABASE_URL: a SQLite URL takes three slashes before a relative path (sqlite:///gateway.db) "
            "and four before an absolute one (sqlite:////abs/path/gateway.db)"
        )
    # Never echo the value: a mistyped PostgreSQL URL still carries its password.
    raise ConfigError(
        "DATABASE_URL must look like sqlite:///relative.db, sqlite:////absolute/path.db or "
        f"postgresql://user[:password]@host[:port]/database (got {f'scheme {scheme!r}' if sep else 'no scheme'})"
    )


def _rate(name: str) -> Callable[[str | None, str | None], Rate]:
    """The conversion of the pair ``name`` (``<count>/<second|minute|hour>``) and ``name_BURST`` (an
    integer >= 1, default the count); a burst without its rate is refused."""
    burst_name = f"{name}_BURST"

    def convert(value: str | None, burst: str | None) -> Rate:
        if value is None:
            raise ConfigError(f"{burst_name} is set but {name} is not: set the rate the burst belongs to")
        return _rate_of(name, value, None if burst is None else _burst(burst_name, burst))

    return convert


def _rate_of(name: str, value: str, burst: int | None) -> Rate:
    """``value`` (``<count>/<second|minute|hour>``) with ``burst`` (default: the count); errors name ``name``."""
    count_text, sep, period = value.replace(" ", "").lower().partition("/")
    if not sep or period not in _PERIOD_SECONDS or not (count_text.isascii() and count_text.isdigit()):
        raise ConfigError(f"{name} must look like <count>/<second|minute|hour>, e.g. 100/second; got {value!r}")
    count = int(count_text)
    if count < 1:
        raise ConfigError(f"{name} must allow at least 1 request, got {value!r}")
    if count / _PERIOD_SECONDS[period] > _MAX_RATE_PER_SECOND:
        raise ConfigError(f"{name} must be at most {_MAX_RATE_PER_SECOND}/second, got {value!r}")
    return Rate(count, _PERIOD_SECONDS[period], count if burst is None else burst)


def _first_set(*values: str | None) -> str | None:
    """The first of several variables that is set: a specific one before its general fallback."""
    return next((value for value in values if value is not None), None)


def _burst(name: str, value: str) -> int:
    try:
        burst = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if burst < 1:
        raise ConfigError(f"{name} must be >= 1, got {burst}")
    return burst


def _signing_keys(value: str | None) -> tuple[bytes, ...]:
    if value is None:
        return ()
    return _keys_of("WEBHOOK_SIGNING_KEYS", value.split(","))


def _keys_of(name: str, tokens: list[str]) -> tuple[bytes, ...]:
    """The keys of ``tokens`` (blank ones skipped); an error names ``name`` and the key's position."""
    keys = []
    for position, token in enumerate((part.strip() for part in tokens), start=1):
        if not token:
            continue
        try:
            keys.append(parse_key(token, prefix_optional=True))
        except InvalidKey as error:
            # Never echo the key itself: this message ends up in logs.
            raise ConfigError(f"{name}: key #{position} {error}") from None
    return tuple(keys)


def _forward_key(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        return parse_key(value)
    except InvalidKey as error:
        raise ConfigError(f"GATEWAY_FORWARD_SIGNING_KEY {error}") from None


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults of the embedded single-process mode.

    Each field is declared with the variable it is read from (:func:`~gateway.envvars.setting`); built
    directly (``Settings(database=...)``), the settings take no variable into account.
    """

    env: Environment = setting(
        "GATEWAY_ENV",
        "development",
        "``production`` refuses to start without a way to authenticate senders, and without "
        "``GATEWAY_API_TOKEN`` unless ``GATEWAY_PUBLIC_READ=true``.",
    )
    host: str = setting("GATEWAY_HOST", "127.0.0.1", "Address ``gateway serve`` binds (``--host`` overrides).")
    port: int = setting("GATEWAY_PORT", 8000, "Port ``gateway serve`` binds (``--port`` overrides).", ge=1, le=65535)
    webhook_secret: str | None = setting(
        "WEBHOOK_SECRET",
        None,
        "Shared secret compared, in constant time, with the ``X-Webhook-Secret`` header; at least 16 "
        "characters in production.",
        secret=True,
    )
    signing_keys: tuple[bytes, ...] = setting(
        "WEBHOOK_SIGNING_KEYS",
        (),
        "Standard Webhooks keys (``whsec_<base64>``, at least 16 bytes once decoded), decoded; several allow rotation.",
        secret=True,
        expected="Comma-separated `whsec_` keys",
        parse=_signing_keys,
    )
    tolerance_seconds: int = setting(
        "WEBHOOK_TOLERANCE_SECONDS", 300, "How far a signed ``webhook-timestamp`` may be from our clock.", ge=1
    )
    database: Database = setting(
        "DATABASE_URL",
        SqliteDatabase("gateway.db"),
        "Where jobs and their history live: ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (one "
        "process), or ``postgresql://user[:password]@host[:port]/db`` (also ``postgres://``; query parameters "
        "such as ``?sslmode=require`` are passed on) shared by every replica.",
        expected="URL (`sqlite:///`, `postgresql://`, `postgres://`)",
        parse=_database,
    )
    db_pool_size: int = setting(
        "GATEWAY_DB_POOL_SIZE",
        10,
        "Most PostgreSQL connections one gateway process opens; a webhook waits for a free one (within "
        "``GATEWAY_STORE_TIMEOUT_SECONDS``) rather than opening more.",
        ge=1,
        le=1000,
    )
    store_timeout_seconds: float = setting(
        "GATEWAY_STORE_TIMEOUT_SECONDS",
        2.0,
        "Bound on every call to a shared store (PostgreSQL, the Redis idempotency store), waiting for a pooled "
        "connection included; past it the webhook gets 503.",
        ge=0.01,
        le=60,
    )
    migrate_on_start: bool = setting(
        "GATEWAY_MIGRATE_ON_START",
        True,
        "Whether ``gateway serve`` applies pending migrations itself; turn it off when a deployment step runs "
        "``gateway migrate`` before the replicas start.",
    )
    max_body_bytes: int = setting(
        "GATEWAY_MAX_BODY_BYTES", _MIB, "Larger bodies are refused with 413 before being read whole.", ge=1
    )
    body_timeout_seconds: float = setting(
        "GATEWAY_BODY_TIMEOUT_SECONDS",
        30.0,
        "A request body with no new byte for this long (or a request head not complete this long after its "
        "first byte) is answered 408 and its connection closed.",
        ge=0.01,
        le=60,
    )
    max_buffered_bytes: int = setting(
        "GATEWAY_MAX_BUFFERED_BYTES",
        64 * _MIB,
        "Bytes that request bodies being read may hold, all connections together (each counts its "
        "``Content-Length``, a chunked one ``GATEWAY_MAX_BODY_BYTES``); a body that would pass it is answered "
        "503 with ``Retry-After`` before it is read. At least ``GATEWAY_MAX_BODY_BYTES``.",
        ge=1,
    )
    idempotency_ttl_seconds: int = setting(
        "GATEWAY_IDEMPOTENCY_TTL_SECONDS",
        72 * 3600,
        "How long a delivery is remembered (at least this long, at most an eighth longer: keys expire a "
        "generation at a time); covers the sender's retry horizon (Standard Webhooks' example schedule spans "
        "about three days).",
        ge=1,
    )
    idempotency_max_keys: int = setting(
        "GATEWAY_IDEMPOTENCY_MAX_KEYS",
        1_000_000,
        "Bound on the in-memory store's keys (two per delivery with a ``webhook-id``, one otherwise), about 24 "
        "bytes each; past it the oldest eighth is evicted (the job store's unique constraint still catches a "
        "duplicate whose key was evicted). Redis ignores it.",
        ge=1,
    )
    log_level: str = setting("GATEWAY_LOG_LEVEL", "INFO", "How much is logged.", choices=_LOG_LEVELS, fold="upper")
    log_format: LogFormat = setting(
        "GATEWAY_LOG_FORMAT",
        "console",
        "``json`` (one object per line) or ``console``; unset: ``json`` in production, ``console`` in development.",
    )
    model_labels: tuple[str, ...] = setting(
        "GATEWAY_MODEL_LABELS",
        (),
        "Model names allowed as the ``model`` metric label; any other model is counted as ``other``.",
    )
    max_model_labels: int = setting(
        "GATEWAY_MAX_MODEL_LABELS",
        20,
        "Without an allow-list, the first N distinct model names become labels and later ones ``other``, so a "
        "sender cannot create unbounded time series.",
        ge=1,
    )
    rate_limit: Rate | None = setting(
        ("GATEWAY_RATE_LIMIT", "GATEWAY_RATE_LIMIT_BURST"),
        None,
        "Each sender's budget: a rate of at most 1000000/second, and a burst (default: the count). Unset: "
        "senders are not limited.",
        expected=_RATE_FORM,
        parse=_rate("GATEWAY_RATE_LIMIT"),
    )
    global_rate_limit: Rate | None = setting(
        ("GATEWAY_RATE_LIMIT_GLOBAL", "GATEWAY_RATE_LIMIT_GLOBAL_BURST"),
        None,
        "A budget for this process as a whole, all senders together, kept in memory whatever the backend; "
        "written as the senders' one.",
        expected=_RATE_FORM,
        parse=_rate("GATEWAY_RATE_LIMIT_GLOBAL"),
    )
    rate_limit_on_error: OnError = setting(
        "GATEWAY_RATE_LIMIT_ON_ERROR",
        "allow",
        "What to do with a webhook when the limiter's store fails. ``allow`` keeps webhooks flowing unlimited "
        "during a Redis outage; ``deny`` answers 503 until it is back.",
        fold="lower",
    )
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        "GATEWAY_TRUSTED_PROXIES",
        (),
        "Addresses or networks whose ``X-Forwarded-For`` names the sender. From any other "
        "peer the header is ignored, so it cannot be spoofed.",
        expected="an IP address or CIDR network",
    )
    redis_url: str | None = setting(
        "REDIS_URL",
        None,
        "``redis://[:password@]host:port/db``, ``rediss://`` or ``unix://``: a Redis shared by every replica, "
        "holding the idempotency keys and the senders' rate limit state, and carrying the live streams' "
        "wake-up signal. Unset: that state lives in this process's memory.",
        secret=True,
        schemes=_REDIS_SCHEMES,
    )
    redis_pool_size: int = setting(
        "GATEWAY_REDIS_POOL_SIZE",
        64,
        "Most connections to Redis per gateway process, for each Redis store (idempotency, rate limits); a "
        "call waits for a free one within its timeout rather than opening more.",
        ge=1,
        le=10_000,
    )
    redis_key_prefix: str = setting(
        "GATEWAY_REDIS_KEY_PREFIX",
        "gateway:",
        "Prefix of every key the gateway writes to Redis, so several deployments can share one server.",
    )
    forward_url: str | None = setting(
        "GATEWAY_FORWARD_URL",
        None,
        "The app's ``http(s)://`` endpoint; every applied event is POSTed there, signed and retried (docs: "
        "Forwarding). Unset: nothing is forwarded and the ingest path writes no outbox row.",
        secret=True,
        schemes=_FORWARD_SCHEMES,
        needs_host=True,
    )
    forward_signing_key: bytes | None = setting(
        "GATEWAY_FORWARD_SIGNING_KEY",
        None,
        "The ``whsec_...`` key the gateway signs forwarded events with, as a Standard Webhooks sender; "
        "required in production when forwarding.",
        secret=True,
        expected="A `whsec_` key",
        parse=_forward_key,
    )
    forward_timeout_seconds: float = setting(
        "GATEWAY_FORWARD_TIMEOUT_SECONDS",
        10.0,
        "How long one delivery attempt may take before it is retried.",
        ge=0.01,
        le=60,
    )
    forward_statuses: frozenset[str] | None = setting(
        "GATEWAY_FORWARD_STATUSES",
        None,
        "The statuses to forward; unset: every applied event.",
        min_length=1,
        expected="statuses",
        choices=_FORWARD_STATUSES,
        fold="lower",
    )
    forward_retry_schedule: tuple[float, ...] = setting(
        "GATEWAY_FORWARD_RETRY_SCHEDULE",
        DEFAULT_RETRY_SCHEDULE,
        "Seconds to wait before each retry (with +-20 % jitter); once exhausted the delivery is dead-lettered.",
        ge=0,
        le=_MAX_RETRY_DELAY_SECONDS,
        examples=["5,300,1800"],
        expected="seconds",
    )
    nats_url: str | None = setting(
        "GATEWAY_NATS_URL",
        None,
        "``nats://host:port`` (credentials in the URL if needed), a NATS server with JetStream; every applied "
        "event is also published there.",
        secret=True,
        schemes=_NATS_SCHEMES,
    )
    nats_subject_prefix: str = setting(
        "GATEWAY_NATS_SUBJECT_PREFIX",
        "gateway.jobs",
        "Events are published to ``<prefix>.<kind>.<status>``; dot-separated tokens, no wildcard.",
        pattern=rf"{_NATS_NAME}(?:\.{_NATS_NAME})*",
        examples=["gateway.jobs"],
        expected="dot-separated tokens of letters, digits, _ and - (no wildcard)",
    )
    nats_stream: str = setting(
        "GATEWAY_NATS_STREAM",
        "GATEWAY_JOBS",
        "The JetStream stream created for ``<prefix>.>`` unless one covers it. Event ids are unique per job "
        "database, and JetStream deduplicates per stream: two deployments (or a database started afresh) must "
        "not share one stream, or new events are dropped as duplicates.",
        pattern=_NATS_NAME,
        examples=["GATEWAY_JOBS"],
        expected="letters, digits, _ and -",
    )
    require_registered_jobs: bool = setting(
        "GATEWAY_REQUIRE_REGISTERED_JOBS",
        False,
        "A webhook for a job the app never registered (``POST /api/jobs``) is refused with 404; by default its "
        "first webhook creates the job.",
    )
    api_token: str | None = setting(
        "GATEWAY_API_TOKEN",
        None,
        "Bearer token of the jobs and deliveries APIs (``/api/jobs*``, ``/api/deliveries*``; "
        "``/api/session`` exchanges it for a read-only cookie); unset, the read API is open. Webhook secrets "
        "never open it.",
        secret=True,
        min_length=16,
    )
    public_read: bool = setting(
        "GATEWAY_PUBLIC_READ",
        False,
        "Says job data may be public: reads need no credential, so production starts without "
        "``GATEWAY_API_TOKEN``. Never opens a write (see :mod:`gateway.http.auth`).",
    )
    sse_max_streams: int = setting(
        "GATEWAY_SSE_MAX_STREAMS",
        100,
        "Live streams (``/api/jobs/events``...) open at once per process; 503 beyond.",
        ge=1,
    )
    sse_heartbeat_seconds: float = setting(
        "GATEWAY_SSE_HEARTBEAT_SECONDS",
        15.0,
        "A comment line on an idle stream this often (keeps proxies from closing it); also how long a stream "
        "waits before re-reading the store without a wake-up, and how long a slow client may leave its buffer "
        "full.",
        ge=0.01,
        le=60,
    )
    sse_buffer_events: int = setting(
        "GATEWAY_SSE_BUFFER_EVENTS",
        256,
        "Events buffered per stream for a slow client; when full the client is sent ``event: overflow`` with "
        "the id to resume from, and the stream ends.",
        ge=1,
        le=100_000,
    )
    shutdown_timeout_seconds: int = setting(
        "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS",
        20,
        "After SIGTERM, how long requests in flight may take to finish before they are cut off. Longer than "
        "the slowest store call (SQLite's 15 s bound) by default, so a webhook in flight is answered by its own "
        "store call; keep it below the orchestrator's kill delay.",
        ge=1,
        le=3600,
    )
    otlp_endpoint: str | None = setting(
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        None,
        "Where spans go over OTLP/HTTP (the first set wins). The OpenTelemetry SDK reads it, with the other "
        "``OTEL_*`` variables (see Traces); the gateway reads it too, to name it at start-up and mask its "
        "password in log lines.",
        secret=True,
        expected="URL",
        parse=_first_set,
    )
    senders_file: str | None = setting(
        "GATEWAY_SENDERS_FILE",
        None,
        "A TOML file declaring the senders (``[senders.<name>]``: format, kinds, the variables holding their "
        "credentials, their own rate limit; see Senders). Set, it is the only source of credentials. Unset: one "
        "sender, ``default``, with ``WEBHOOK_SECRET`` and ``WEBHOOK_SIGNING_KEYS``.",
        expected="path",
    )
    senders: tuple[SenderSettings, ...] = ()
    """The senders of ``GATEWAY_SENDERS_FILE``, resolved by :meth:`from_env` (empty without a file)."""
    unnamed_credentials: tuple[str, ...] = ()
    """``WEBHOOK_SECRET``/``WEBHOOK_SIGNING_KEYS`` when set but named by no sender of the file (warned about)."""
    retention_days: int | None = setting(
        "GATEWAY_RETENTION_DAYS",
        None,
        "Finished jobs (with their history) and delivered outbox rows older than this many days are deleted by "
        "a background task, in small batches; at least ``GATEWAY_IDEMPOTENCY_TTL_SECONDS``. Unset keeps "
        "everything forever.",
        ge=1,
        le=36500,
    )

    @property
    def authenticates(self) -> bool:
        """Whether any sender credential is configured (otherwise webhooks are accepted unauthenticated)."""
        return any(sender.authenticates for sender in self.active_senders)

    @property
    def active_senders(self) -> tuple[SenderSettings, ...]:
        """The senders of the file, or without one the ``default`` sender of ``WEBHOOK_SECRET`` and
        ``WEBHOOK_SIGNING_KEYS``."""
        if self.senders:
            return self.senders
        return (SenderSettings(DEFAULT_SENDER, secret=self.webhook_secret, signing_keys=self.signing_keys),)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting (``os.environ`` by default); raise :class:`ConfigError` naming
        the first bad variable, or the first rule between several that does not hold."""
        env = os.environ if environ is None else environ
        path = env.get("GATEWAY_SENDERS_FILE", "").strip()
        # With a senders file, WEBHOOK_SECRET and WEBHOOK_SIGNING_KEYS count only where a sender names them.
        values = read(
            cls, {name: value for name, value in env.items() if name not in _DEFAULT_CREDENTIALS} if path else env
        )
        if "log_format" not in values and values.get("env") == "production":
            values["log_format"] = "json"
        if path:
            senders = _senders_of(path, env, production=values.get("env") == "production")
            named = {variable for sender in senders for variable in _named(sender)}
            values["senders"] = tuple(sender for sender, _ in senders)
            values["unnamed_credentials"] = tuple(
                name for name in _DEFAULT_CREDENTIALS if env.get(name, "").strip() and name not in named
            )
        settings = cls(**values)  # type: ignore[arg-type]  # each value converted to its field's type
        _check_rules(settings)
        return settings


# --- Rules that join several settings. ---


def _check_rules(settings: Settings) -> None:
    """Refuse settings that are each valid but contradict each other, or production without protection."""
    if settings.retention_days is not None and settings.retention_days * 86400 < settings.idempotency_ttl_seconds:
        # A retry of a pruned event would be applied again: keep events at least as long as retries come.
        raise ConfigError(
            f"GATEWAY_RETENTION_DAYS={settings.retention_days} is shorter than GATEWAY_IDEMPOTENCY_TTL_SECONDS "
            f"({settings.idempotency_ttl_seconds} s, the senders' retry horizon): a retried event would be "
            "applied again after its job was pruned"
        )
    if settings.max_buffered_bytes < settings.max_body_bytes:
        # A body the size of the limit (and every chunked one, which counts as that) could never be read.
        raise ConfigError(
            f"GATEWAY_MAX_BUFFERED_BYTES ({settings.max_buffered_bytes}) must be at least "
            f"GATEWAY_MAX_BODY_BYTES ({settings.max_body_bytes})"
        )
    if settings.env == "production" and settings.forward_url and settings.forward_signing_key is None:
        raise ConfigError(
            "GATEWAY_ENV=production with GATEWAY_FORWARD_URL needs GATEWAY_FORWARD_SIGNING_KEY: "
            "refusing to forward unsigned events in production"
        )
    if settings.env == "production" and not settings.senders and not settings.authenticates:
        raise ConfigError(
            "GATEWAY_ENV=production needs WEBHOOK_SECRET or WEBHOOK_SIGNING_KEYS: "
            "refusing to accept unauthenticated webhooks in production"
        )
    if settings.env == "production" and settings.webhook_secret is not None:
        _production_secret(settings.webhook_secret)
    if settings.env == "production" and settings.api_token is None and not settings.public_read:
        raise ConfigError(
            "GATEWAY_ENV=production needs GATEWAY_API_TOKEN to protect the read API (/api/jobs), or "
            "GATEWAY_PUBLIC_READ=true to say the job data may be public"
        )


_MIN_SECRET_CHARACTERS = 16
"""As for the API token and the signing keys' bytes: a short shared secret is guessed by trying."""


def _production_secret(value: str) -> None:
    """Refuse a ``WEBHOOK_SECRET`` too short to resist guessing, saying how to make a good one (never echoing
    the secret: this message ends up in logs)."""
    if len(value) < _MIN_SECRET_CHARACTERS:
        raise ConfigError(
            f"GATEWAY_ENV=production needs WEBHOOK_SECRET of at least {_MIN_SECRET_CHARACTERS} characters, got "
            f"{len(value)}: a short secret can be guessed by trying. Make one with "
            '`python -c "import secrets; print(secrets.token_urlsafe(32))"` and give it to the sender too'
        )


# --- Senders: GATEWAY_SENDERS_FILE, its variables resolved here (the one module reading the environment). ---

_DEFAULT_CREDENTIALS = ("WEBHOOK_SECRET", "WEBHOOK_SIGNING_KEYS")
_Declared = tuple[SenderSettings, dict[str, str]]
"""A resolved sender, with the variable each of its credential keys named."""


def _named(declared: _Declared) -> tuple[str, ...]:
    return tuple(declared[1].values())


def _senders_of(path: str, env: Mapping[str, str], *, production: bool) -> list[_Declared]:
    """The senders ``path`` declares, their variables resolved from ``env``; refusals name the sender,
    the key and the variable, never a value."""
    prefix = f"GATEWAY_SENDERS_FILE ({path})"
    try:
        text = Path(path).expanduser().read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{prefix}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    try:
        declarations = parse_senders(text, (kind.name for kind in KINDS))
    except SendersError as error:
        raise ConfigError(f"{prefix}: {error}") from None
    resolved: list[_Declared] = []
    for declared in declarations:
        where = f"{prefix}: sender {declared.name!r}"
        variables = dict(declared.credential_variables)
        values = {}
        for key, variable in variables.items():
            value = env.get(variable, "").strip()
            if not value:
                raise ConfigError(f"{where}: {key} names {variable}, which is unset or empty")
            values[key] = value
        secret = values.get("secret_env")
        keys = values.get("signing_keys_env")
        public_keys = _public_keys_of(f"{where}: public_keys_env {variables.get('public_keys_env')}", values)
        if declared.jwks_url is not None:
            problem = check_jwks_url(declared.jwks_url, allow_http=not production)
            if problem is not None:
                raise ConfigError(f"{where}: jwks_url {problem}")
        signing_keys = (
            _keys_of(f"{where}: signing_keys_env {variables['signing_keys_env']}", keys.replace(",", " ").split())
            if keys is not None
            else ()
        )
        rate = (
            _rate_of(f"{where}: rate_limit", declared.rate_limit, declared.rate_limit_burst)
            if declared.rate_limit is not None
            else None
        )
        if rate is not None and rate.burst < 1:
            raise ConfigError(f"{where}: rate_limit_burst must be >= 1, got {rate.burst}")
        sender = SenderSettings(
            declared.name,
            kinds=frozenset(declared.kinds) if declared.kinds is not None else None,
            secret=secret,
            signing_keys=signing_keys,
            rate=rate,
            format=declared.format,
            kind=declared.kind,
            public_keys=public_keys,
            jwks_url=declared.jwks_url,
        )
        if declared.kind is not None:
            sender = replace(sender, kinds=frozenset((declared.kind,)))
        if production:
            _production_sender(where, sender, variables)
        resolved.append((sender, variables))
    _no_shared_credentials(prefix, resolved)
    return resolved


def _public_keys_of(name: str, values: Mapping[str, str]) -> tuple[Ed25519PublicKey, ...]:
    """The ``whpk_`` keys of ``public_keys_env`` (space- or comma-separated); errors name ``name`` and the
    key's position, never the key."""
    text = values.get("public_keys_env")
    keys = []
    for position, token in enumerate((text or "").replace(",", " ").split(), start=1):
        try:
            keys.append(parse_public_key(token))
        except InvalidKey as error:
            raise ConfigError(f"{name}: key #{position} {error}") from None
    return tuple(keys)


def _production_sender(where: str, sender: SenderSettings, variables: Mapping[str, str]) -> None:
    if not sender.authenticates:
        raise ConfigError(
            f"{where}: GATEWAY_ENV=production needs secret_env or signing_keys_env (or public_keys_env, "
            "jwks_url): refusing a sender "
            "anyone could impersonate"
        )
    if sender.secret is not None and len(sender.secret) < _MIN_SECRET_CHARACTERS:
        raise ConfigError(
            f"{where}: secret_env {variables['secret_env']} must hold at least {_MIN_SECRET_CHARACTERS} "
            f"characters in production, got {len(sender.secret)}: a short secret can be guessed by trying"
        )


def _no_shared_credentials(prefix: str, resolved: list[_Declared]) -> None:
    """Refuse two senders with one credential: the credential that verifies is what names the sender."""
    # Compared as key material: a secret that is itself a whsec_ key also counts as that key's bytes,
    # or whoever holds one sender's secret could sign (v1) as the sender whose key it is.
    seen: dict[str | bytes, tuple[str, str]] = {}
    for sender, variables in resolved:
        owned: list[tuple[str, str | bytes]] = []
        if sender.secret is not None:
            owned.append(("secret_env", sender.secret))
            with contextlib.suppress(InvalidKey):
                owned.append(("secret_env", parse_key(sender.secret)))
        owned.extend(("signing_keys_env", key) for key in sender.signing_keys)
        for key, credential in owned:
            where = f"{key} {variables[key]}"
            other = seen.setdefault(credential, (sender.name, where))
            if other[0] != sender.name:
                raise ConfigError(
                    f"{prefix}: sender {sender.name!r}: {where} holds a credential of sender {other[0]!r} "
                    f"({other[1]}): each sender needs its own, since the credential names the sender"
                )


def configured_urls(settings: Settings) -> tuple[str, ...]:
    """The URLs the gateway is configured with: the database (PostgreSQL), Redis, NATS, forwarding, OTLP."""
    database_url: str | None = getattr(settings.database, "url", None)
    urls = (database_url, settings.redis_url, settings.nats_url, settings.forward_url, settings.otlp_endpoint)
    return tuple(url for url in urls if url)
