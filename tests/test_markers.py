"""The fast subset of docs/contributing.md leaves out what needs services, a browser or a process, without
a decorator on those tests: the markers come from the fixtures, parameters and code each test uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = "not services and not browser and not server and not fuzz and not load and not soak"


def collected(expression: str, *files: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", expression, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 5), result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_fast_subset_keeps_in_process_tests_and_drops_services_processes_and_browsers() -> None:
    files = (
        "tests/test_job_store_contract.py",
        "tests/test_jetstream.py",
        "tests/test_delivery.py",
        "tests/test_fuzz.py",
    )
    fast = collected(FAST, *files)
    assert "tests/test_job_store_contract.py::test_recorded_confirms_only_events_the_store_holds[sqlite]" in fast
    assert "tests/test_jetstream.py::test_subject_tokens_never_split_or_wildcard" in fast
    parameters = [test.partition("[")[2] for test in fast]
    assert not [ids for ids in parameters if "postgresql" in ids or "redis" in ids or "distributed" in ids]
    assert not [test for test in fast if "test_jetstream.py::test_each_event_is_stored_once" in test]  # nats_url
    assert not [test for test in fast if "nats_down" in test]  # a private nats-server
    assert not [test for test in fast if "sigkill" in test or "sigterm" in test]  # gateway serve processes
    assert not [test for test in fast if "test_arbitrary_bytes_are_answered_cleanly" in test]  # hypothesis
    assert "tests/test_fuzz.py::test_valid_webhooks_are_accepted[secret]" in fast  # examples, no hypothesis
    assert set(fast) | set(collected(f"not ({FAST})", *files)) == set(collected("", *files))


def test_browser_load_and_soak_tests_carry_their_markers() -> None:
    assert collected("browser", "tests/test_status_page_browser.py")
    assert collected("soak", "tests/test_soak.py")
    assert collected("load", "tests/test_benchmarks.py")
    assert collected(FAST, "tests/test_status_page_browser.py", "tests/test_soak.py", "tests/test_benchmarks.py") == []
