"""CPU time of the processes a benchmark run involves, read from ``/proc`` before and after the run.

A process's figure is its ``utime + stime`` (every thread's, the exited ones included) plus that of its
descendants alive at the time of reading, and of the children it reaped (``cutime + cstime``), so a
server forking workers (granian) is counted whole. For G-dist, PostgreSQL is counted as two groups: the
backends serving the gateway's connections (found in ``pg_stat_activity`` by the ``application_name``
the benchmark gives the gateway's DSN) and the server's background processes (WAL writer,
checkpointer, background writer, autovacuum), which serve every client of the server, not only the
gateway; Redis is its server process (``INFO server``'s ``process_id``), shared with whatever else
uses that Redis. On a machine where others use the same servers those two figures are upper bounds.

Linux only (``/proc``); elsewhere every reading is empty and the benchmark reports no CPU figures.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ("Snapshot", "main_thread_seconds", "process_seconds", "processes", "tree_seconds", "usage")

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name; ``None`` if the process is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses


def process_seconds(pid: int, *, reaped: bool = True) -> float:
    """CPU seconds of ``pid`` (all its threads), with its reaped children's if ``reaped``; 0 if gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def main_thread_seconds(pid: int) -> float:
    """CPU seconds of the main thread of ``pid`` alone (the event loop's, in a uvicorn server); 0 if gone."""
    try:
        text = (_PROC / str(pid) / "task" / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of every descendant alive now (each with its reaped children)."""
    children = _children()
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += process_seconds(current)
        stack.extend(children.get(current, ()))
    return total


Snapshot = dict[str, dict[int, float]]
"""CPU seconds per group of processes, per process, at one instant: ``{"gateway": {4242: 12.3}, ...}``."""


def processes(pids: list[int], command: str) -> dict[int, float]:
    """CPU seconds of each of ``pids`` whose command name starts with ``command`` (others are skipped:
    a pid from a server in another PID namespace, or one that exited, is not this machine's process)."""
    figures: dict[int, float] = {}
    for pid in pids:
        try:
            name = (_PROC / str(pid) / "comm").read_text().strip()
        except OSError:
            continue
        if name.startswith(command):
            figures[pid] = process_seconds(pid, reaped=False)
    return figures


def usage(before: Snapshot, after: Snapshot, webhooks: int) -> dict[str, float]:
    """CPU microseconds a webhook per group between two snapshots, for the groups read both times.

    Processes are compared one by one: one that started in between counts whole, one that exited in
    between is left out (its time since the first reading is lost, never counted as negative).
    """
    figures: dict[str, float] = {}
    for group, now in after.items():
        then = before.get(group)
        if then is None or not now or webhooks <= 0:
            continue
        spent = sum(seconds - then.get(pid, 0.0) for pid, seconds in now.items())
        figures[group] = max(0.0, spent) * 1e6 / webhooks
    return figures
