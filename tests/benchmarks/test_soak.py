"""The soak command in miniature (seconds, not minutes): it runs, and under a load of distinct jobs, senders
and models the gateway's bounded structures stop at their bounds and its connections are given back.
Memory flatness needs minutes: ``python -m benchmarks.soak --minutes N`` (docs/hardening.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.soak

SECONDS = os.environ.get("GATEWAY_SOAK_SECONDS", "6")
"""The soak's length: 6 s reach every bound on a CI host; ``GATEWAY_SOAK_SECONDS=600`` for a longer run."""


def test_a_short_soak_hits_every_bound_and_leaks_no_connection(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--seconds",
            SECONDS,
            "--sample-seconds",
            "1",
            "--idempotency-max-keys",
            "1000",
            "--connections",
            "4",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=120 + float(SECONDS),
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert report_path.exists(), result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    first, last = report["samples"][0], report["samples"][-1]
    assert report["webhooks"] > 1000, "too little load to reach the bounds"
    assert not report["failures"]
    # The cap, reached and held: the store forgets its oldest eighth at a time, so it stays within 7/8 of it.
    peak = max(s["idempotency_keys"] for s in report["samples"])
    assert 875 <= peak <= 1000
    assert all(s["idempotency_keys"] <= 1000 for s in report["samples"])
    assert max(s["model_labels"] for s in report["samples"]) == 21  # 20 models and "other", of 1 000 sent
    assert max(s["spans_queued"] for s in report["samples"]) <= 2048  # OTEL_BSP_MAX_QUEUE_SIZE
    assert last["spans_dropped"] > 0  # the exporter never answered: what did not fit was dropped, and counted
    assert 0 < max(s["rate_limit_keys"] for s in report["samples"]) <= 100_000
    assert last["sockets"] <= first["sockets"]  # the load's connections were all given back
    assert "soak: sqlite+memory" in result.stdout
