"""OpenAPI documentation for the webhook routes, which are raw ASGI routes (see
:func:`gateway.http.webhooks.webhook_route`): Litestar neither infers nor includes them, so they are
described here and added to the document Litestar builds for the other routes.

The request body schema is msgspec's own JSON Schema of each kind's payload union, so what the schema
promises is exactly what the decoder accepts; schema-driven fuzzers then exercise real payloads.

The API docs (``/schema``) are Swagger UI served from the package's own files (the ``swagger-ui-bundle-v2``
distribution), never from a CDN: they work offline and tell no third party who reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec
from litestar import get
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    RequestBody,
    Schema,
)
from litestar.response import File
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from gateway.answers import Accepted, Acknowledged
from gateway.http.responses import ErrorBody
from gateway.http.webhooks import sender_path

if TYPE_CHECKING:
    from collections.abc import Iterable

    from litestar import Request, Router
    from litestar.handlers import HTTPRouteHandler
    from litestar.openapi.spec import Reference

    from gateway.ingest.pipeline import ProviderSender
    from gateway.kinds import JobKind

__all__ = ("api_docs", "read_document", "webhook_paths")

_VIEWER = Path(swagger_ui_path)
"""Swagger UI's files, in a directory named after its version (``swagger-ui-<version>``)."""
_VIEWER_URL = f"/schema/static/{_VIEWER.name}"
_VIEWER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
}
_FAVICON = '<link rel="icon" type="image/svg+xml" href="/favicon.ico">'

_HEADERS = (
    (
        "X-Webhook-Secret",
        "The shared secret (`WEBHOOK_SECRET`, or the sender's `secret_env` in `GATEWAY_SENDERS_FILE`), if the "
        "sender authenticates with it.",
    ),
    ("webhook-id", "Standard Webhooks message id; also the delivery's idempotency key."),
    ("webhook-timestamp", "Standard Webhooks timestamp, integer seconds since the epoch."),
    (
        "webhook-signature",
        "Standard Webhooks signatures, space-separated: `v1,<base64 HMAC-SHA256>` or `v1a,<base64 ed25519>`.",
    ),
)
_PROVIDER_HEADERS = {
    "replicate": _HEADERS[1:],
    "openai": _HEADERS[1:],
    "fal": (
        ("X-Fal-Webhook-Request-Id", "fal's request id (the job id)."),
        ("X-Fal-Webhook-User-Id", "fal's user id."),
        ("X-Fal-Webhook-Timestamp", "Integer seconds since the epoch; the event's time."),
        ("X-Fal-Webhook-Signature", "ed25519 signature, in hex, under a key of the sender's JWK Set."),
    ),
}
_PROVIDER_DOCS = {
    "replicate": "A Replicate prediction (https://replicate.com/docs/topics/webhooks/receive-webhook).",
    "openai": "An OpenAI webhook event (https://developers.openai.com/api/docs/api-reference/webhook-events).",
    "fal": "A fal queue webhook (https://docs.fal.ai/model-apis/model-endpoints/webhooks).",
}
_ERRORS = {
    400: "Malformed JSON or a payload that violates the schema; `detail` names the field path.",
    401: "Missing or invalid credentials (which part was wrong is not said).",
    403: "The sender (of `GATEWAY_SENDERS_FILE`) may not post this kind; `detail` names it. Nothing was recorded.",
    404: "`GATEWAY_REQUIRE_REGISTERED_JOBS` is on and the app never registered the job (`POST /api/jobs`); "
    "`detail` names the job id. Nothing was recorded.",
    409: "The job is known under another kind (`detail` names the route its webhooks belong to), or belongs to "
    "another sender (`detail` names the job). Nothing changed.",
    413: "Body larger than `GATEWAY_MAX_BODY_BYTES`.",
    415: "Content-Type is not application/json.",
    429: "The sender (or the gateway as a whole) is over its rate limit; nothing was recorded. Retry after "
    "`Retry-After` seconds with the same request. `RateLimit` and `RateLimit-Policy` describe the budget.",
    503: "A store is unavailable; nothing was recorded. Retry after `Retry-After` seconds.",
}


def webhook_paths(kinds: Iterable[JobKind], providers: Iterable[ProviderSender]) -> dict[str, PathItem]:
    """The ``POST`` operation of each kind's webhook route, then of each provider sender's
    (``POST /api/senders/<name>/webhooks``): what :class:`~gateway.http.webhooks.WebhooksFirst` adds to
    the document Litestar builds for the other routes."""
    return {
        **{kind.route: PathItem(post=_operation(kind)) for kind in kinds},
        **{sender_path(provider.name): PathItem(post=_provider_operation(provider)) for provider in providers},
    }


