"""(G-fwd-aiohttp, G-fwd-httpx) ``gateway serve`` with forwarding on a well-kept HTTP client instead of
the home-made one: ``python -m benchmarks.apps.forward_client {aiohttp|httpx} serve --port N``.

Each client is tuned for the dispatcher: connections kept alive for its 32 deliveries in flight (aiohttp
unbounded, the dispatcher bounds it; httpx one pool of 32), no redirects, no cookies, no environment
lookups per request, the answer's body read and dropped. Figures: docs/forwarding-client.md.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx

from gateway.delivery import http_sink
from gateway.delivery.http_client import Response

__all__ = ("AiohttpClient", "HttpxClient")

_POOL = 32


class AiohttpClient:
    def __init__(self, url: str, *, user_agent: str) -> None:
        self._url = url
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # the dispatcher bounds deliveries in flight
                headers={"user-agent": self._user_agent},
                skip_auto_headers=("accept-encoding",),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),  # the sink bounds each attempt itself
                trust_env=False,  # no proxy and ~/.netrc lookups on a thread per request
            )
        try:
            async with self._session.post(self._url, data=body, headers=headers, allow_redirects=False) as answer:
                await answer.read()
                return Response(answer.status, answer.headers)
        except aiohttp.ClientError as error:
            raise ConnectionError(str(error)) from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxClient:
    def __init__(self, url: str, *, user_agent: str) -> None:
        self._url = url
        self._client = httpx.AsyncClient(
            headers={"user-agent": user_agent},
            limits=httpx.Limits(max_connections=_POOL, max_keepalive_connections=_POOL),
            timeout=60.0,  # the sink bounds each attempt itself
            follow_redirects=False,
            trust_env=False,
        )

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Response:
        try:
            answer = await self._client.post(self._url, content=body, headers=headers)
        except httpx.TransportError as error:
            raise ConnectionError(str(error)) from error
        return Response(answer.status_code, answer.headers)

    async def close(self) -> None:
        await self._client.aclose()


def main(argv: list[str]) -> int:
    clients: dict[str, Any] = {"aiohttp": AiohttpClient, "httpx": HttpxClient}
    vars(http_sink)["HttpClient"] = clients[argv[0]]  # the name HttpSink builds its client with
    from gateway.cli import main as gateway_main

    return gateway_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
