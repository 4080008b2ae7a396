"""The contract between the dispatcher and a sink (HTTP forwarding, NATS JetStream).

The dispatcher claims an outbox row, hands it to the row's sink as a :class:`Delivery`, and records the
:class:`Attempt` the sink answers: a sink never touches the outbox, and the dispatcher never speaks a
sink's protocol. A sink must not raise for a failed delivery; it answers :class:`Retry`, :class:`Dead`
or :class:`Gone` (an exception escaping ``send`` is a bug, recorded as a retry).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from gateway.outbox import Delivery

__all__ = ("Attempt", "Dead", "Delivered", "Delivery", "Gone", "Retry", "Sink")


class Delivered(msgspec.Struct, frozen=True):
    """The sink took the event: the row is done."""


class Retry(msgspec.Struct, frozen=True):
    """A transient failure (timeout, connection error, 5xx, 408, 429): try again later."""

    reason: str
    after_seconds: float | None = None
    """When the receiver said (``Retry-After``); ``None``: the retry schedule decides."""


class Dead(msgspec.Struct, frozen=True):
    """A permanent failure (another 4xx): the row goes to the dead letters, awaiting a replay."""

    reason: str


class Gone(msgspec.Struct, frozen=True):
    """The receiver answered 410 Gone: this sink is disabled until an operator re-enables it."""

    reason: str


Attempt = Delivered | Retry | Dead | Gone


class Sink(Protocol):
    """Where deliveries go; one instance per process, shared by concurrent sends."""

    name: str
    """``"http"`` or ``"nats"``: the outbox's ``sink`` column."""

    async def send(self, delivery: Delivery) -> Attempt: ...

    async def close(self) -> None: ...
