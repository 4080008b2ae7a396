"""The partial-body attack of issue #17 against a real ``gateway serve``, with its memory measured (VmRSS from
/proc, by benchmarks/body_attack.py): many connections each send most of a large body, then wait.

Before the bounds, 400 such connections with a wrong secret took the gateway from 127 to 417 MiB, and it
stayed at 321 MiB after they closed. Here 200 connections (about 180 MB sent): with a wrong secret nothing
of the bodies is held; with signature headers the gateway must read the body to refuse, so it holds at most
GATEWAY_MAX_BUFFERED_BYTES (16 MiB here), refuses the rest with 503, and gives the memory back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.body_attack import SIGNING_KEY, attack
from tests.conftest import SECRET, LiveServer

CONNECTIONS = 200
SENT = 900_000
ANNOUNCED = 1_000_000


@pytest.fixture
def gateway(tmp_path: Path) -> LiveServer:
    return LiveServer(
        tmp_path,
        {
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
            "GATEWAY_MAX_BUFFERED_BYTES": str(16 * 1024 * 1024),
            "GATEWAY_LOG_LEVEL": "ERROR",
        },
    )


def test_wrong_secrets_with_partial_bodies_hold_no_memory(gateway: LiveServer) -> None:
    try:
        result = asyncio.run(
            attack(
                gateway.port,
                gateway.process.pid,
                connections=CONNECTIONS,
                sent=SENT,
                announced=ANNOUNCED,
                credentials="wrong",
                settle=1.0,
            )
        )
    finally:
        gateway.stop()
    # 180 MB were sent at it: refused from the headers, none of it was held (before: +290 MiB for 400).
    assert result.rss_during_mib - result.rss_before_mib < 20, result
    assert result.rss_after_mib - result.rss_before_mib < 20, result
    assert "waiting" not in result.answers, result  # every connection answered 401 and closed, none held


def test_signed_partial_bodies_hold_at_most_the_buffered_bytes_and_memory_comes_back(gateway: LiveServer) -> None:
    try:
        result = asyncio.run(
            attack(
                gateway.port,
                gateway.process.pid,
                connections=CONNECTIONS,
                sent=SENT,
                announced=ANNOUNCED,
                credentials="signed",
                settle=1.0,
            )
        )
    finally:
        gateway.stop()
    # 16 MiB / 1 000 000 bytes: 16 bodies are read (and wait for the rest); the others were refused 503.
    assert result.answers.get("waiting") == 16, result
    assert result.rss_during_mib - result.rss_before_mib < 16 + 24, result
    assert result.rss_after_mib - result.rss_before_mib < 24, result
