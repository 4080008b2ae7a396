"""``POST /api/webhooks/<kind>-completion``: one route per registered job kind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from litestar import Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from gateway.http.openapi import webhook_operation
from gateway.http.responses import ErrorBody, error_response, json_response
from gateway.ingest.errors import Refusal, Rejection
from gateway.ingest.pipeline import Accepted
from gateway.ingest.ratelimit import client_address
from gateway.telemetry.metrics import UNKNOWN_KIND

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from litestar.types import Receive

    from gateway.ingest.pipeline import Pipeline
    from gateway.kinds import JobKind
    from gateway.telemetry.recorder import Telemetry

__all__ = ("unknown_webhook_route", "webhook_route")

_RESPONSES = {
    400: "Malformed JSON or a payload that violates the schema; `detail` names the field path.",
    401: "Missing or invalid credentials (which part was wrong is not said).",
    404: "`GATEWAY_REQUIRE_REGISTERED_JOBS` is on and the app never registered the job (`POST /api/jobs`); "
    "`detail` names the job id. Nothing was recorded.",
    409: "The job is known under another kind; `detail` names the route its webhooks belong to.",
    413: "Body larger than `GATEWAY_MAX_BODY_BYTES`.",
    415: "Content-Type is not application/json.",
    429: "The sender (or the gateway as a whole) is over its rate limit; nothing was recorded. Retry after "
    "`Retry-After` seconds with the same request. `RateLimit` and `RateLimit-Policy` describe the budget.",
    503: "A store is unavailable; nothing was recorded. Retry after `Retry-After` seconds.",
}


def webhook_route(kind: JobKind, pipeline: Pipeline) -> HTTPRouteHandler:
    """The webhook route of ``kind``, feeding ``pipeline``."""

    async def receive_webhook(request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.scope["headers"]}
        try:
            accepted, answer_headers = await pipeline.ingest(
                kind, headers, _body_chunks(request.receive), client=client_address(request.scope)
            )
        except Rejection as rejection:
            return error_response(rejection.status_code, rejection.detail, rejection.headers)
        return json_response(accepted, headers=answer_headers)

    return post(
        kind.route,
        name=f"{kind.name}-webhook",
        operation_id=f"receive{kind.name.title()}Webhook",
        summary=f"Receive a job-status webhook for {kind.name} jobs",
        description=kind.description,
        tags=["webhooks"],
        status_code=200,
        operation_class=webhook_operation(kind),
        responses={
            200: ResponseSpec(Accepted, description="Recorded (or already recorded): see `outcome`."),
            **{code: ResponseSpec(ErrorBody, description=text) for code, text in _RESPONSES.items()},
        },
    )(receive_webhook)


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
