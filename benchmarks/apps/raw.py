"""(A) The floor: a raw ASGI app that decodes the body with msgspec and answers 200."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.kinds import kind_named

_decoder = kind_named("image").decoder  # type: ignore[union-attr]
_OK = b'{"received":true}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_OK)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status = 200
    try:
        _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        status = 400
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _OK})
