"""Shared fixtures: an in-process app over a fresh SQLite file, and a real server subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app

SECRET = "sorami-webhook-secret-key-2025"
JOB_ID = "e0145eaa-7430-4845-bf8e-df056076db14"


def completed_image(job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:45:00Z", **extra: Any) -> dict[str, Any]:
    """The seed's success payload."""
    return {
        "job_id": job_id,
        "status": "completed",
        "timestamp": timestamp,
        "data": {
            "images": [
                {
                    "url": "http://localhost:9006/generated_images/x/image_1.png",
                    "format": "PNG",
                    "dimensions": "1024x1024",
                    "size_bytes": 2048576,
                }
            ],
            "metadata": {"model_name": "gemini-2.0-flash-exp", "generation_time_seconds": 12.5},
        },
        **extra,
    }


def failed(job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:45:00Z") -> dict[str, Any]:
    """The seed's failure payload."""
    return {"job_id": job_id, "status": "failed", "timestamp": timestamp, "error_message": "Clé API Google invalide"}


def progress(status: str, job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:44:00Z") -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "timestamp": timestamp}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(webhook_secret=SECRET, database=SqliteDatabase(str(tmp_path / "gateway.db")))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        test_client.headers["X-Webhook-Secret"] = SECRET
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A ``gateway serve`` subprocess on a free port, with its own database."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "server.log"
        full_env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'live.db'}",
            "GATEWAY_PORT": str(self.port),
            **env,
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"], env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not become healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET})
    yield server
    server.stop()
