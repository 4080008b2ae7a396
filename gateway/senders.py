"""Senders: who may post webhooks, declared in one TOML file (``GATEWAY_SENDERS_FILE``).

Each ``[senders.<name>]`` table declares one sender: the format of its payloads, the kinds it may post,
the environment variables holding its credentials (never the values, so the file can be committed) and
its own rate limit. This module only reads the file's declarations, strictly (an unknown key, format or
kind is refused); the settings module resolves the variables they name (:mod:`gateway.config`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from typing import Literal, get_args
from urllib.parse import urlsplit

import msgspec

__all__ = (
    "DEFAULT_SENDER",
    "FORMATS",
    "PROVIDER_FORMATS",
    "UNKNOWN_SENDER",
    "Sender",
    "SenderFormat",
    "SendersError",
    "check_jwks_url",
    "parse_senders",
)

SenderFormat = Literal["native", "replicate", "openai", "fal"]
"""How a sender's payloads are written: ``native`` is the gateway's own (:mod:`gateway.payloads`); the others
are AI providers' callbacks (:mod:`gateway.providers`), posted to the sender's own route."""
FORMATS: tuple[str, ...] = get_args(SenderFormat)
PROVIDER_FORMATS: tuple[str, ...] = tuple(format_ for format_ in FORMATS if format_ != "native")

DEFAULT_SENDER = "default"
"""The one sender of a deployment without a senders file (``WEBHOOK_SECRET``, ``WEBHOOK_SIGNING_KEYS``)."""
UNKNOWN_SENDER = "unknown"
"""The ``sender`` label of a request no sender's credentials verify."""

_NAME = re.compile(r"[a-z0-9_-]{1,64}")


class SendersError(ValueError):
    """The senders file cannot be used. The message is one line naming the sender and the key."""


