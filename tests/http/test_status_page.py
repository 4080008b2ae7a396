"""The status page's HTTP side: what is served at ``/`` and ``/status``, and the headers that keep it safe.
What the page does in a browser is tested in tests/http/test_status_page_browser.py."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from litestar.testing import AsyncTestClient

from gateway.config import Settings
from gateway.http.app import create_app
from gateway.http.status_page import CONTENT_SECURITY_POLICY


async def test_the_page_is_served_at_the_root_and_at_status(client: AsyncTestClient[Any]) -> None:
    root = await client.get("/")
    status = await client.get("/status")
    assert root.status_code == status.status_code == 200
    assert root.headers["content-type"] == "text/html; charset=utf-8"
    assert root.text == status.text
    assert "<title>gateway · status</title>" in root.text


async def test_every_file_of_the_page_allows_only_this_origin_and_no_inline_script(
    client: AsyncTestClient[Any],
) -> None:
    page = (await client.get("/")).text
    assets = re.findall(r'(?:src|href)="(/status/[^"]+)"', page)
    assert sorted(assets) == ["/status/status.css", "/status/status.js"]
    # Every <script> loads a file: the policy's script-src 'self' leaves no room for inline code.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    assert " style=" not in page
    types = {"/": "text/html", "/status/status.js": "text/javascript", "/status/status.css": "text/css"}
    for path, media_type in types.items():
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


async def test_the_script_never_parses_job_data_as_html(client: AsyncTestClient[Any]) -> None:
    script = (await client.get("/status/status.js")).text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script
    assert "textContent" in script


async def test_the_page_needs_no_token_but_the_data_it_reads_does(settings: Settings) -> None:
    """The page holds no job data, so a browser can load it and show the sign-in form; the API stays closed."""
    app = create_app(replace(settings, api_token="a-token-of-twenty-chars"))
    async with AsyncTestClient(app=app) as anonymous:
        assert (await anonymous.get("/")).status_code == 200
        assert (await anonymous.get("/status/status.js")).status_code == 200
        assert (await anonymous.get("/api/jobs")).status_code == 401
        assert (await anonymous.get("/api/jobs/stats")).status_code == 401


async def test_the_page_links_to_the_json_api(client: AsyncTestClient[Any]) -> None:
    page = (await client.get("/")).text
    for link in ('href="/api/jobs"', 'href="/api/jobs/stats"', 'href="/schema"', 'href="/schema/openapi.json"'):
        assert link in page


async def test_the_gateway_has_an_icon(client: AsyncTestClient[Any]) -> None:
    """Browsers ask for ``/favicon.ico`` on every page: an SVG icon, not a 404."""
    response = await client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.text.startswith("<svg")
    assert '<link rel="icon" type="image/svg+xml" href="/favicon.ico">' in (await client.get("/")).text
