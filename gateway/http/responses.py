"""Response bodies shared by the routes, in the same shape as Litestar's own error responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec
from litestar import Response
from litestar.openapi.datastructures import ResponseSpec

if TYPE_CHECKING:
    from litestar.types import HTTPResponseStartEvent, Send

__all__ = ("UNAUTHORIZED", "ErrorBody", "error_response", "json_response", "send_json")

_encode = msgspec.json.Encoder().encode


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every 4xx/5xx body: the status code again, and a sentence saying what is wrong."""

    status_code: int
    detail: str


def json_response(body: object, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return Response(_encode(body), status_code=status_code, media_type="application/json", headers=headers)


async def send_json(send: Send, status_code: int, body: object, headers: Mapping[str, str] | None = None) -> None:
    """Answer with ``body`` as JSON straight over ASGI, for a route that has no Litestar response."""
    content = _encode(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    if headers:
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status_code, "headers": raw}
    await send(start)
    await send({"type": "http.response.body", "body": content, "more_body": False})


def error_response(status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return json_response(ErrorBody(status_code=status_code, detail=detail), status_code, headers)


UNAUTHORIZED = ResponseSpec(
    ErrorBody,
    generate_examples=False,
    description="`GATEWAY_API_TOKEN` is set and neither it (`Authorization: Bearer`) nor a valid session "
    "cookie was sent.",
)
"""The answer every route behind the read API's token documents."""
