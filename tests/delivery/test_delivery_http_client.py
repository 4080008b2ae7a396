"""The forwarding HTTP client against real sockets that answer the ways HTTP/1.1 servers do: chunked and
close-delimited bodies, idle connections closed by the server, redirects, silence, garbage; and what it
does with the environment's proxy and CA settings (docs/forwarding-client.md)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.delivery.http_client import HttpClient
from gateway.delivery.http_sink import HttpSink
from gateway.delivery.sink import Dead, Delivered, Delivery, Retry

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw TCP server whose every connection is handled by ``handler``; counts connections and requests."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.url = ""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://user:p%40ss@127.0.0.1:{self.port}/in?x=1"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        """Read one request (``False`` when the client closed the connection)."""
        line = await reader.readline()
        if not line:
            return False
        headers = {"request-line": line.decode().strip()}
        while (header := await reader.readline()) != b"\r\n":
            name, _, value = header.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers["content-length"]))
        self.requests.append(headers)
        return True


def delivery() -> Delivery:
    return Delivery(
        id=1, event_id="evt_1", sequence=1, job_id="j", kind="image", status="pending", body=b"{}", attempt=1,
        traceparent=None,
    )  # fmt: skip


@pytest.fixture
async def chunked() -> AsyncIterator[Server]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n")

    server = Server(handler)
    async with server:
        yield server


async def test_a_chunked_answer_is_read_and_the_connection_kept(chunked: Server) -> None:
    client = HttpClient(chunked.url, user_agent="test")
    for _ in range(3):
        response = await client.post(b'{"a": 1}', {"webhook-id": "evt_1"})
        assert response.status == 200
    await client.close()
    assert chunked.connections == 1
    first = chunked.requests[0]
    assert first["request-line"] == "POST /in?x=1 HTTP/1.1"
    assert first["host"] == chunked.url.split("@")[1].split("/")[0]
    assert first["authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss, from the URL
    assert first["webhook-id"] == "evt_1"


async def test_a_close_delimited_answer_gets_a_new_connection_next_time() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.0 202 Accepted\r\ncontent-type: text/plain\r\n\r\nqueued")

    server = Server(handler)
    async with server:
        client = HttpClient(server.url, user_agent="test")
        assert (await client.post(b"{}", {})).status == 202
        assert (await client.post(b"{}", {})).status == 202
        await client.close()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_without_losing_the_request() -> None:
    """Keep-alive connections die while idle (server timeouts): the request goes out on a fresh one, once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        # then close while the client thinks the connection is reusable

    server = Server(handler)
    async with server:
        client = HttpClient(server.url, user_agent="test")
        assert (await client.post(b"{}", {})).status == 204
        await asyncio.sleep(0.05)
        assert (await client.post(b"{}", {})).status == 204
        await client.close()
    assert len(server.requests) == 2
    assert server.connections == 2


async def test_silence_is_a_retry_after_the_timeout_and_garbage_a_connection_failure() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    server = Server(silent)
    async with server:
        sink = HttpSink(server.url, None, 0.2)
        assert await sink.send(delivery()) == Retry("no answer within 0.2 s")
        await sink.close()
    server = Server(garbage)
    async with server:
        sink = HttpSink(server.url, None, 1.0)
        attempt = await sink.send(delivery())
        await sink.close()
    assert isinstance(attempt, Retry)
    assert attempt.reason == "connection failed: ConnectionError"


async def test_a_success_is_delivered(chunked: Server) -> None:
    sink = HttpSink(chunked.url, b"k" * 24, 1.0)
    assert await sink.send(delivery()) == Delivered()
    await sink.close()
    assert chunked.requests[0]["webhook-signature"].startswith("v1,")


async def test_interim_answers_are_skipped_so_each_request_gets_its_own_final_answer() -> None:
    """An endpoint sending 103 Early Hints first: the final answer is the one that counts, and the next
    request on the kept connection must not read a previous request's answer."""
    answers = iter([b"503 Service Unavailable", b"200 OK"])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\n\r\n")
            writer.write(b"HTTP/1.1 " + next(answers) + b"\r\nContent-Length: 0\r\n\r\n")

    server = Server(handler)
    async with server:
        client = HttpClient(server.url, user_agent="test")
        assert (await client.post(b"{}", {})).status == 503
        assert (await client.post(b"{}", {})).status == 200
        await client.close()
    assert server.connections == 1


async def test_a_redirect_is_not_followed_but_dead_lettered() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")

    server = Server(handler)
    async with server:
        sink = HttpSink(server.url, None, 1.0)
        assert await sink.send(delivery()) == Dead("HTTP 308")
        await sink.close()
    assert [request["request-line"] for request in server.requests] == ["POST /in?x=1 HTTP/1.1"]


async def test_a_large_answer_body_is_not_read_and_its_connection_not_kept() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 1000)
            await writer.drain()

    server = Server(handler)
    async with server:
        sink = HttpSink(server.url, None, 1.0)
        assert await sink.send(delivery()) == Delivered()
        assert await sink.send(delivery()) == Delivered()
        await sink.close()
    assert server.connections == 2


# The environment's proxy and CA settings (docs/forwarding-client.md).

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_proxy_variables_are_ignored_and_a_named_proxy_is_warned_about(
    chunked: Server, clean_proxy_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str
) -> None:
    """Forwarding connects straight to the app; a proxy the environment names for the forward URL's
    scheme is said once at start-up, so an operator who expected it to be used learns why it is not."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

    proxy = Server(refuse)
    async with proxy:
        clean_proxy_env.setenv(variable, f"http://puser:ppass@127.0.0.1:{proxy.port}")
        with caplog.at_level(logging.WARNING, logger="gateway.delivery.http_sink"):
            sink = HttpSink(chunked.url, None, 1.0)
        assert await sink.send(delivery()) == Delivered()
        await sink.close()
    assert proxy.connections == 0
    assert len(chunked.requests) == 1
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    if variable == "ALL_PROXY":  # not a variable forwarding looks at
        assert warnings == []
    else:
        (warning,) = warnings
        assert "HTTP_PROXY" in warning
        assert "ppass" not in warning


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signed for 127.0.0.1: (CA file, certificate, key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=gateway test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "san.ext",
    )  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[Server, Path]]:
    ca, certificate, key = _certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = Server(handler, tls=context)
    async with server:
        yield server, ca


async def test_tls_is_verified_against_the_ca_file_ssl_cert_file_names(
    tls_server: tuple[Server, Path], clean_proxy_env: pytest.MonkeyPatch
) -> None:
    server, ca = tls_server
    clean_proxy_env.delenv("SSL_CERT_FILE", raising=False)
    sink = HttpSink(server.url, None, 2.0)
    assert await sink.send(delivery()) == Retry("connection failed: SSLCertVerificationError")
    await sink.close()
    assert server.requests == []
    clean_proxy_env.setenv("SSL_CERT_FILE", str(ca))
    sink = HttpSink(server.url, None, 2.0)
    assert await sink.send(delivery()) == Delivered()
    await sink.close()
    assert server.requests[0]["webhook-id"] == "evt_1"
    name_mismatch = HttpSink(server.url.replace("127.0.0.1", "localhost"), None, 2.0)  # certified: 127.0.0.1 only
    assert await name_mismatch.send(delivery()) == Retry("connection failed: SSLCertVerificationError")
    await name_mismatch.close()
    assert len(server.requests) == 1
