"""The benchmark command runs end to end (a smoke test: no timing is asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_measures_every_configuration_without_errors(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is missing in CI: .ci/run installs it (apt-get install -y wrk)")
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "G/B@10" in result.stdout
    report = json.loads(out.read_text())
    measured = {(r["config"], r["connections"]) for r in report["results"]}
    assert measured == {("A", 10), ("B", 10), ("G", 10)}
    assert all(r["requests_per_second"] > 0 and r["non_2xx"] == 0 for r in report["results"])
