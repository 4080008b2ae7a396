"""The built-in status page: ``GET /`` (and ``/status``), a small HTML page over the jobs API.

The page is three static files shipped with the package (``gateway/http/static/``), no build step and
nothing from a CDN; its script reads ``/api/jobs``, ``/api/jobs/stats`` and the live stream
``/api/jobs/events`` in the browser, so the page itself holds no job data and needs no token. A strict
Content-Security-Policy allows only this origin and no inline script: job ids and error messages come
from outside, and the script renders them as text only.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from litestar import Response, get

from gateway.http.auth import PUBLIC

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

__all__ = ("CONTENT_SECURITY_POLICY", "status_page_routes")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: always revalidated, so an upgraded gateway never serves a stale script.
    "Cache-Control": "no-cache",
}
_STATIC = files("gateway.http") / "static"


def _asset(name: str, media_type: str) -> HTTPRouteHandler:
    """A route serving one static file, read once when the app is built."""
    content = (_STATIC / name).read_bytes()

    async def serve() -> Response[bytes]:
        return Response(content, media_type=media_type, headers=_HEADERS)

    return get(f"/status/{name}", name=f"status-{name}", include_in_schema=False, opt=PUBLIC)(serve)


def status_page_routes() -> list[HTTPRouteHandler]:
    """``GET /`` and ``GET /status`` (the page), the script and stylesheet it loads, and the gateway's icon
    at ``/favicon.ico`` (an SVG, which is what the page and the API docs link to)."""
    page = (_STATIC / "status.html").read_bytes()
    icon = (_STATIC / "favicon.svg").read_bytes()

    @get(["/", "/status"], name="status-page", include_in_schema=False, opt=PUBLIC)
    async def status_page() -> Response[bytes]:
        return Response(page, media_type="text/html", headers=_HEADERS)

    @get("/favicon.ico", name="favicon", include_in_schema=False)
    async def favicon() -> Response[bytes]:
        return Response(icon, media_type="image/svg+xml", headers=_HEADERS)

    return [
        status_page,
        favicon,
        _asset("status.js", "text/javascript"),
        _asset("status.css", "text/css"),
    ]
