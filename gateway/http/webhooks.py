"""``POST /api/webhooks/<kind>-completion``: one route per registered job kind; and
``POST /api/senders/<name>/webhooks``: one route per AI provider sender."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from litestar import Litestar, Response, asgi, post
from litestar.enums import ScopeType
from litestar.exceptions import ClientException
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send  # at runtime: Litestar reads the handler's signature

from gateway.answers import RefusalReason, WebhookRefused
from gateway.http.auth import OWN_AUTHENTICATION
from gateway.http.responses import ErrorBody, error_response, send_json
from gateway.ingest.ratelimit import client_address
from gateway.telemetry.metrics import UNKNOWN_KIND

if TYPE_CHECKING:
    from litestar.handlers import ASGIRouteHandler, HTTPRouteHandler
    from litestar.openapi.spec import OpenAPI, PathItem
    from litestar.types import ASGIApp, HTTPResponseStartEvent, HTTPScope, LifeSpanReceive, LifeSpanScope, LifeSpanSend

    from gateway.ingest.pipeline import Pipeline, ProviderSender
    from gateway.kinds import JobKind
    from gateway.telemetry.recorder import Telemetry

__all__ = (
    "WebhooksFirst",
    "provider_receiver",
    "provider_route",
    "sender_path",
    "unknown_sender_route",
    "unknown_webhook_route",
    "webhook_receiver",
    "webhook_route",
)

_HTTP: Final = ScopeType.HTTP  # read once: an Enum class attribute goes through EnumType.__getattr__'s hook

logger = logging.getLogger(__name__)

# The orders Litestar gives on its own routes: a 405 and an OPTIONS answer list the methods differently.
_ALLOW = "POST, OPTIONS"
_ALLOW_OPTIONS = b"OPTIONS, POST"
_METHOD_NOT_ALLOWED = ErrorBody(status_code=405, detail="Method Not Allowed")
_INTERNAL_ERROR = ErrorBody(status_code=500, detail="Internal Server Error")


class WebhooksFirst(Litestar):
    """The gateway's Litestar app, except that a webhook ``POST`` goes straight to its receiver.

    A seam over Litestar (docs/seams.md): it overrides only the public ASGI entry point, and relies on
    nothing else of Litestar's than what its router would set in the scope for the receiver (the route
    template, for the span). Litestar's router and middleware stack do nothing for a webhook: the path
    is static, the receiver answers every outcome itself (errors included), and the one middleware the
    gateway has, the server span, is given to the receiver directly; what skipping them saves is
    measured by the benchmark's ``G`` beside ``G-routed``. Everything else, other methods and trailing
    slashes on webhook paths included, is routed by Litestar, where the webhook routes are registered
    too (405, ``OPTIONS``). ``webhooks`` empty: plain Litestar routing, with the same answers, metrics
    and spans (tests/test_seams.py).

    Litestar leaves raw ASGI routes out of its OpenAPI document: the public ``openapi_schema`` property
    is extended with their operations (``webhook_paths``), and the document is built when first read.
    """

    def __init__(
        self,
        *,
        webhooks: Mapping[str, ASGIApp],
        webhook_paths: Callable[[], Mapping[str, PathItem]] = dict,
        **config: Any,
    ) -> None:
        self._webhook_paths = webhook_paths
        """The OpenAPI path items of the raw ASGI routes, which Litestar leaves out of its document."""
        self._documented: OpenAPI | None = None
        super().__init__(**config)
        self._webhooks = dict(webhooks)
        """Receivers by path, each already wrapped in the app's middleware."""

    @property
    def openapi_schema(self) -> OpenAPI:
        """Litestar's document with ``webhook_paths`` added after its own paths, built on the first read
        (an app that never serves or reads it never builds it), and again if Litestar rebuilds it."""
        openapi = super().openapi_schema
        if openapi is not self._documented:
            openapi.paths = {**(openapi.paths or {}), **self._webhook_paths()}
            self._documented = openapi
        return openapi

    async def __call__(
        self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive, send: Send | LifeSpanSend
    ) -> None:
        if scope["type"] == _HTTP:
            http = cast("HTTPScope", scope)
            receiver = self._webhooks.get(http["path"]) if http["method"] == "POST" else None
            if receiver is not None:
                http["path_template"] = http["path"]  # as Litestar's router sets it: the span's route
                await receiver(http, cast("Receive", receive), cast("Send", send))
                return
        await super().__call__(scope, receive, send)


def webhook_receiver(kind: JobKind, pipeline: Pipeline) -> ASGIApp:
    """The raw ASGI app receiving webhooks of ``kind`` into ``pipeline``.

    Raw ASGI (Litestar's public ``asgi`` route handler), not a Litestar HTTP handler, by measurement:
    the pipeline reads the request itself (signatures need the exact bytes), so Litestar's parameter
    parsing and response objects did nothing for it and cost a sixth of a webhook's CPU (docs/seams.md).
    An ``asgi`` route takes every method, so other methods are answered here as Litestar answers them
    on its own routes (405 with ``Allow``, ``OPTIONS`` 204).
    """

    async def ingest(headers: Mapping[str, str], receive: Receive, client: str) -> tuple[Any, Mapping[str, str]]:
        return await pipeline.ingest(kind, headers, _body_chunks(receive), client=client)

    return _receiver(kind.route, ingest)