class Sender(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[senders.<name>]`` table, as written in the file (variables not yet resolved)."""

    name: str = ""
    """The table's name (filled in from the file, not a key of the table)."""
    format: SenderFormat = "native"
    kinds: tuple[str, ...] | None = None
    """The kinds this sender may post; ``None``: every kind (a native sender's)."""
    kind: str | None = None
    """The one kind of a provider sender's jobs (instead of ``kinds``)."""
    secret_env: str | None = None
    """The variable holding its ``X-Webhook-Secret`` value."""
    signing_keys_env: str | None = None
    """The variable holding its Standard Webhooks ``whsec_`` keys (space- or comma-separated)."""
    public_keys_env: str | None = None
    """The variable holding its ed25519 ``whpk_`` public keys (Standard Webhooks ``v1a``; fal's signatures)."""
    jwks_url: str | None = None
    """Where its ed25519 public keys are published as a JSON Web Key Set."""
    rate_limit: str | None = None
    """Its own budget, as ``GATEWAY_RATE_LIMIT`` is written (``50/second``)."""
    rate_limit_burst: int | None = None

    @property
    def credential_variables(self) -> tuple[tuple[str, str], ...]:
        """``(key, variable)`` for each credential the sender names."""
        pairs = (
            ("secret_env", self.secret_env),
            ("signing_keys_env", self.signing_keys_env),
            ("public_keys_env", self.public_keys_env),
        )
        return tuple((key, variable) for key, variable in pairs if variable is not None)


_KEYS = tuple(field for field in Sender.__struct_fields__ if field != "name")


def parse_senders(text: str, kinds: Iterable[str]) -> tuple[Sender, ...]:
    """The senders declared by ``text`` (a TOML document), in the file's order.

    Raises:
        SendersError: the document does not parse; it has a top-level key other than ``senders``; a
            sender's name, key, format or kind is unknown; a value has the wrong type; no sender is
            declared.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SendersError(f"is not valid TOML ({error})") from None
    unknown = [key for key in document if key != "senders"]
    if unknown:
        raise SendersError(f"unknown top-level key {unknown[0]!r}: senders are declared as [senders.<name>]")
    tables = document.get("senders")
    if not isinstance(tables, dict) or not tables:
        raise SendersError("declares no sender: add a [senders.<name>] table")
    known_kinds = tuple(kinds)
    return tuple(_sender(name, table, known_kinds) for name, table in tables.items())


def _sender(name: str, table: object, kinds: tuple[str, ...]) -> Sender:
    if not _NAME.fullmatch(name):
        raise SendersError(f"sender {name!r}: a name is 1 to 64 of a-z, 0-9, _ and -")
    if name == UNKNOWN_SENDER:
        raise SendersError(f"sender {name!r}: the name is reserved for requests no sender's credentials verify")
    if not isinstance(table, dict):
        raise SendersError(f"sender {name!r}: must be a table ([senders.{name}])")
    for key in table:
        if key not in _KEYS:
            raise SendersError(f"sender {name!r}: unknown key {key!r} (known: {', '.join(_KEYS)})")
    if "format" in table and table["format"] not in FORMATS:
        raise SendersError(f"sender {name!r}: unknown format {table['format']!r} (known: {', '.join(FORMATS)})")
    try:
        sender = msgspec.convert({**table, "name": name}, Sender)
    except msgspec.ValidationError as error:
        raise SendersError(f"sender {name!r}: {_key_of(error)}{_first_line(error)}") from None
    for kind in sender.kinds or ():
        if kind not in kinds:
            raise SendersError(f"sender {name!r}: kinds: unknown kind {kind!r} (known: {', '.join(kinds)})")
    _format_keys(sender)
    if sender.kind is not None and sender.kind not in kinds:
        raise SendersError(f"sender {name!r}: kind: unknown kind {sender.kind!r} (known: {', '.join(kinds)})")
    if sender.rate_limit_burst is not None and sender.rate_limit is None:
        raise SendersError(f"sender {name!r}: rate_limit_burst is set but rate_limit is not")
    for key, variable in sender.credential_variables:
        if not variable:
            raise SendersError(f"sender {name!r}: {key} must name an environment variable")
    return sender


_ALLOWED_CREDENTIALS = {
    "native": ("secret_env", "signing_keys_env", "public_keys_env", "jwks_url"),
    # Replicate and OpenAI sign with Standard Webhooks HMAC and a whsec_ secret; fal with ed25519 keys.
    "replicate": ("signing_keys_env",),
    "openai": ("signing_keys_env",),
    "fal": ("public_keys_env", "jwks_url"),
}


def _format_keys(sender: Sender) -> None:
    """Refuse keys the sender's format has no use for: a provider declares one ``kind`` (not ``kinds``) and
    only the credentials its provider signs with; a native sender declares ``kinds``, never ``kind``."""
    where = f"sender {sender.name!r}"
    if sender.format == "native":
        if sender.kind is not None:
            raise SendersError(f"{where}: kind is for a provider's format; a native sender declares kinds")
    else:
        if sender.kinds is not None:
            raise SendersError(f"{where}: format {sender.format} declares kind (one kind), not kinds")
        if sender.kind is None:
            raise SendersError(f"{where}: format {sender.format} needs kind (the kind of its jobs)")
    allowed = _ALLOWED_CREDENTIALS[sender.format]
    for key in ("secret_env", "signing_keys_env", "public_keys_env", "jwks_url"):
        if getattr(sender, key) is not None and key not in allowed:
            raise SendersError(f"{where}: {key} is not used by format {sender.format} (it takes {', '.join(allowed)})")
    if sender.jwks_url is not None and not sender.jwks_url:
        raise SendersError(f"{where}: jwks_url must be a URL")


def check_jwks_url(url: str, *, allow_http: bool) -> str | None:
    """Why ``url`` cannot be a ``jwks_url`` (``None``: it can): ``https://`` with a host, or ``http://``
    where ``allow_http`` (development and tests)."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return "must start with https://" + (" or http://" if allow_http else " in production")
    if not parts.hostname:
        return "has no host"
    return None


def _key_of(error: msgspec.ValidationError) -> str:
    """``key: `` for an error msgspec located in a table (``- at `$.kinds[0]```), else nothing."""
    match = re.search(r"at `\$\.([a-z_]+)", str(error))
    return f"{match.group(1)}: " if match else ""


def _first_line(error: msgspec.ValidationError) -> str:
    return str(error).split(" - at ", 1)[0].splitlines()[0]
