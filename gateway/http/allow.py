"""``OPTIONS`` answers for paths served by several route handlers (``POST`` and ``DELETE /api/session``).

Litestar 2 builds a path's ``OPTIONS`` handler with its first handler and keeps it when it merges the
next ones in, so its ``Allow`` header lists only the first method. An ``OPTIONS`` handler registered
before them is kept instead, and reads the path's methods from the app when asked: every one is listed.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, route
from litestar.handlers import HTTPRouteHandler

if TYPE_CHECKING:
    from litestar.config.app import AppConfig

__all__ = ("with_allow",)


def _options(path: str) -> HTTPRouteHandler:
    @route(path, http_method="OPTIONS", include_in_schema=False, sync_to_thread=False)
    def options(request: Request[Any, Any, Any]) -> Response[None]:
        methods = {method for served in request.app.routes if served.path == path for method in served.methods}
        return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})

    return options


def with_allow(config: AppConfig) -> AppConfig:
    """An ``on_app_init`` hook: an ``OPTIONS`` handler first for each path that several handlers serve."""
    handlers = config.route_handlers
    shared = Counter(path for handler in handlers if isinstance(handler, HTTPRouteHandler) for path in handler.paths)
    config.route_handlers = [*(_options(path) for path, count in shared.items() if count > 1), *handlers]
    return config
