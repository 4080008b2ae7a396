"""Settings declared with their environment variables, and the one reader that converts them.

A field of a settings dataclass is declared with :func:`setting`: the variables it is read from, its
default, and its bounds and description as a :class:`msgspec.Meta`. :func:`read` converts each variable
that is set by the field's type (integers, seconds, booleans, choices, comma-separated lists, URLs),
checks the bounds, and raises :class:`ConfigError` naming the variable and what it expected. A blank
value counts as unset. Messages never echo a secret or a URL (they may carry credentials).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

__all__ = ("ConfigError", "Declared", "Env", "declared", "read", "setting")


class ConfigError(ValueError):
    """A setting from the environment is missing, malformed or contradicts another one."""


class Env(msgspec.Struct, frozen=True, kw_only=True):
    """How one field is read: its variables (usually one) and what a valid value is.

    The field's type picks the conversion; ``meta`` bounds it (``ge``/``le`` for numbers, each item's for a
    list of numbers; ``min_length`` for text or a list; ``pattern`` for text) and describes it.
    """

    names: tuple[str, ...]
    meta: msgspec.Meta
    expected: str = ""
    """What a valid value (or list item) is, in words: for a ``pattern``'s or a list's message, and the
    reference's description of a value a ``parse`` function reads."""
    choices: tuple[str, ...] = ()
    """For a ``str`` field or a list of them: the accepted values (a ``Literal`` type says them itself)."""
    fold: Literal["lower", "upper"] | None = None
    """Case folded before the value is compared with the choices."""
    schemes: tuple[str, ...] = ()
    """For a URL: the schemes accepted (in any case)."""
    needs_host: bool = False
    """For a URL: it must also name a host (and a valid port, if any)."""
    parse: Callable[..., object] | None = None
    """A hand-written conversion, given the text of every variable in ``names`` (``None`` when unset)."""


class Declared(typing.NamedTuple):
    """One declared field: its name, its resolved type, its default, how it is read, and whether it is a
    secret (left out of ``repr``)."""

    field: str
    type: Any
    default: object
    env: Env
    secret: bool


def setting(
    names: str | tuple[str, ...],
    default: Any,
    description: str,
    *,
    secret: bool = False,
    ge: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    pattern: str | None = None,
    examples: list[str] | None = None,
    expected: str = "",
    choices: tuple[str, ...] = (),
    fold: Literal["lower", "upper"] | None = None,
    schemes: tuple[str, ...] = (),
    needs_host: bool = False,
    parse: Callable[..., object] | None = None,
) -> Any:
    """A dataclass field read from ``names`` (left out of ``repr`` when ``secret``); see :class:`Env`."""
    bounds: dict[str, Any] = {"ge": ge, "le": le, "min_length": min_length, "pattern": pattern, "examples": examples}
    meta = msgspec.Meta(description=description, **{key: value for key, value in bounds.items() if value is not None})
    env = Env(
        names=(names,) if isinstance(names, str) else names,
        meta=meta,
        expected=expected,
        choices=choices,
        fold=fold,
        schemes=schemes,
        needs_host=needs_host,
        parse=parse,
    )
    return dataclasses.field(default=default, repr=not secret, metadata={"env": env})


