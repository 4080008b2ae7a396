"""A JSON Web Key Set served over real HTTP on 127.0.0.1, for the tests of ``jwks_url`` senders."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.signatures import Ed25519PrivateKey

__all__ = ("JwksServer", "jwk")


def jwk(key: Ed25519PrivateKey, kid: str = "k1") -> dict[str, str]:
    """``key``'s public half as an ed25519 JWK (RFC 8037), as fal publishes its keys."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


@dataclass
class JwksServer:
    """Serves a JWK Set over HTTP/1.1 on 127.0.0.1 from a thread of its own (so it answers whichever event
    loop the app runs on); ``down()`` closes the port, ``up()`` reopens it on the same port."""

    body: bytes = b'{"keys": []}'
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    def serve(self, *keys: Ed25519PrivateKey) -> None:
        self.body = json.dumps({"keys": [jwk(key, f"k{i}") for i, key in enumerate(keys)]}).encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def up(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                self.send_response(owner.status)
                self.send_header("content-length", str(len(owner.body)))
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        # down() waits for serve_forever to notice, at most one poll interval (0.5 s by default).
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()

    async def down(self) -> None:
        assert self._server is not None
        server, self._server = self._server, None
        await asyncio.to_thread(server.shutdown)
        server.server_close()
