"""A server span per request, continuing the sender's W3C ``traceparent``.

A small ASGI middleware rather than the generic instrumentation: it does only what the gateway needs
(one span, HTTP semantic-convention attributes, the route template as the name) and stays cheap on the
hot path. Stage spans and the gateway's own attributes are added by the pipeline inside this span.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from litestar.enums import ScopeType
from opentelemetry import context, propagate
from opentelemetry.trace import SpanKind, StatusCode

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from opentelemetry.trace import Tracer

__all__ = ("server_spans",)

_HTTP: Final = ScopeType.HTTP  # read once: an Enum class attribute goes through EnumType.__getattr__'s hook

_UNTRACED = frozenset({"/metrics", "/healthz", "/readyz"})


def server_spans(tracer: Tracer, *, recording: bool = True) -> Any:
    """Litestar middleware factory: wrap each routed request in a server span.

    Not ``recording`` (no exporter: the provider samples nothing), a span would be made and dropped for
    nothing, at a cost the benchmark shows: the request then runs in the sender's trace context alone,
    if it sent one, so log lines still carry the sender's trace and span ids."""
    fields = frozenset(field.encode() for field in propagate.get_global_textmap().fields)

    def middleware(app: ASGIApp) -> ASGIApp:
        async def traced(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != _HTTP or scope["path"] in _UNTRACED:
                await app(scope, receive, send)
                return
            carrier = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in fields
            }
            parent = propagate.extract(carrier) if carrier else None
            if not recording:
                if parent is None:
                    await app(scope, receive, send)
                    return
                token = context.attach(parent)
                try:
                    await app(scope, receive, send)
                finally:
                    context.detach(token)
                return
            method = scope["method"]
            route = scope.get("path_template") or scope["path"]
            with tracer.start_as_current_span(
                f"{method} {route}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "http.route": route,
                    "url.path": scope["path"],
                    "url.scheme": scope.get("scheme", "http"),
                    "network.protocol.version": scope.get("http_version", "1.1"),
                },
            ) as span:

                async def send_traced(message: Message) -> None:
                    if message["type"] == "http.response.start" and span.is_recording():
                        status = message["status"]
                        span.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            span.set_status(StatusCode.ERROR)
                    await send(message)

                await app(scope, receive, send_traced)

        return traced

    return middleware
