"""Instructions a webhook (``--instructions``): the hot path's cost as a count that does not drift.

On a shared machine, req/s and even CPU time move with whatever else runs; the number of instructions
the gateway executes for a webhook does not. This runs the in-process hot path of
:mod:`benchmarks.profile` on uvloop (the app as ``gateway serve`` builds it, SQLite, telemetry as
shipped, unique completed-image webhooks ten at a time over ASGI, no socket) under valgrind's callgrind, counting only
between the warm-up's end and the last answer, every thread included (the SQLite writer and checkpoint
threads too). Two trees compared this way (``git stash``, a worktree) give an A/B that repeats closely
(docs/benchmark.md), where a throughput A/B needs many interleaved rounds. It counts work, not
waiting: lock contention, cache misses and the kernel's share of I/O are what the wrk runs measure.

Needs ``valgrind`` (Debian package ``valgrind``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ("count_instructions",)


def count_instructions(requests: int) -> float:
    """Instructions the process executed a webhook over ``requests`` webhooks, all threads.

    Raises ``RuntimeError`` when valgrind is missing or the run fails.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is missing; install it with: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "callgrind.out"
        run = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--instr-atstart=no",  # start-up and warm-up are not counted
                f"--callgrind-out-file={output}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                str(requests),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0 or not output.exists():
            raise RuntimeError(f"the callgrind run failed:\n{run.stdout}{run.stderr}")
        totals = next(line for line in output.read_text().splitlines() if line.startswith("totals:"))
    return int(totals.split()[1]) / requests


def _counting(on: bool) -> None:
    """Turn callgrind's counting on or off in this process (which runs under it)."""
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True, capture_output=True
    )


if __name__ == "__main__":  # the child callgrind runs
    import uvloop

    from benchmarks.profile import run_hot_path

    # uvloop's loop, as `gateway serve` runs (cProfile's --profile keeps asyncio's, whose frames it shows)
    run_hot_path(int(sys.argv[1]), lambda: _counting(True), lambda: _counting(False), uvloop.run)