def provider_receiver(provider: ProviderSender, pipeline: Pipeline) -> ASGIApp:
    """The raw ASGI app receiving ``provider``'s callbacks into ``pipeline`` (as :func:`webhook_receiver`)."""

    async def ingest(headers: Mapping[str, str], receive: Receive, client: str) -> tuple[Any, Mapping[str, str]]:
        return await pipeline.ingest_provider(provider, headers, _body_chunks(receive), client=client)

    return _receiver(sender_path(provider.name), ingest)


def sender_path(name: str) -> str:
    return f"/api/senders/{name}/webhooks"


def _receiver(
    route: str, ingest: Callable[[Mapping[str, str], Receive, str], Awaitable[tuple[Any, Mapping[str, str]]]]
) -> ASGIApp:
    async def receive_webhook(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != _HTTP:
            raise ClientException  # a websocket to a webhook path: refused as Litestar's router refuses one
        method = scope["method"]
        if method != "POST":
            await _other_method(method, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            accepted, answer_headers = await ingest(headers, receive, client_address(scope))
        except WebhookRefused as rejection:
            body = ErrorBody(status_code=rejection.status_code, detail=rejection.detail)
            await send_json(send, rejection.status_code, body, rejection.headers)
            return
        except Exception:
            # A bug of ours, never the sender's doing: logged with its traceback, answered as Litestar would.
            logger.exception("webhook to %s failed unexpectedly", route)
            await send_json(send, 500, _INTERNAL_ERROR)
            return
        await send_json(send, 200, accepted, answer_headers)

    return receive_webhook


def webhook_route(kind: JobKind, receiver: ASGIApp) -> ASGIRouteHandler:
    """``receiver`` as Litestar's route for ``kind``: what :class:`WebhooksFirst` does not take itself.

    Litestar leaves raw ASGI routes out of the OpenAPI document:
    :func:`gateway.http.openapi.webhook_paths` describes them.
    """
    return asgi(kind.route, name=f"{kind.name}-webhook", copy_scope=False, opt=OWN_AUTHENTICATION)(receiver)


def provider_route(provider: ProviderSender, receiver: ASGIApp) -> ASGIRouteHandler:
    """``receiver`` as Litestar's route for ``provider`` (``POST /api/senders/<name>/webhooks``)."""
    return asgi(
        sender_path(provider.name), name=f"{provider.name}-sender-webhook", copy_scope=False, opt=OWN_AUTHENTICATION
    )(receiver)


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
            raise WebhookRefused(400, RefusalReason.INVALID, "Client disconnected before sending the whole body")
        chunk = cast("bytes", message.get("body", b""))
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def unknown_sender_route(providers: tuple[str, ...], telemetry: Telemetry) -> HTTPRouteHandler:
    """``POST /api/senders/<name>/webhooks`` for a name that is no provider sender: a 404 naming the
    provider senders (a native sender posts to the kind routes), counted as kind ``unknown``."""
    known = ", ".join(sender_path(provider) for provider in providers) or "none is declared"
    return _not_found_route(
        "/api/senders/{name:str}/webhooks",
        "unknown-sender-webhook",
        "A provider sender's callbacks; any other name: 404",
        telemetry,
        lambda name: (
            f"No provider sender {name!r}: a provider's callbacks go to its own route ({known}); a native "
            "sender posts to /api/webhooks/<kind>-completion"
        ),
    )


def unknown_webhook_route(routes: tuple[str, ...], telemetry: Telemetry) -> HTTPRouteHandler:
    """Any other ``POST /api/webhooks/...``: a 404 that lists the real routes, counted as kind ``unknown``.

    The seed's original bug was a job posted to the wrong endpoint and answered with a bare 404: this
    one says where webhooks go, and the miss shows in the metrics.
    """
    return _not_found_route(
        "/api/webhooks/{name:str}",
        "unknown-webhook",
        "Any other webhook path: 404 naming the webhook routes",
        telemetry,
        lambda name: f"No webhook route /api/webhooks/{name}: webhooks go to {', '.join(routes)}",
    )


def _not_found_route(
    path: str, route_name: str, summary: str, telemetry: Telemetry, detail: Callable[[str], str]
) -> HTTPRouteHandler:
    """A ``POST`` route (left out of the OpenAPI document) that answers 404 with ``detail(name)``, ``name``
    being the path's last segment, and counts the refusal as kind ``unknown``."""

    @post(path, name=route_name, opt=OWN_AUTHENTICATION, summary=summary, tags=["webhooks"], include_in_schema=False)
    async def not_found(name: FromPath[str]) -> Response[bytes]:
        started = time.perf_counter()
        rejection = WebhookRefused(404, RefusalReason.INVALID, detail(name))
        telemetry.webhook_refused(UNKNOWN_KIND, rejection, time.perf_counter() - started)
        return error_response(rejection.status_code, rejection.detail)

    return not_found
