"""``POST /api/webhooks/<kind>-completion``: one route per registered job kind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from litestar import Response, asgi, post
from litestar.enums import ScopeType
from litestar.exceptions import ClientException
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send  # at runtime: Litestar reads the handler's signature

from gateway.http.responses import ErrorBody, error_response, send_json
from gateway.ingest.errors import Refusal, Rejection
from gateway.ingest.ratelimit import client_address
from gateway.telemetry.metrics import UNKNOWN_KIND

if TYPE_CHECKING:
    from litestar.handlers import ASGIRouteHandler, HTTPRouteHandler
    from litestar.types import HTTPResponseStartEvent

    from gateway.ingest.pipeline import Pipeline
    from gateway.kinds import JobKind
    from gateway.telemetry.recorder import Telemetry

__all__ = ("unknown_webhook_route", "webhook_route")

# The orders Litestar gives on its own routes: a 405 and an OPTIONS answer list the methods differently.
_ALLOW = "POST, OPTIONS"
_ALLOW_OPTIONS = b"OPTIONS, POST"
_METHOD_NOT_ALLOWED = ErrorBody(status_code=405, detail="Method Not Allowed")


def webhook_route(kind: JobKind, pipeline: Pipeline) -> ASGIRouteHandler:
    """The webhook route of ``kind``, feeding ``pipeline``.

    A raw ASGI route, not a Litestar HTTP handler, by measurement: the pipeline reads the request itself
    (signatures need the exact bytes), so Litestar's parameter parsing and response objects did nothing
    for it and cost about 45 us of a webhook's CPU, a sixth of the whole. Litestar leaves such routes out
    of the OpenAPI document: :func:`gateway.http.openapi.document_webhooks` puts them in. Other methods
    are answered as Litestar answers them on its own routes (405 with ``Allow``, ``OPTIONS`` 204).
    """

    async def receive_webhook(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            raise ClientException  # a websocket to a webhook path: refused as Litestar's router refuses one
        method = scope["method"]
        if method != "POST":
            await _other_method(method, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            accepted, answer_headers = await pipeline.ingest(
                kind, headers, _body_chunks(receive), client=client_address(scope)
            )
        except Rejection as rejection:
            body = ErrorBody(status_code=rejection.status_code, detail=rejection.detail)
            await send_json(send, rejection.status_code, body, rejection.headers)
            return
        await send_json(send, 200, accepted, answer_headers)

    return asgi(kind.route, name=f"{kind.name}-webhook", copy_scope=False)(receive_webhook)


async def _other_method(method: str, send: Send) -> None:
    if method == "OPTIONS":
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", _ALLOW_OPTIONS)],
        }
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await send_json(send, 405, _METHOD_NOT_ALLOWED, {"Allow": _ALLOW})


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Rejection(400, Refusal.INVALID, "Client disconnected before sending the whole body")
        chunk = cast("bytes", message.get("body", b""))
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def unknown_webhook_route(routes: tuple[str, ...], telemetry: Telemetry) -> HTTPRouteHandler:
    """Any other ``POST /api/webhooks/...``: a 404 that lists the real routes, counted as kind ``unknown``.

    The seed's original bug was a job posted to the wrong endpoint and answered with a bare 404: this
    one says where webhooks go, and the miss shows in the metrics.
    """

    @post(
        "/api/webhooks/{name:str}",
        name="unknown-webhook",
        summary="Any other webhook path: 404 naming the webhook routes",
        tags=["webhooks"],
        include_in_schema=False,
    )
    async def unknown_webhook(name: FromPath[str]) -> Response[bytes]:
        started = time.perf_counter()
        rejection = Rejection(
            404, Refusal.INVALID, f"No webhook route /api/webhooks/{name}: webhooks go to {', '.join(routes)}"
        )
        telemetry.refused(UNKNOWN_KIND, rejection, time.perf_counter() - started)
        return error_response(rejection.status_code, rejection.detail)

    return unknown_webhook
