"""The benchmark commands run end to end (smoke runs: their figures are read by people, never asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[2]


def require(tool: str) -> None:
    """Skip without ``tool`` (a Debian package of the same name); in CI, where .ci/services installs it, fail."""
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing in CI: .ci/services installs it (apt-get install -y {tool})")
        pytest.skip(f"{tool} is not installed (apt-get install -y {tool})")


def run_benchmark(*arguments: str, timeout: float) -> str:
    """Run ``python <arguments>`` from the repository's root; its standard output, once it exited 0."""
    result = subprocess.run(
        [sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_quick_benchmark_measures_every_configuration_without_errors(tmp_path: Path) -> None:
    require("wrk")
    out = tmp_path / "results.json"
    stdout = run_benchmark("-m", "benchmarks", "--quick", "--json", str(out), timeout=120)
    assert "G/B@10" in stdout
    report = json.loads(out.read_text())
    measured = {(r["config"], r["connections"]) for r in report["results"]}
    assert measured == {("A", 10), ("B", 10), ("G", 10)}
    assert all(r["requests_per_second"] > 0 and r["non_2xx"] == 0 for r in report["results"])
    # the cost a webhook, read from /proc, beside the rate: the server's own CPU over what wrk completed
    assert all(r["requests"] > 0 and r["cpu_us"]["gateway"] > 0 for r in report["results"])
    # the ratio table with its targets; what was not measured says so rather than passing
    assert "G / B (bare Litestar)" in stdout
    rows = {row["ratio"]: row for row in report["targets"]}
    assert rows["G / B (bare Litestar)"]["target"] == 0.8
    assert rows["G / B (bare Litestar)"]["holds"] is None  # only 10 connections were measured
    assert rows["p50 of B / p50 of G"]["holds"] in (True, False)
    assert "10" in rows["G / A (raw ASGI floor)"]["by_cpu"]


def test_the_rate_limit_benchmark_measures_every_limiter_against_the_baseline(redis_url: str) -> None:
    stdout = run_benchmark(
        "benchmarks/ratelimit.py", "--quick", "--require-redis", "--redis-url", redis_url, timeout=60
    )
    rows = {tuple(line.split()[:3]) for line in stdout.splitlines()[2:]}
    assert ("none", "baseline", "sequential") in rows
    for limiter in ("memory", "redis"):
        for path in ("allowed", "limited"):
            assert (limiter, path, "sequential") in rows, stdout
    assert ("redis", "allowed", "concurrent") in rows, stdout


def test_the_hot_path_profile_names_the_pipeline_stages_and_saves_the_profile(tmp_path: Path) -> None:
    out = tmp_path / "hot.prof"
    stdout = run_benchmark("-m", "benchmarks", "--profile", "200", "--profile-output", str(out), timeout=120)
    assert "profile: 200 webhooks" in stdout
    assert "gateway/ingest/pipeline.py" in stdout  # the stages show up, not just the framework
    assert out.stat().st_size > 0


def test_the_instruction_count_covers_a_whole_webhook_and_nothing_else() -> None:
    require("valgrind")
    stdout = run_benchmark("-m", "benchmarks", "--instructions", "20", timeout=300)
    figure = stdout.split("instructions: ", 1)[1].split(" a webhook", 1)[0]
    # A webhook through every stage takes hundreds of thousands (start-up and warm-up, billions, are not counted).
    assert 50_000 < int(figure.replace(",", "")) < 5_000_000, stdout
