"""GCRA, the generic cell rate algorithm: one pure decision per request, in integer microseconds."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ("RateDecision", "gcra")


class RateDecision(NamedTuple):
    """One GCRA decision (see :func:`gcra`), in integer microseconds."""

    allowed: bool
    backlog_us: int
    """How far the key's theoretical arrival time is ahead of now after this decision (a limited request
    leaves it unchanged): the part of the burst tolerance in use. Headers and ``Retry-After`` follow from it."""


def gcra(tat: int | None, now: int, interval: int, tolerance: int) -> tuple[RateDecision, int | None]:
    """Decide one request against a key whose theoretical arrival time is ``tat`` (``None``: unknown key).

    Returns the decision and the key's new TAT, or ``None`` when the request is refused (nothing changes).
    """
    base = now if tat is None or tat < now else tat
    backlog = base + interval - now
    if backlog > tolerance:
        return RateDecision(False, base - now), None
    return RateDecision(True, backlog), base + interval
