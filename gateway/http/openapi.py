"""OpenAPI documentation for the webhook routes, which read the raw body (signatures need the exact
bytes) and so cannot let Litestar infer their request schema.

The request body schema is msgspec's own JSON Schema of each kind's payload union, so what the schema
promises is exactly what the decoder accepts; schema-driven fuzzers then exercise real payloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Parameter, RequestBody, Schema

from gateway.kinds import JobKind

__all__ = ("webhook_operation",)

_HEADERS = (
    ("X-Webhook-Secret", "The shared secret (`WEBHOOK_SECRET`), if the sender authenticates with it."),
    ("webhook-id", "Standard Webhooks message id; also the delivery's idempotency key."),
    ("webhook-timestamp", "Standard Webhooks timestamp, integer seconds since the epoch."),
    ("webhook-signature", "Standard Webhooks signatures: space-separated `v1,<base64 HMAC-SHA256>`."),
)


def webhook_operation(kind: JobKind) -> type[Operation]:
    """An :class:`Operation` subclass documenting ``kind``'s request body and authentication headers."""
    body = RequestBody(
        content={"application/json": OpenAPIMediaType(schema=cast(Schema, _inline_schema(kind.payload)))},
        required=True,
        description=kind.description,
    )
    headers = [
        Parameter(
            name=name,
            param_in="header",
            required=False,
            description=description,
            schema=Schema(type=OpenAPIType.STRING),
        )
        for name, description in _HEADERS
    ]

    @dataclass
    class WebhookOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body
            self.parameters = [*(self.parameters or []), *headers]

    return WebhookOperation


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
