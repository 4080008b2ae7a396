"""The benchmark's pages are generated from its committed JSON: no drift, and figures that follow the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]


def committed() -> dict[str, object]:
    return json.loads(report.RESULTS.read_text())


def test_the_committed_pages_are_what_the_generator_writes_from_the_committed_results() -> None:
    for name, text in report.pages(committed()).items():
        page = ROOT / "docs" / name
        assert page.read_text() == text, f"docs/{name} is stale: run python -m benchmarks.report"
    chart = ROOT / "docs" / report.CHART
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the ratio chart is missing: python -m benchmarks.report"


def test_the_capacity_figures_and_the_sizing_follow_the_measured_cost() -> None:
    data = committed()
    data["best"] = [
        row
        for row in data["best"]  # type: ignore[attr-defined]
        if row["config"] not in ("G", "G-dist")
    ] + [
        {**_row("G", 10), "cpu_us": {"gateway": 200.0, "gateway-loop": 150.0}},
        {**_row("G", 50), "cpu_us": {"gateway": 250.0, "gateway-loop": 180.0}},
        {
            **_row("G-dist", 10),
            "cpu_us": {"gateway": 500.0, "postgres": 100.0, "postgres-background": 0.0, "redis": 40.0},
        },
        {
            **_row("G-dist", 50),
            "cpu_us": {"gateway": 400.0, "postgres": 80.0, "postgres-background": 0.0, "redis": 30.0},
        },
    ]
    page = report.capacity_page(data)
    assert "| G | gateway | 200 | 250 | 4,000 |" in page  # the cost at 50 connections: 1e6 / 250
    assert "| G-dist | Redis | 40 | 30 | 33,333 |" in page
    assert "about 4,000 webhooks a second" in page  # the embedded ceiling
    small, large = report.sizing(data, 2_000), report.sizing(data, 20_000)
    assert "at 50 % of its core" in small[0]  # 2,000 x 250 us
    assert "**2 replicas**" in small[1]  # 2,000 x 400 us = 0.8 core, at 70 % a core
    assert large[0].startswith("- **Embedded** cannot")
    busy = report.sizing(data, 3_500)[0]  # 3,500 x 250 us = 0.875 of a core: it fits, but past the headroom
    assert "would run its one core at 88 %" in busy, busy
    assert "run distributed" in busy
    assert "**12 replicas**" in large[1]  # 20,000 x 400 us = 8 cores / 0.7
    assert "**3 cores**" in large[1]  # 20,000 x 80 us = 1.6 cores / 0.7
    assert "**60 % of its one core**" in large[1]  # 20,000 x 30 us


def test_a_ratio_not_measured_says_so_instead_of_passing() -> None:
    data = committed()
    data["targets"] = [dict(row, values={}, by_cpu={}, holds=None) for row in data["targets"]]  # type: ignore[attr-defined]
    page = report.benchmark_page(data)
    assert "| G / B (bare Litestar) |  |  |  |  | >= 0.8 at both | not measured |" in page


def test_the_generator_writes_both_pages_and_the_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the chart needs the bench extra: pip install -e '.[bench]'")
    assert report.main(["--docs", str(tmp_path)]) == 0
    assert (tmp_path / "benchmark.md").read_text() == (ROOT / "docs" / "benchmark.md").read_text()
    assert (tmp_path / report.CHART).stat().st_size > 10_000
    assert report.main(["--docs", str(tmp_path), "--check"]) == 0
    (tmp_path / "capacity.md").write_text("edited by hand\n")
    assert report.main(["--docs", str(tmp_path), "--check"]) == 1


def _row(config: str, connections: int) -> dict[str, object]:
    return {
        "config": config,
        "connections": connections,
        "repeat": 1,
        "requests_per_second": 1000.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "non_2xx": 0,
        "requests": 5000,
        "forwarded": None,
    }
