"""Example app endpoint for the compose stack's `delivery` profile (standard library only).

It verifies each forwarded event's Standard Webhooks signature (HMAC-SHA256 over
``{webhook-id}.{webhook-timestamp}.{body}`` with the base64 key after ``whsec_``, at most 5 minutes
old), answers 204 and logs one line per event; a bad or missing signature gets 401, so the gateway
retries and its dashboards show it. Replace it with your app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = base64.b64decode(os.environ["GATEWAY_FORWARD_SIGNING_KEY"].removeprefix("whsec_"))
TOLERANCE_SECONDS = 300


def verified(webhook_id: str, timestamp: str, body: bytes, signatures: str) -> bool:
    """Whether one of the space-separated ``v1,<base64>`` signatures matches, within the tolerance."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    digest = hmac.new(KEY, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (token.partition(",") for token in signatures.split())
    )


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        webhook_id = self.headers.get("webhook-id", "")
        timestamp = self.headers.get("webhook-timestamp", "")
        ok = verified(webhook_id, timestamp, body, self.headers.get("webhook-signature", ""))
        self.send_response(204 if ok else 401)
        self.end_headers()
        event = json.loads(body) if ok else {}
        line = {"webhook_id": webhook_id, "verified": ok, "job_id": event.get("job_id"), "status": event.get("status")}
        print(json.dumps(line), file=sys.stderr, flush=True)

    def log_message(self, format: str, *args: object) -> None:  # one JSON line per event instead
        pass


if __name__ == "__main__":
    # Inside its container, reached by the gateway replicas over the stack's network.
    port = int(os.environ.get("RECEIVER_PORT", "9000"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()  # noqa: S104
