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

import msgspec

__all__ = (
    "DEFAULT_SENDER",
    "FORMATS",
    "UNKNOWN_SENDER",
    "Sender",
    "SenderFormat",
    "SendersError",
    "parse_senders",
)

SenderFormat = Literal["native"]
"""How a sender's payloads are written: ``native`` is the gateway's own (:mod:`gateway.payloads`)."""
FORMATS: tuple[str, ...] = get_args(SenderFormat)

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
    """The kinds this sender may post; ``None``: every kind."""
    secret_env: str | None = None
    """The variable holding its ``X-Webhook-Secret`` value."""
    signing_keys_env: str | None = None
    """The variable holding its Standard Webhooks ``whsec_`` keys (space- or comma-separated)."""
    rate_limit: str | None = None
    """Its own budget, as ``GATEWAY_RATE_LIMIT`` is written (``50/second``)."""
    rate_limit_burst: int | None = None

    @property
    def credential_variables(self) -> tuple[tuple[str, str], ...]:
        """``(key, variable)`` for each credential the sender names."""
        pairs = (("secret_env", self.secret_env), ("signing_keys_env", self.signing_keys_env))
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
    if sender.rate_limit_burst is not None and sender.rate_limit is None:
        raise SendersError(f"sender {name!r}: rate_limit_burst is set but rate_limit is not")
    for key, variable in sender.credential_variables:
        if not variable:
            raise SendersError(f"sender {name!r}: {key} must name an environment variable")
    return sender


def _key_of(error: msgspec.ValidationError) -> str:
    """``key: `` for an error msgspec located in a table (``- at `$.kinds[0]```), else nothing."""
    match = re.search(r"at `\$\.([a-z_]+)", str(error))
    return f"{match.group(1)}: " if match else ""


def _first_line(error: msgspec.ValidationError) -> str:
    return str(error).split(" - at ", 1)[0].splitlines()[0]
