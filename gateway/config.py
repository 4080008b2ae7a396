"""Configuration: every setting the gateway reads, from the environment, validated once at start-up.

A bad value stops start-up with a :class:`ConfigError` naming the variable, so a typo in a deployment
never turns into a gateway that silently runs with a default. Secret values are never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ("ConfigError", "Settings", "SqliteDatabase")

Environment = Literal["development", "production"]
LogFormat = Literal["json", "console"]

_MIB = 1024 * 1024
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting from the environment is missing, malformed or contradicts another one."""


@dataclass(frozen=True, slots=True)
class SqliteDatabase:
    """The embedded job store: one SQLite file (or ``:memory:`` for throwaway runs)."""

    path: str


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults of the embedded single-process mode."""

    env: Environment = "development"
    """``GATEWAY_ENV``: ``production`` refuses to start without a way to authenticate senders."""
    host: str = "127.0.0.1"
    """``GATEWAY_HOST``: address ``gateway serve`` binds (``--host`` overrides)."""
    port: int = 8000
    """``GATEWAY_PORT``: port ``gateway serve`` binds (``--port`` overrides)."""
    webhook_secret: str | None = field(default=None, repr=False)
    """``WEBHOOK_SECRET``: shared secret compared, in constant time, with the ``X-Webhook-Secret`` header."""
    signing_keys: tuple[bytes, ...] = field(default=(), repr=False)
    """``WEBHOOK_SIGNING_KEYS``: Standard Webhooks keys (``whsec_...``), decoded; several allow rotation."""
    tolerance_seconds: int = 300
    """``WEBHOOK_TOLERANCE_SECONDS``: how far a signed ``webhook-timestamp`` may be from our clock."""
    database: SqliteDatabase = SqliteDatabase("gateway.db")
    """``DATABASE_URL``: where jobs and their history live (``sqlite:///gateway.db`` by default)."""
    max_body_bytes: int = _MIB
    """``GATEWAY_MAX_BODY_BYTES``: larger bodies are refused with 413 before being read whole."""
    idempotency_ttl_seconds: int = 72 * 3600
    """``GATEWAY_IDEMPOTENCY_TTL_SECONDS``: how long a delivery is remembered in memory; covers the
    sender's retry horizon (Standard Webhooks' example schedule spans about three days)."""
    idempotency_max_keys: int = 1_000_000
    """``GATEWAY_IDEMPOTENCY_MAX_KEYS``: bound on remembered keys; the oldest are evicted first (the job
    store's unique constraint still catches a duplicate whose key was evicted)."""
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
            max_body_bytes=_integer(
                "GATEWAY_MAX_BODY_BYTES", get("GATEWAY_MAX_BODY_BYTES"), cls.max_body_bytes, minimum=1
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
        )
        if settings.env == "production" and not settings.authenticates:
            raise ConfigError(
                "GATEWAY_ENV=production needs WEBHOOK_SECRET or WEBHOOK_SIGNING_KEYS: "
                "refusing to accept unauthenticated webhooks in production"
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
        encoded = token.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            # Never echo the key itself: this message ends up in logs.
            raise ConfigError(
                f"WEBHOOK_SIGNING_KEYS: key #{position} is not valid base64 after its 'whsec_' prefix"
            ) from None
        if len(key) < 16:
            raise ConfigError(f"WEBHOOK_SIGNING_KEYS: key #{position} is shorter than 16 bytes once decoded")
        keys.append(key)
    return tuple(keys)


def _database(value: str | None) -> SqliteDatabase:
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
    if scheme in ("postgresql", "postgres"):
        raise ConfigError("DATABASE_URL: PostgreSQL is not supported yet; use sqlite:///path.db")
    raise ConfigError(
        "DATABASE_URL must look like sqlite:///relative.db or sqlite:////absolute/path.db "
        f"(got a value with scheme {scheme!r})"
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
