"""Stage 6: recognise a delivery already processed, before doing any work for it.

Two keys identify a delivery: the sender's ``webhook-id`` (Standard Webhooks' idempotency key) and the
event itself (kind, job, status, timestamp), so a retry that the sender re-signed with a new id is still
recognised. The idempotency store answers fast; the job store's unique constraints stay the last guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.model import JobEvent

__all__ = ("idempotency_keys",)


def idempotency_keys(event: JobEvent) -> tuple[str, ...]:
    """The keys under which ``event`` is remembered; seeing any of them again makes it a duplicate.

    An event of a declared sender is remembered for that sender only: another sender's copy is no retry
    of it, and goes on to the job store, which refuses it when the job is not that sender's (409).
    """
    scope = "" if event.sender is None else f"{event.sender}:"
    if event.delivery_id is None:
        return (f"event:{scope}{event.key}",)
    return (f"event:{scope}{event.key}", f"delivery:{scope}{event.delivery_id}")
