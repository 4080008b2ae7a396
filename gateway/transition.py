"""Stage 7: the rule that decides what an event does to its job's status.

A job only moves forward: ``pending < initializing < generating < saving < completed | failed | canceled``,
and a terminal status is final. This is a pure function; the job store calls it inside the transaction that
records the event, so the decision and the write see the same state.
"""

from __future__ import annotations

import enum

from gateway.model import Outcome, Status

__all__ = ("Transition", "decide")


class Transition(enum.Enum):
    """What an event does to its job."""

    CREATED = "created"
    """The job's first event: creates the job with this status."""
    ADVANCED = "advanced"
    """Moves the job forward to this status."""
    PROGRESSED = "progressed"
    """Repeats the current non-terminal status with a new timestamp: a progress update, no transition."""
    STALE = "stale"
    """Behind the current status, or a repeat of the terminal one: recorded, status unchanged."""
    CONTRADICTED = "contradicted"
    """``failed`` after ``completed`` or the reverse: recorded as stale and logged as a warning, since it
    usually means a backend bug. A cancellation and a result crossing each other (``completed`` after
    ``canceled``, ``canceled`` after ``failed``) is an ordinary race, plainly stale."""

    @property
    def outcome(self) -> Outcome:
        # Identity against module constants: an Enum's hash and its class attributes go through Python code.
        return _STALE_OUTCOME if self is _STALE or self is _CONTRADICTED else _APPLIED_OUTCOME

    @property
    def applies(self) -> bool:
        """Whether the outcome is ``applied`` (the job's row takes the event)."""
        return not (self is _STALE or self is _CONTRADICTED)

    @property
    def moves(self) -> bool:
        """Whether the job's status changes (the event is a status transition)."""
        return self is _CREATED or self is _ADVANCED


_CREATED, _ADVANCED = Transition.CREATED, Transition.ADVANCED
_PROGRESSED, _STALE, _CONTRADICTED = Transition.PROGRESSED, Transition.STALE, Transition.CONTRADICTED
_CANCELED = Status.CANCELED
_APPLIED_OUTCOME, _STALE_OUTCOME = Outcome.APPLIED, Outcome.STALE


def decide(current: Status | None, incoming: Status) -> Transition:
    """Decide what an ``incoming`` event does to a job currently at ``current`` (``None``: no job yet)."""
    if current is None:
        return _CREATED
    if current.terminal:
        if incoming.terminal and incoming is not current and _CANCELED not in (current, incoming):
            return _CONTRADICTED
        return _STALE
    if incoming is current:
        return _PROGRESSED
    if incoming.rank < current.rank:
        return _STALE
    return _ADVANCED
