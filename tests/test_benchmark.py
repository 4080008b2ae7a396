"""The limiter benchmark still runs (a smoke run: its figures are read by people, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_rate_limit_benchmark_measures_every_limiter_against_the_baseline(redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/ratelimit.py", "--quick", "--require-redis", "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {tuple(line.split()[:3]) for line in result.stdout.splitlines()[2:]}
    assert ("none", "baseline", "sequential") in rows
    for limiter in ("memory", "redis"):
        for path in ("allowed", "limited"):
            assert (limiter, path, "sequential") in rows, result.stdout
    assert ("redis", "allowed", "concurrent") in rows, result.stdout