def declared(cls: type) -> Iterator[Declared]:
    """Every field of the dataclass ``cls`` declared with :func:`setting`, in declaration order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        env = field.metadata.get("env")
        if isinstance(env, Env):
            yield Declared(field.name, hints[field.name], field.default, env, secret=not field.repr)


def read(cls: type, environ: Mapping[str, str]) -> dict[str, object]:
    """The fields of ``cls`` whose variables are set in ``environ``, converted; unset ones are left out
    (they keep their defaults). Raises :class:`ConfigError` for the first bad value, in declaration order."""
    values: dict[str, object] = {}
    for item in declared(cls):
        texts = [environ.get(name, "").strip() or None for name in item.env.names]
        if all(text is None for text in texts):
            continue
        if item.env.parse is not None:
            values[item.field] = item.env.parse(*texts)
        elif (text := texts[0]) is not None:
            values[item.field] = _convert(item.env, _without_none(item.type), text)
    return values


def _without_none(kind: Any) -> Any:
    """``X`` for ``X | None``; any other type as it is."""
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        rest = tuple(arg for arg in typing.get_args(kind) if arg is not type(None))
        return rest[0] if len(rest) == 1 else kind
    return kind


def _convert(env: Env, kind: Any, text: str) -> object:
    origin = typing.get_origin(kind)
    if origin in (tuple, frozenset):
        return _list(env, typing.get_args(kind)[0], text, origin)
    return _scalar(env, kind, text)


def _scalar(env: Env, kind: Any, text: str) -> object:
    name, meta = env.names[0], env.meta
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else env.choices
    if choices:
        return _choice(env, choices, text)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if kind is int:
        try:
            number = int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {text!r}") from None
        if (meta.ge is not None and number < meta.ge) or (meta.le is not None and number > meta.le):
            raise ConfigError(f"{name} must be {_bounds(meta)}, got {number}")
        return number
    if kind is float:
        try:
            seconds = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
        if not _within(meta, seconds):
            raise ConfigError(f"{name} must be {_bounds(meta)} seconds, got {text!r}")
        return seconds
    if kind is str:
        return _text(env, text)
    raise TypeError(f"{name}: no conversion for {kind!r}; declare a parse function")  # a declaration bug


def _text(env: Env, text: str) -> str:
    name, meta = env.names[0], env.meta
    if env.schemes:
        _url(env, text)
    if meta.pattern is not None and not re.fullmatch(meta.pattern, text):
        example = f", e.g. {meta.examples[0]}" if meta.examples else ""
        raise ConfigError(f"{name} must be {env.expected}{example}; got {text!r}")
    if meta.min_length is not None and len(text) < meta.min_length:
        # Never echo the value: a text with a minimum length is a secret, and this message ends up in logs.
        raise ConfigError(f"{name} must be at least {meta.min_length} characters, got {len(text)}")
    return text


def _url(env: Env, text: str) -> None:
    """Refuse a URL of another scheme (or without a host, when one is needed), never echoing it: a URL
    may carry a password."""
    name = env.names[0]
    shown = " or ".join(", ".join(f"{scheme}://" for scheme in env.schemes).rsplit(", ", 1))
    if env.needs_host:
        try:
            parts = urlsplit(text)
            valid = parts.scheme in env.schemes and bool(parts.hostname)
            parts.port  # noqa: B018 -- raises ValueError for a malformed port
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(f"{name} must be an {shown} URL with a host")
        return
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in env.schemes:
        got = f"scheme {scheme!r}" if sep else "no scheme"
        raise ConfigError(f"{name} must start with {shown} (got {got})")


def _choice(env: Env, choices: tuple[str, ...], text: str) -> str:
    value = text.lower() if env.fold == "lower" else text.upper() if env.fold == "upper" else text
    if value in choices:
        return value
    if len(choices) == 2:
        raise ConfigError(f"{env.names[0]} must be {choices[0]!r} or {choices[1]!r}, got {text!r}")
    raise ConfigError(f"{env.names[0]} must be one of {', '.join(choices)}, got {text!r}")


def _list(env: Env, item: Any, text: str, origin: Any) -> object:
    """A comma-separated list: items stripped; blank items skipped, except in a list of numbers (where a
    gap is more likely a typo than a wish)."""
    name, meta = env.names[0], env.meta
    items: list[object] = []
    for token in (part.strip() for part in text.split(",")):
        if not token and item is not float:
            continue
        if item is float:
            try:
                number = float(token)
            except ValueError:
                number = None
            if number is None or not _within(meta, number):
                example = f", e.g. {meta.examples[0]}" if meta.examples else ""
                raise ConfigError(
                    f"{name} must be comma-separated {env.expected}, each from {_number(meta.ge)} to "
                    f"{_number(meta.le)}{example}; got {token!r}"
                )
            items.append(number)
        elif env.choices:
            value = token.lower() if env.fold == "lower" else token
            if value not in env.choices:
                raise ConfigError(_unlisted(env, text))
            items.append(value)
        elif item == ipaddress.IPv4Network | ipaddress.IPv6Network:
            try:
                items.append(ipaddress.ip_network(token))
            except ValueError as error:
                raise ConfigError(f"{name}: {token!r} is not {env.expected} ({error})") from None
        else:
            items.append(token)
    if meta.min_length is not None and len(items) < meta.min_length:
        if env.choices:
            raise ConfigError(_unlisted(env, text))
        raise ConfigError(f"{name} must list at least {meta.min_length} {env.expected}, got {text!r}")
    return origin(items)


def _unlisted(env: Env, text: str) -> str:
    return f"{env.names[0]} must list {env.expected} among {', '.join(env.choices)}, got {text!r}"


def _within(meta: msgspec.Meta, number: float) -> bool:
    return (meta.ge is None or number >= meta.ge) and (meta.le is None or number <= meta.le)


def _bounds(meta: msgspec.Meta) -> str:
    if meta.le is None:
        return f">= {_number(meta.ge)}"
    return f"between {_number(meta.ge)} and {_number(meta.le)}"


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
