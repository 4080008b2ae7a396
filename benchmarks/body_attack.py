"""Partial-body attack on a live ``gateway serve``: many connections each send most of a large body, then wait.

    python -m benchmarks.body_attack                               # 400 connections, 900 KB of 1 MB each
    python -m benchmarks.body_attack --credentials signed --connections 200

``--credentials wrong`` sends a wrong ``X-Webhook-Secret`` (refused from the headers, before the body);
``signed`` sends well-formed Standard Webhooks headers with a fresh timestamp and a signature made with
the wrong key, which the gateway can only refuse after reading the body (those bodies are what
``GATEWAY_MAX_BUFFERED_BYTES`` bounds). The gateway's resident memory (VmRSS, from /proc) is sampled
before the attack, while every connection has sent its bytes and waits, and after they are all closed;
the answers each connection got are counted by status. docs/hardening.md gives the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx

SECRET = "attack-secret"
SIGNING_KEY = "whsec_" + base64.b64encode(b"k" * 32).decode()
IMAGE = "/api/webhooks/image-completion"

Credentials = Literal["wrong", "signed"]


@dataclass
class Result:
    connections: int
    sent_bytes: int
    credentials: str
    rss_before_mib: float
    rss_during_mib: float
    rss_after_mib: float
    answers: dict[str, int]
    """Each connection's answer by status (``none``: closed without one; ``reset``: reset by the gateway)."""


def rss_mib(pid: int) -> float:
    """The process's resident memory in MiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def head(credentials: Credentials, announced: int) -> bytes:
    if credentials == "wrong":
        auth = b"X-Webhook-Secret: not-the-secret\r\n"
    else:
        fake = base64.b64encode(b"s" * 32)
        auth = b"webhook-id: msg_attack\r\nwebhook-timestamp: %d\r\nwebhook-signature: v1,%s\r\n" % (time.time(), fake)
    return b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        IMAGE.encode(),
        announced,
        auth,
    )


async def attack(
    port: int,
    pid: int,
    *,
    connections: int,
    sent: int,
    announced: int,
    credentials: Credentials,
    settle: float = 2.0,
) -> Result:
    """Run the attack on the gateway at ``port`` (process ``pid``) and measure its memory."""
    before = rss_mib(pid)
    body = b"x" * sent
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    answers: Counter[str] = Counter()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append((reader, writer))
        writer.write(head(credentials, announced) + body)
        with contextlib.suppress(OSError):  # refused before its body was read: the gateway closed the connection
            await writer.drain()

    await asyncio.gather(*(one() for _ in range(connections)))
    await asyncio.sleep(settle)  # the gateway reads what it will read
    during = rss_mib(pid)

    async def answer(reader: asyncio.StreamReader) -> str:
        try:
            line = await asyncio.wait_for(reader.readline(), 0.5)
        except TimeoutError:
            return "waiting"
        except OSError:
            return "reset"
        return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "none"

    answers.update(await asyncio.gather(*(answer(reader) for reader, _ in opened)))
    for _, writer in opened:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    await asyncio.sleep(settle)
    return Result(connections, sent, credentials, before, during, rss_mib(pid), dict(answers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.body_attack", description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--sent", type=int, default=900_000, help="bytes of body each connection sends (900 000)")
    parser.add_argument("--announced", type=int, default=1_000_000, help="its Content-Length (1 000 000)")
    parser.add_argument("--credentials", choices=("wrong", "signed"), default="wrong")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{directory}/attack.db",
            "GATEWAY_PORT": str(port),
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
            "GATEWAY_LOG_LEVEL": "ERROR",
        }
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        try:
            wait_ready(f"http://127.0.0.1:{port}", process)
            result = asyncio.run(
                attack(
                    port,
                    process.pid,
                    connections=args.connections,
                    sent=args.sent,
                    announced=args.announced,
                    credentials=args.credentials,
                )
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(asdict(result), indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway exited at start-up")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("the gateway did not become ready")


if __name__ == "__main__":
    sys.exit(main())
