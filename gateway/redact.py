"""URLs as the gateway shows them: every password masked, wherever it sits in the URL.

A URL the operator configures (``DATABASE_URL``, ``REDIS_URL``, ``GATEWAY_NATS_URL``,
``GATEWAY_FORWARD_URL``, the OTLP endpoint) may carry a password in its user-info (``user:pass@host``) or
in a query parameter (``?password=...``, ``?token=...``). Every command output and log line that names
such a URL goes through :func:`shown_url`; text that may quote one (a driver's error message) goes
through :func:`scrub`. Both are pure functions, safe anywhere.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ("MASK", "scrub", "shown_url", "url_secrets")

MASK = "***"
_SECRET_NAMES = ("pass", "pwd", "secret", "token", "key", "auth", "sig", "credential", "session")
"""A query parameter whose name contains one of these carries a secret (``password``, ``sslpassword``,
``api_key``, ``access_token``, ``X-Amz-Signature``...): its value is masked."""


def shown_url(url: str) -> str:
    """``url`` with the password of its user-info and the value of every secret-looking query parameter
    replaced by ``***``; the scheme, user, host, port, path and other parameters are kept."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    location, question, query = rest.partition("?")
    credentials, at, host = location.rpartition("@")
    if at:
        user, colon, _ = credentials.partition(":")
        location = f"{user}:{MASK}@{host}" if colon else f"{user}@{host}"
    if question:
        query = "&".join(_shown_parameter(parameter) for parameter in query.split("&"))
    return f"{scheme}{separator}{location}{question}{query}"


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with every secret found in ``urls`` (as written, and percent-decoded) replaced by ``***``:
    for messages that may quote a URL or a part of one, such as a driver's connection error."""
    for secret in url_secrets(*urls):
        text = text.replace(secret, MASK)
    return text


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """Every password in ``urls`` (as written and percent-decoded), longest first: what log lines mask."""
    return tuple(sorted({value for url in urls if url for value in _secrets(url)}, key=len, reverse=True))


def _shown_parameter(parameter: str) -> str:
    name, equals, _ = parameter.partition("=")
    return f"{name}={MASK}" if equals and _is_secret(name) else parameter


def _is_secret(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(part in lowered for part in _SECRET_NAMES)


def _secrets(url: str) -> set[str]:
    """The passwords in ``url``, as written and percent-decoded (empty ones left out)."""
    _, separator, rest = url.partition("://")
    location, _, query = (rest if separator else url).partition("?")
    credentials, at, _ = location.rpartition("@")
    found = []
    if at and ":" in credentials:
        found.append(credentials.partition(":")[2])
    for parameter in query.split("&"):
        name, equals, value = parameter.partition("=")
        if equals and _is_secret(name):
            found.append(value)
    return {form for value in found for form in (value, unquote(value)) if form}
