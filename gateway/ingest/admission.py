"""Stages 2 and 4: cheap checks on the headers, then reading the body within its size limit.

A request that announces too large a body is refused before a byte of it is read; one that sends more
than it announced (or streams without ``Content-Length``) is cut off as soon as it passes the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

from gateway.answers import RefusalReason, WebhookRefused

__all__ = ("check_headers", "read_body")


def check_headers(headers: Mapping[str, str], max_body_bytes: int) -> None:
    """Refuse a non-JSON content type (415) or an announced body over the limit (413)."""
    content_type = headers.get("content-type")
    if content_type is None or not _is_json(content_type):
        raise WebhookRefused(
            415,
            RefusalReason.UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        )
    announced = headers.get("content-length")
    if announced is not None:
        if not (announced.isascii() and announced.isdigit()):
            raise WebhookRefused(400, RefusalReason.INVALID, "Content-Length must be a non-negative integer")
        # Compare lengths first: int() of thousands of digits is slow, and refused past 4300 of them.
        if len(announced.lstrip("0")) > len(str(max_body_bytes)) or int(announced) > max_body_bytes:
            raise _too_large(max_body_bytes)


async def read_body(chunks: AsyncIterable[bytes], max_body_bytes: int) -> bytes:
    """Read the whole body, refusing it (413) as soon as it grows past the limit."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body_bytes:
            raise _too_large(max_body_bytes)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _too_large(max_body_bytes: int) -> WebhookRefused:
    return WebhookRefused(
        413, RefusalReason.TOO_LARGE, f"Request body is larger than the limit of {max_body_bytes} bytes"
    )
