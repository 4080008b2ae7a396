"""The AI providers' callbacks as the gateway's job events: one module per provider ``format``.

Each maps one callback body onto a :class:`~gateway.model.JobEvent` (the provider's id as the job id, its
timestamps, the model and generation time where the payload carries them), or onto :class:`Ignored` for an
event type or status the provider added later. Pure functions: verifying the signature is the caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gateway.providers import fal, openai, replicate
from gateway.providers.common import Ignored

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.model import JobEvent

__all__ = ("FORMATS", "Ignored", "ToEvent")


class ToEvent(Protocol):
    """A provider's mapper: one callback body as a job event of ``kind`` (with its images when
    ``with_images``), ``timestamp`` (the signed header's) standing in where the body has no time."""

    def __call__(
        self,
        body: bytes,
        *,
        kind: str,
        with_images: bool,
        received_at: datetime,
        delivery_id: str | None,
        timestamp: datetime,
    ) -> JobEvent | Ignored: ...


FORMATS: dict[str, ToEvent] = {"replicate": replicate.to_event, "openai": openai.to_event, "fal": fal.to_event}
"""The provider ``format`` values of a sender, and the mapper of each."""
