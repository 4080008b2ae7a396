"""Configuration: every setting the gateway reads, from the environment, validated once at start-up.

A bad value stops start-up with a :class:`ConfigError` naming the variable, so a typo in a deployment
never turns into a gateway that silently runs with a default. Secret values are never echoed back.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from gateway.redact import shown_url
from gateway.signatures import InvalidKey, parse_key

__all__ = ("ConfigError", "Database", "IPNetwork", "OnError", "PostgresDatabase", "Rate", "Settings", "SqliteDatabase")

Environment = Literal["development", "production"]
LogFormat = Literal["json", "console"]
OnError = Literal["allow", "deny"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MIB = 1024 * 1024
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PERIOD_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600}
_MAX_RATE_PER_SECOND = 1_000_000  # one request per microsecond: the limiter's clock resolution
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_FORWARD_STATUSES = ("pending", "initializing", "generating", "saving", "completed", "failed")
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000, 36000, 36000)
"""Standard Webhooks' example schedule (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), extended by
10-hour steps to about three days in all, like a sender's retry horizon."""
_MAX_RETRY_DELAY_SECONDS = 7 * 86400


class ConfigError(ValueError):
    """A setting from the environment is missing, malformed or contradicts another one."""


@dataclass(frozen=True, slots=True)
class SqliteDatabase:
    """The embedded job store: one SQLite file (or ``:memory:`` for throwaway runs)."""

    path: str


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


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults of the embedded single-process mode."""

    env: Environment = "development"
    """``GATEWAY_ENV``: ``development`` or ``production``; ``production`` refuses to start without a way to
    authenticate senders, and without ``GATEWAY_API_TOKEN`` unless ``GATEWAY_PUBLIC_READ=true``."""
    host: str = "127.0.0.1"
    """``GATEWAY_HOST``: address ``gateway serve`` binds (``--host`` overrides)."""
    port: int = 8000
    """``GATEWAY_PORT``: port ``gateway serve`` binds (``--port`` overrides)."""
    webhook_secret: str | None = field(default=None, repr=False)
    """``WEBHOOK_SECRET``: shared secret compared, in constant time, with the ``X-Webhook-Secret`` header."""
    signing_keys: tuple[bytes, ...] = field(default=(), repr=False)
    """``WEBHOOK_SIGNING_KEYS``: comma-separated Standard Webhooks keys (``whsec_<base64>``), decoded; several
    allow rotation."""
    tolerance_seconds: int = 300
    """``WEBHOOK_TOLERANCE_SECONDS``: how far a signed ``webhook-timestamp`` may be from our clock."""
    database: Database = SqliteDatabase("gateway.db")
    """``DATABASE_URL``: where jobs and their history live: ``sqlite:///relative.db`` or
    ``sqlite:////absolute/path.db`` (one process), or ``postgresql://user[:password]@host[:port]/db`` (also
    ``postgres://``; query parameters such as ``?sslmode=require`` are passed on) shared by every replica."""
    db_pool_size: int = 10
    """``GATEWAY_DB_POOL_SIZE``: most PostgreSQL connections one gateway process opens; a webhook waits
    for a free one (within ``GATEWAY_STORE_TIMEOUT_SECONDS``) rather than opening more."""
    store_timeout_seconds: float = 2.0
    """``GATEWAY_STORE_TIMEOUT_SECONDS``: bound on every call to a shared store (PostgreSQL, the Redis
    idempotency store), waiting for a pooled connection included; past it the webhook gets 503."""
    migrate_on_start: bool = True
    """``GATEWAY_MIGRATE_ON_START``: whether ``gateway serve`` applies pending migrations itself; turn it
    off when a deployment step runs ``gateway migrate`` before the replicas start."""
    max_body_bytes: int = _MIB
    """``GATEWAY_MAX_BODY_BYTES``: larger bodies are refused with 413 before being read whole."""
    body_timeout_seconds: float = 30.0
    """``GATEWAY_BODY_TIMEOUT_SECONDS``: a request body with no new byte for this long (or a request head
    not complete this long after its first byte) is answered 408 and its connection closed."""
    max_buffered_bytes: int = 64 * _MIB
    """``GATEWAY_MAX_BUFFERED_BYTES``: bytes that request bodies being read may hold, all connections
    together (each counts its ``Content-Length``, a chunked one ``GATEWAY_MAX_BODY_BYTES``); a body that
    would pass it is answered 503 with ``Retry-After`` before it is read."""
    idempotency_ttl_seconds: int = 72 * 3600
    """``GATEWAY_IDEMPOTENCY_TTL_SECONDS``: how long a delivery is remembered (at least this long, at most an
    eighth longer: keys expire a generation at a time); covers the sender's retry horizon (Standard
    Webhooks' example schedule spans about three days)."""
    idempotency_max_keys: int = 1_000_000
    """``GATEWAY_IDEMPOTENCY_MAX_KEYS``: bound on the in-memory store's keys (two per delivery with a
    ``webhook-id``, one otherwise), about 24 bytes each; past it the oldest eighth is evicted (the job
    store's unique constraint still catches a duplicate whose key was evicted). Redis ignores it."""
    log_level: str = "INFO"
    """``GATEWAY_LOG_LEVEL``: one of DEBUG, INFO, WARNING, ERROR, CRITICAL."""
    log_format: LogFormat = "console"
    """``GATEWAY_LOG_FORMAT``: ``json`` (one object per line) or ``console``; default ``json`` in
    production, ``console`` in development."""
    model_labels: tuple[str, ...] = ()
    """``GATEWAY_MODEL_LABELS``: comma-separated model names allowed as the ``model`` metric label;
    any other model is counted as ``other``."""
    max_model_labels: int = 20
    """``GATEWAY_MAX_MODEL_LABELS``: without an allow-list, the first N distinct model names become
    labels and later ones ``other``, so a sender cannot create unbounded time series."""
    rate_limit: Rate | None = None
    """``GATEWAY_RATE_LIMIT`` (``<count>/<second|minute|hour>``) and ``GATEWAY_RATE_LIMIT_BURST`` (default:
    the count): each sender's budget. Unset: senders are not limited."""
    global_rate_limit: Rate | None = None
    """``GATEWAY_RATE_LIMIT_GLOBAL`` and ``GATEWAY_RATE_LIMIT_GLOBAL_BURST``: a budget for this process as a
    whole, all senders together, kept in memory whatever the backend."""
    rate_limit_on_error: OnError = "allow"
    """``GATEWAY_RATE_LIMIT_ON_ERROR``: what to do with a webhook when the limiter's store fails. ``allow``
    keeps webhooks flowing unlimited during a Redis outage; ``deny`` answers 503 until it is back."""
    trusted_proxies: tuple[IPNetwork, ...] = ()
    """``GATEWAY_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks whose ``X-Forwarded-For``
    names the sender. From any other peer the header is ignored, so it cannot be spoofed."""
    redis_url: str | None = field(default=None, repr=False)
    """``REDIS_URL``: ``redis://[:password@]host:port/db``, ``rediss://`` or ``unix://``: a Redis shared by
    every replica, holding the idempotency keys and the senders' rate limit state, and carrying the live
    streams' wake-up signal. Unset: that state lives in this process's memory."""
    redis_pool_size: int = 64
    """``GATEWAY_REDIS_POOL_SIZE``: most connections to Redis per gateway process, for each Redis store
    (idempotency, rate limits); a call waits for a free one within its timeout rather than opening more."""
    redis_key_prefix: str = "gateway:"
    """``GATEWAY_REDIS_KEY_PREFIX``: prefix of every key the gateway writes to Redis, so several
    deployments can share one server."""
    forward_url: str | None = field(default=None, repr=False)
    """``GATEWAY_FORWARD_URL``: the app's ``http(s)://`` endpoint; every applied event is POSTed there, signed
    and retried (docs: Forwarding). Unset: nothing is forwarded and the ingest path writes no outbox row."""
    forward_signing_key: bytes | None = field(default=None, repr=False)
    """``GATEWAY_FORWARD_SIGNING_KEY``: the ``whsec_...`` key the gateway signs forwarded events with, as a
    Standard Webhooks sender; required in production when forwarding."""
    forward_timeout_seconds: float = 10.0
    """``GATEWAY_FORWARD_TIMEOUT_SECONDS``: how long one delivery attempt may take (0.01 to 60) before it is
    retried."""
    forward_statuses: frozenset[str] | None = None
    """``GATEWAY_FORWARD_STATUSES``: comma-separated statuses to forward; unset: every applied event."""
    forward_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    """``GATEWAY_FORWARD_RETRY_SCHEDULE``: comma-separated seconds to wait before each retry (with +-20 %
    jitter); once exhausted the delivery is dead-lettered."""
    nats_url: str | None = field(default=None, repr=False)
    """``GATEWAY_NATS_URL``: ``nats://host:port`` (credentials in the URL if needed), a NATS server with
    JetStream; every applied event is also published there."""
    nats_subject_prefix: str = "gateway.jobs"
    """``GATEWAY_NATS_SUBJECT_PREFIX``: events are published to ``<prefix>.<kind>.<status>``; dot-separated
    tokens, no wildcard."""
    nats_stream: str = "GATEWAY_JOBS"
    """``GATEWAY_NATS_STREAM``: the JetStream stream created for ``<prefix>.>`` unless one covers it.
    Event ids are unique per job database, and JetStream deduplicates per stream: two deployments (or
    a database started afresh) must not share one stream, or new events are dropped as duplicates."""
    require_registered_jobs: bool = False
    """``GATEWAY_REQUIRE_REGISTERED_JOBS``: a webhook for a job the app never registered (``POST /api/jobs``)
    is refused with 404; by default its first webhook creates the job."""
    api_token: str | None = field(default=None, repr=False)
    """``GATEWAY_API_TOKEN``: bearer token (16 characters or more) of the jobs and deliveries APIs (``/api/jobs*``,
    ``/api/deliveries*``; ``/api/session`` exchanges it for a read-only cookie); unset, the
    read API is open. Webhook secrets never open it."""
    public_read: bool = False
    """``GATEWAY_PUBLIC_READ``: says job data may be public: reads need no credential, so production starts
    without ``GATEWAY_API_TOKEN``. Never opens a write (see :mod:`gateway.http.auth`)."""
    sse_max_streams: int = 100
    """``GATEWAY_SSE_MAX_STREAMS``: live streams (``/api/jobs/events``...) open at once per process; 503 beyond."""
    sse_heartbeat_seconds: float = 15.0
    """``GATEWAY_SSE_HEARTBEAT_SECONDS``: a comment line on an idle stream this often (keeps proxies from
    closing it); also how long a stream waits before re-reading the store without a wake-up, and how long a
    slow client may leave its buffer full."""
    sse_buffer_events: int = 256
    """``GATEWAY_SSE_BUFFER_EVENTS``: events buffered per stream for a slow client; when full the client is
    sent ``event: overflow`` with the id to resume from, and the stream ends."""
    shutdown_timeout_seconds: int = 20
    """``GATEWAY_SHUTDOWN_TIMEOUT_SECONDS``: after SIGTERM, how long requests in flight may take to finish
    before they are cut off. Longer than the slowest store call (SQLite's 15 s bound) by default, so a
    webhook in flight is answered by its own store call; keep it below the orchestrator's kill delay."""
    retention_days: int | None = None
    """``GATEWAY_RETENTION_DAYS``: finished jobs (with their history) and delivered outbox rows older than
    this many days are deleted by a background task, in small batches; at least
    ``GATEWAY_IDEMPOTENCY_TTL_SECONDS``. Unset keeps everything forever."""

    @property
    def authenticates(self) -> bool:
        """Whether any sender credential is configured (otherwise webhooks are accepted unauthenticated)."""
        return self.webhook_secret is not None or bool(self.signing_keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise :class:`ConfigError` naming the first bad variable."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        environment = _environment(get("GATEWAY_ENV"))
        settings = cls(
            env=environment,
            host=get("GATEWAY_HOST") or cls.host,
            port=_integer("GATEWAY_PORT", get("GATEWAY_PORT"), cls.port, minimum=1, maximum=65535),
            webhook_secret=get("WEBHOOK_SECRET"),
            signing_keys=_signing_keys(get("WEBHOOK_SIGNING_KEYS")),
            tolerance_seconds=_integer(
                "WEBHOOK_TOLERANCE_SECONDS", get("WEBHOOK_TOLERANCE_SECONDS"), cls.tolerance_seconds, minimum=1
            ),
            database=_database(get("DATABASE_URL")),
            db_pool_size=_integer(
                "GATEWAY_DB_POOL_SIZE", get("GATEWAY_DB_POOL_SIZE"), cls.db_pool_size, minimum=1, maximum=1000
            ),
            store_timeout_seconds=_seconds(
                "GATEWAY_STORE_TIMEOUT_SECONDS", get("GATEWAY_STORE_TIMEOUT_SECONDS"), cls.store_timeout_seconds
            ),
            migrate_on_start=_boolean(
                "GATEWAY_MIGRATE_ON_START", get("GATEWAY_MIGRATE_ON_START"), cls.migrate_on_start
            ),
            max_body_bytes=_integer(
                "GATEWAY_MAX_BODY_BYTES", get("GATEWAY_MAX_BODY_BYTES"), cls.max_body_bytes, minimum=1
            ),
            body_timeout_seconds=_seconds(
                "GATEWAY_BODY_TIMEOUT_SECONDS", get("GATEWAY_BODY_TIMEOUT_SECONDS"), cls.body_timeout_seconds
            ),
            max_buffered_bytes=_integer(
                "GATEWAY_MAX_BUFFERED_BYTES", get("GATEWAY_MAX_BUFFERED_BYTES"), cls.max_buffered_bytes, minimum=1
            ),
            idempotency_ttl_seconds=_integer(
                "GATEWAY_IDEMPOTENCY_TTL_SECONDS",
                get("GATEWAY_IDEMPOTENCY_TTL_SECONDS"),
                cls.idempotency_ttl_seconds,
                minimum=1,
            ),
            idempotency_max_keys=_integer(
                "GATEWAY_IDEMPOTENCY_MAX_KEYS",
                get("GATEWAY_IDEMPOTENCY_MAX_KEYS"),
                cls.idempotency_max_keys,
                minimum=1,
            ),
            log_level=_log_level(get("GATEWAY_LOG_LEVEL")),
            log_format=_log_format(get("GATEWAY_LOG_FORMAT"), environment),
            model_labels=tuple(name.strip() for name in (get("GATEWAY_MODEL_LABELS") or "").split(",") if name.strip()),
            max_model_labels=_integer(
                "GATEWAY_MAX_MODEL_LABELS", get("GATEWAY_MAX_MODEL_LABELS"), cls.max_model_labels, minimum=1
            ),
            rate_limit=_rate(
                "GATEWAY_RATE_LIMIT",
                get("GATEWAY_RATE_LIMIT"),
                "GATEWAY_RATE_LIMIT_BURST",
                get("GATEWAY_RATE_LIMIT_BURST"),
            ),
            global_rate_limit=_rate(
                "GATEWAY_RATE_LIMIT_GLOBAL",
                get("GATEWAY_RATE_LIMIT_GLOBAL"),
                "GATEWAY_RATE_LIMIT_GLOBAL_BURST",
                get("GATEWAY_RATE_LIMIT_GLOBAL_BURST"),
            ),
            rate_limit_on_error=_on_error(get("GATEWAY_RATE_LIMIT_ON_ERROR")),
            trusted_proxies=_networks(get("GATEWAY_TRUSTED_PROXIES")),
            redis_url=_redis_url(get("REDIS_URL")),
            redis_pool_size=_integer(
                "GATEWAY_REDIS_POOL_SIZE",
                get("GATEWAY_REDIS_POOL_SIZE"),
                cls.redis_pool_size,
                minimum=1,
                maximum=10_000,
            ),
            redis_key_prefix=get("GATEWAY_REDIS_KEY_PREFIX") or cls.redis_key_prefix,
            forward_url=_forward_url(get("GATEWAY_FORWARD_URL")),
            forward_signing_key=_forward_key(get("GATEWAY_FORWARD_SIGNING_KEY")),
            forward_timeout_seconds=_seconds(
                "GATEWAY_FORWARD_TIMEOUT_SECONDS", get("GATEWAY_FORWARD_TIMEOUT_SECONDS"), cls.forward_timeout_seconds
            ),
            forward_statuses=_forward_statuses(get("GATEWAY_FORWARD_STATUSES")),
            forward_retry_schedule=_retry_schedule(get("GATEWAY_FORWARD_RETRY_SCHEDULE")),
            nats_url=_nats_url(get("GATEWAY_NATS_URL")),
            nats_subject_prefix=_nats_subject_prefix(get("GATEWAY_NATS_SUBJECT_PREFIX")) or cls.nats_subject_prefix,
            nats_stream=_nats_stream(get("GATEWAY_NATS_STREAM")) or cls.nats_stream,
            require_registered_jobs=_boolean(
                "GATEWAY_REQUIRE_REGISTERED_JOBS", get("GATEWAY_REQUIRE_REGISTERED_JOBS"), cls.require_registered_jobs
            ),
            api_token=_api_token(get("GATEWAY_API_TOKEN")),
            public_read=_boolean("GATEWAY_PUBLIC_READ", get("GATEWAY_PUBLIC_READ"), cls.public_read),
            sse_max_streams=_integer(
                "GATEWAY_SSE_MAX_STREAMS", get("GATEWAY_SSE_MAX_STREAMS"), cls.sse_max_streams, minimum=1
            ),
            sse_heartbeat_seconds=_seconds(
                "GATEWAY_SSE_HEARTBEAT_SECONDS", get("GATEWAY_SSE_HEARTBEAT_SECONDS"), cls.sse_heartbeat_seconds
            ),
            sse_buffer_events=_integer(
                "GATEWAY_SSE_BUFFER_EVENTS",
                get("GATEWAY_SSE_BUFFER_EVENTS"),
                cls.sse_buffer_events,
                minimum=1,
                maximum=100_000,
            ),
            shutdown_timeout_seconds=_integer(
                "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS",
                get("GATEWAY_SHUTDOWN_TIMEOUT_SECONDS"),
                cls.shutdown_timeout_seconds,
                minimum=1,
                maximum=3600,
            ),
            retention_days=_retention_days(get("GATEWAY_RETENTION_DAYS")),
        )
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
        if settings.env == "production" and not settings.authenticates:
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
        return settings


def _environment(value: str | None) -> Environment:
    if value is None or value == "development":
        return "development"
    if value == "production":
        return "production"
    raise ConfigError(f"GATEWAY_ENV must be 'development' or 'production', got {value!r}")


def _integer(name: str, value: str | None, default: int, *, minimum: int, maximum: int | None = None) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{name} must be {bounds}, got {number}")
    return number


def _signing_keys(value: str | None) -> tuple[bytes, ...]:
    if value is None:
        return ()
    keys = []
    for position, token in enumerate((part.strip() for part in value.split(",")), start=1):
        if not token:
            continue
        try:
            keys.append(parse_key(token, prefix_optional=True))
        except InvalidKey as error:
            # Never echo the key itself: this message ends up in logs.
            raise ConfigError(f"WEBHOOK_SIGNING_KEYS: key #{position} {error}") from None
    return tuple(keys)


def _seconds(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0.01 <= number <= 60:
        raise ConfigError(f"{name} must be between 0.01 and 60 seconds, got {value!r}")
    return number


def _retention_days(value: str | None) -> int | None:
    return None if value is None else _integer("GATEWAY_RETENTION_DAYS", value, 0, minimum=1, maximum=36500)


def _boolean(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _database(value: str | None) -> Database:
    if value is None:
        return Settings.database
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


def _log_level(value: str | None) -> str:
    if value is None:
        return "INFO"
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"GATEWAY_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return level


def _log_format(value: str | None, environment: Environment) -> LogFormat:
    if value is None:
        return "json" if environment == "production" else "console"
    if value == "json":
        return "json"
    if value == "console":
        return "console"
    raise ConfigError(f"GATEWAY_LOG_FORMAT must be 'json' or 'console', got {value!r}")


def _rate(name: str, value: str | None, burst_name: str, burst: str | None) -> Rate | None:
    if value is None:
        if burst is not None:
            raise ConfigError(f"{burst_name} is set but {name} is not: set the rate the burst belongs to")
        return None
    count_text, sep, period = value.replace(" ", "").lower().partition("/")
    if not sep or period not in _PERIOD_SECONDS or not (count_text.isascii() and count_text.isdigit()):
        raise ConfigError(f"{name} must look like <count>/<second|minute|hour>, e.g. 100/second; got {value!r}")
    count = int(count_text)
    if count < 1:
        raise ConfigError(f"{name} must allow at least 1 request, got {value!r}")
    if count / _PERIOD_SECONDS[period] > _MAX_RATE_PER_SECOND:
        raise ConfigError(f"{name} must be at most {_MAX_RATE_PER_SECOND}/second, got {value!r}")
    return Rate(count, _PERIOD_SECONDS[period], _integer(burst_name, burst, count, minimum=1))


def _on_error(value: str | None) -> OnError:
    if value is None or value.lower() == "allow":
        return "allow"
    if value.lower() == "deny":
        return "deny"
    raise ConfigError(f"GATEWAY_RATE_LIMIT_ON_ERROR must be 'allow' or 'deny', got {value!r}")


def _networks(value: str | None) -> tuple[IPNetwork, ...]:
    if value is None:
        return ()
    networks = []
    for token in (part.strip() for part in value.split(",")):
        if not token:
            continue
        try:
            networks.append(ipaddress.ip_network(token))
        except ValueError as error:
            raise ConfigError(
                f"GATEWAY_TRUSTED_PROXIES: {token!r} is not an IP address or CIDR network ({error})"
            ) from None
    return tuple(networks)


def _api_token(value: str | None) -> str | None:
    if value is not None and len(value) < 16:
        # Never echo the token: this message ends up in logs.
        raise ConfigError(f"GATEWAY_API_TOKEN must be at least 16 characters, got {len(value)}")
    return value


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


def _redis_url(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        # Never echo the URL: it may carry a password.
        shown = f"scheme {scheme!r}" if sep else "no scheme"
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix:// (got {shown})")
    return value


def _forward_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        valid = False
    if not valid:
        # Never echo the URL: it may carry credentials.
        raise ConfigError("GATEWAY_FORWARD_URL must be an http:// or https:// URL with a host")
    return value


def _forward_key(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        return parse_key(value)
    except InvalidKey as error:
        raise ConfigError(f"GATEWAY_FORWARD_SIGNING_KEY {error}") from None


def _forward_statuses(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    statuses = frozenset(part.strip().lower() for part in value.split(",") if part.strip())
    unknown = sorted(statuses.difference(_FORWARD_STATUSES))
    if unknown or not statuses:
        raise ConfigError(
            f"GATEWAY_FORWARD_STATUSES must list statuses among {', '.join(_FORWARD_STATUSES)}, got {value!r}"
        )
    return statuses


def _retry_schedule(value: str | None) -> tuple[float, ...]:
    if value is None:
        return DEFAULT_RETRY_SCHEDULE
    delays = []
    for token in (part.strip() for part in value.split(",")):
        try:
            delay = float(token)
        except ValueError:
            delay = -1.0
        if not 0 <= delay <= _MAX_RETRY_DELAY_SECONDS:
            raise ConfigError(
                "GATEWAY_FORWARD_RETRY_SCHEDULE must be comma-separated seconds, each from 0 to "
                f"{_MAX_RETRY_DELAY_SECONDS}, e.g. 5,300,1800; got {token!r}"
            )
        delays.append(delay)
    return tuple(delays)


def _nats_url(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in ("nats", "tls"):
        raise ConfigError("GATEWAY_NATS_URL must start with nats:// or tls://")
    return value


_NATS_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _nats_subject_prefix(value: str | None) -> str | None:
    if value is None:
        return None
    if not all(_NATS_TOKEN.fullmatch(token) for token in value.split(".")):
        raise ConfigError(
            "GATEWAY_NATS_SUBJECT_PREFIX must be dot-separated tokens of letters, digits, _ and - "
            f"(no wildcard), e.g. gateway.jobs; got {value!r}"
        )
    return value


def _nats_stream(value: str | None) -> str | None:
    if value is None:
        return None
    if not _NATS_TOKEN.fullmatch(value):
        raise ConfigError(f"GATEWAY_NATS_STREAM must be letters, digits, _ and -, e.g. GATEWAY_JOBS; got {value!r}")
    return value
