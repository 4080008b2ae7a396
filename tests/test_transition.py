"""The state machine (:func:`gateway.transition.decide`): a job moves forward, and a terminal status is final."""

from __future__ import annotations

import pytest

from gateway.model import Outcome, Status
from gateway.transition import Transition, decide

TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELED)
RUNNING = (Status.PENDING, Status.INITIALIZING, Status.GENERATING, Status.SAVING)


def test_canceled_is_a_terminal_status_of_the_last_rank() -> None:
    assert Status("canceled") is Status.CANCELED
    assert [status for status in Status if status.terminal] == list(TERMINAL)
    assert {status.rank for status in TERMINAL} == {max(status.rank for status in Status)}


@pytest.mark.parametrize("current", RUNNING)
def test_canceled_ends_a_running_job(current: Status) -> None:
    transition = decide(current, Status.CANCELED)
    assert transition is Transition.ADVANCED
    assert transition.moves
    assert transition.outcome is Outcome.APPLIED


def test_a_job_first_heard_of_as_canceled_is_created_canceled() -> None:
    assert decide(None, Status.CANCELED) is Transition.CREATED


@pytest.mark.parametrize("incoming", [*RUNNING, Status.COMPLETED, Status.FAILED, Status.CANCELED])
def test_nothing_follows_canceled(incoming: Status) -> None:
    """A later ``completed`` or ``failed`` (a result racing the cancellation) is stale, plainly: no warning."""
    transition = decide(Status.CANCELED, incoming)
    assert transition is Transition.STALE
    assert not transition.moves
    assert transition.outcome is Outcome.STALE


@pytest.mark.parametrize("current", [Status.COMPLETED, Status.FAILED])
def test_canceled_after_another_terminal_status_is_stale(current: Status) -> None:
    assert decide(current, Status.CANCELED) is Transition.STALE


def test_completed_and_failed_still_contradict_each_other() -> None:
    assert decide(Status.COMPLETED, Status.FAILED) is Transition.CONTRADICTED
    assert decide(Status.FAILED, Status.COMPLETED) is Transition.CONTRADICTED
    assert Transition.CONTRADICTED.outcome is Outcome.STALE
