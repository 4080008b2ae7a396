"""A real HTTP endpoint standing in for the app that gateway forwards to: it verifies every request's
Standard Webhooks signature with the ``standardwebhooks`` library and answers what a test's policy says.

A tiny HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies): it runs in the test's own
event loop, so it works beside an in-process app or a ``gateway serve`` subprocess alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ("FORWARD_KEY", "Arrival", "Receiver")

FORWARD_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

Policy = Callable[[dict[str, Any], int], int | tuple[int, dict[str, str]]]
"""(the event, how many times this webhook-id arrived, this one included) -> status [, headers]."""


@dataclass(frozen=True)
class Arrival:
    webhook_id: str
    event: dict[str, Any]
    status: int
    """What the receiver answered."""
    headers: dict[str, str]


@dataclass
class Receiver:
    secret: str = FORWARD_KEY
    policy: Policy = field(default=lambda event, count: 204)
    arrivals: list[Arrival] = field(default_factory=list)
    delay: float = 0.0
    """Seconds the receiver takes to answer, so concurrent deliveries overlap."""
    unverified: int = 0
    """Requests whose signature did not verify (answered 401)."""
    url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    @property
    def accepted(self) -> list[Arrival]:
        return [arrival for arrival in self.arrivals if 200 <= arrival.status < 300]

    def accepted_ids(self) -> list[str]:
        return [arrival.webhook_id for arrival in self.accepted]

    async def wait_until(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: condition not met within {timeout} s; {len(self.arrivals)} arrivals")
            await asyncio.sleep(0.02)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra = self._answer(headers, body)
                if self.delay:
                    await asyncio.sleep(self.delay)
                head = f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in extra.items())
                writer.write((head + "\r\n").encode("latin-1"))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            self.unverified += 1
            return 401, {}
        event = json.loads(body)
        webhook_id = headers["webhook-id"]
        count = 1 + sum(1 for arrival in self.arrivals if arrival.webhook_id == webhook_id)
        answer = self.policy(event, count)
        status, extra = answer if isinstance(answer, tuple) else (answer, {})
        self.arrivals.append(Arrival(webhook_id, event, status, headers))
        return status, extra
