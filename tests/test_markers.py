"""The fast subset of docs/contributing.md leaves out what needs services, a browser or a process, without
a decorator on those tests: the markers come from the fixtures, parameters and code each test uses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = "not services and not browser and not server and not fuzz and not load and not soak"
MARKERS = ("services", "browser", "server", "fuzz", "load", "soak")
FILES = (
    "tests/stores/test_job_store_contract.py",
    "tests/delivery/test_jetstream.py",
    "tests/delivery/test_delivery.py",
    "tests/http/test_fuzz.py",
)
MARKED_BY_HAND = (
    "tests/http/test_status_page_browser.py",
    "tests/benchmarks/test_soak.py",
    "tests/benchmarks/test_benchmarks.py",
)
NOT_IMPORTED = {"tests/http/test_schemathesis.py": [{"server", "fuzz"}, {"server"}]}
"""conftest's _MODULE_MARKERS: modules an -m expression that deselects these markers does not import."""


def pytest_collection_finish(session: pytest.Session) -> None:
    """Run only when this module is loaded as a plugin (``-p tests.test_markers``, below): print each
    collected test with the markers of :data:`MARKERS` it carries."""
    for item in session.items:
        print(f"markers: {item.nodeid} {','.join(m for m in MARKERS if item.get_closest_marker(m))}")


def collect(expression: str, *files: str, plugin: bool = False) -> subprocess.Popen[str]:
    """``pytest --collect-only`` of ``files`` with ``-m expression``, started; read it with :func:`collected`."""
    plugins = ["-p", "no:cacheprovider"] + (["-p", "tests.test_markers"] if plugin else [])
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *plugins, "-m", expression, *files],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collected(process: subprocess.Popen[str]) -> list[str]:
    """The lines a :func:`collect` printed, once it has finished."""
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 5), stdout + stderr
    return stdout.splitlines()


@pytest.fixture(scope="module")
def collections() -> Iterator[tuple[list[str], list[str]]]:
    """The files above collected twice, both at once (each collection takes seconds of CPU): without
    ``-m`` and printing each test's markers, then with the fast subset's expression."""
    files = (*FILES, *MARKED_BY_HAND, *NOT_IMPORTED)
    every, subset = collect("", *files, plugin=True), collect(FAST, *files)
    try:
        yield collected(every), collected(subset)
    finally:
        for process in (every, subset):
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def markers(collections: tuple[list[str], list[str]]) -> dict[str, set[str]]:
    """Every test of the files above and its markers."""
    lines = collections[0]
    pairs = [line.removeprefix("markers: ").partition(" ") for line in lines if line.startswith("markers: ")]
    return {test: set(filter(None, marks.split(","))) for test, _, marks in pairs}


@pytest.fixture(scope="module")
def fast(collections: tuple[list[str], list[str]]) -> list[str]:
    """What pytest itself selects with the fast subset's expression."""
    return [line for line in collections[1] if "::" in line]


def test_the_fast_subset_keeps_in_process_tests_and_drops_services_processes_and_browsers(
    markers: dict[str, set[str]], fast: list[str]
) -> None:
    assert "tests/stores/test_job_store_contract.py::test_recorded_confirms_only_events_the_store_holds[sqlite]" in fast
    assert "tests/delivery/test_jetstream.py::test_subject_tokens_never_split_or_wildcard" in fast
    parameters = [test.partition("[")[2] for test in fast]
    assert not [ids for ids in parameters if "postgresql" in ids or "redis" in ids or "distributed" in ids]
    assert not [test for test in fast if "test_jetstream.py::test_each_event_is_stored_once" in test]  # nats_url
    assert not [test for test in fast if "nats_down" in test]  # a private nats-server
    assert not [test for test in fast if "sigkill" in test or "sigterm" in test]  # gateway serve processes
    assert not [test for test in fast if "test_arbitrary_bytes_are_answered_cleanly" in test]  # hypothesis
    assert "tests/http/test_fuzz.py::test_valid_webhooks_are_accepted[secret]" in fast  # examples, no hypothesis
    assert sorted(fast) == sorted(test for test, marks in markers.items() if not marks)


def test_browser_load_and_soak_tests_carry_their_markers(markers: dict[str, set[str]], fast: list[str]) -> None:
    for path, marker in zip(MARKED_BY_HAND, ("browser", "soak", "load"), strict=True):
        tests = [marks for test, marks in markers.items() if test.startswith(f"{path}::")]
        assert tests, path
        assert all(marker in marks for marks in tests), path
    assert not [test for test in fast if test.startswith(MARKED_BY_HAND)]


def test_a_module_left_unimported_holds_only_tests_the_expression_deselects(
    markers: dict[str, set[str]], fast: list[str]
) -> None:
    """Every test of such a module carries exactly one of its declared sets of markers (of
    :data:`MARKERS`), so not importing it under the fast subset drops nothing the subset would have run."""
    from tests.conftest import _MODULE_MARKERS

    assert {path: [set(marks) for marks in sets] for path, sets in _MODULE_MARKERS.items()} == NOT_IMPORTED
    for path, declared in NOT_IMPORTED.items():
        tests = [marks for test, marks in markers.items() if test.startswith(f"{path}::")]
        assert tests, path
        assert all(marks in declared for marks in tests), path
    assert not [test for test in fast if test.startswith(tuple(NOT_IMPORTED))]
