"""When to try a failed delivery again: ``GATEWAY_FORWARD_RETRY_SCHEDULE`` with jitter, or the receiver's
``Retry-After``."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ("MAX_RETRY_AFTER_SECONDS", "RetrySchedule")

MAX_RETRY_AFTER_SECONDS = 86400.0
"""A receiver's ``Retry-After`` is honoured up to a day: a larger one is a mistake, not a plan."""


class RetrySchedule:
    """Delays before each retry; once they are used up, a failing delivery is dead-lettered.

    Jitter (+-``jitter`` of each delay) spreads the retries of a burst of failures, so a receiver
    coming back is not hit by all of them at once.
    """

    __slots__ = ("_jitter", "_random", "delays")

    def __init__(
        self, delays: Sequence[float], *, jitter: float = 0.2, random_unit: Callable[[], float] = random.random
    ) -> None:
        self.delays = tuple(delays)
        self._jitter = jitter
        self._random = random_unit

    def next_delay(self, attempt: int, requested: float | None) -> float | None:
        """Seconds to wait after failed ``attempt`` (1 for the first), or ``None`` once the schedule is
        exhausted. ``requested`` is the receiver's ``Retry-After``, which replaces the scheduled delay."""
        if attempt > len(self.delays):
            return None
        if requested is not None:
            return min(max(requested, 0.0), MAX_RETRY_AFTER_SECONDS)
        return self.delays[attempt - 1] * (1 + self._jitter * (2 * self._random() - 1))

    @property
    def poll_seconds(self) -> float:
        """How often the dispatcher looks for due rows when nothing wakes it: often enough for the
        shortest delay, at most once a second, at least every 50 ms."""
        shortest = min(self.delays, default=1.0)
        return min(1.0, max(0.05, shortest))