def read_document(request: Request[Any, Any, Any]) -> None:
    """The ``before_request`` hook of ``/schema``: Litestar's document handlers read the document through
    its OpenAPI plugin, not the app's ``openapi_schema``, so it is read here first, where the webhook
    routes are added to it (:class:`~gateway.http.webhooks.WebhooksFirst`)."""
    request.app.openapi_schema  # noqa: B018  (read for its effect: the document, complete, built once)


def _provider_operation(provider: ProviderSender) -> Operation:
    body = _PROVIDER_DOCS[provider.format]
    return Operation(
        tags=["webhooks"],
        summary=f"Receive {provider.name}'s callbacks ({provider.format}) as {provider.kind.name} jobs",
        description=f"{body} A callback of an event type or status the gateway does not map is acknowledged "
        "with outcome `ignored` and recorded nowhere.",
        operation_id=f"receive{provider.name.title().replace('-', '').replace('_', '')}SenderWebhook",
        parameters=_header_parameters(_PROVIDER_HEADERS[provider.format]),
        request_body=RequestBody(
            content={"application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
            required=True,
            description=body,
        ),
        responses={
            "200": OpenAPIResponse(
                description="Recorded (or already recorded), or acknowledged and ignored: see `outcome`.",
                content={
                    "application/json": OpenAPIMediaType(
                        schema=cast("Schema", {"oneOf": [_inline_schema(Accepted), _inline_schema(Acknowledged)]})
                    )
                },
            ),
            **{
                str(code): OpenAPIResponse(description=text, content={"application/json": _json(ErrorBody)})
                for code, text in _ERRORS.items()
                if code != 403
            },
        },
    )


def _header_parameters(headers: Iterable[tuple[str, str]]) -> list[Parameter | Reference]:
    """The optional string headers ``headers`` names, each with its description."""
    return [
        Parameter(
            name=name,
            param_in="header",
            required=False,
            description=description,
            schema=Schema(type=OpenAPIType.STRING),
        )
        for name, description in headers
    ]


def _operation(kind: JobKind) -> Operation:
    return Operation(
        tags=["webhooks"],
        summary=f"Receive a job-status webhook for {kind.name} jobs",
        description=kind.description,
        operation_id=f"receive{kind.name.title()}Webhook",
        parameters=_header_parameters(_HEADERS),
        request_body=RequestBody(
            content={"application/json": _json(kind.payload)}, required=True, description=kind.description
        ),
        responses={
            "200": OpenAPIResponse(
                description="Recorded (or already recorded): see `outcome`.",
                content={"application/json": _json(Accepted)},
            ),
            **{
                str(code): OpenAPIResponse(description=text, content={"application/json": _json(ErrorBody)})
                for code, text in _ERRORS.items()
            },
        },
    )


def _json(annotation: Any) -> OpenAPIMediaType:
    return OpenAPIMediaType(schema=cast("Schema", _inline_schema(annotation)))


def _inline_schema(annotation: Any) -> dict[str, Any]:
    """msgspec's JSON Schema for ``annotation`` with every ``$ref`` replaced by its definition."""
    schema = msgspec.json.schema(annotation)
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                return resolve(definitions[ref.rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    # OpenAPI's discriminator mapping points at component refs, which inlining removed.
    resolved.pop("discriminator", None)
    return resolved


def api_docs() -> list[OpenAPIRenderPlugin]:
    """The render plugins of ``/schema``: Swagger UI at ``/schema`` (and ``/schema/swagger``) from local
    files, and the document at ``/schema/openapi.json`` and ``/schema/openapi.yaml``."""
    return [
        _LocalSwaggerUI(
            path=["/", "/swagger"],
            js_url=f"{_VIEWER_URL}/swagger-ui-bundle.js",
            css_url=f"{_VIEWER_URL}/swagger-ui.css",
            standalone_preset_js_url=f"{_VIEWER_URL}/swagger-ui-standalone-preset.js",
            favicon=_FAVICON,
        ),
        JsonRenderPlugin(),
        YamlRenderPlugin(),
    ]


class _LocalSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI whose script and stylesheet are served by the gateway itself, under ``/schema/static``."""

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        for name, media_type in _VIEWER_FILES.items():
            router.register(_viewer_file(name, media_type))


def _viewer_file(name: str, media_type: str) -> HTTPRouteHandler:
    """A route streaming one of Swagger UI's files; its URL names the version, so it may be cached."""
    path = _VIEWER / name

    async def serve() -> File:
        return File(
            path,
            media_type=media_type,
            content_disposition_type="inline",
            headers={"Cache-Control": "public, max-age=604800, immutable", "X-Content-Type-Options": "nosniff"},
        )

    return get(f"/static/{_VIEWER.name}/{name}", name=f"api-docs-{name}", include_in_schema=False)(serve)
