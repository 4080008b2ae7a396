"""Replicate's prediction webhooks as job events.

Replicate posts the prediction object itself, signed with Standard Webhooks headers and a ``whsec_``
secret (https://replicate.com/docs/topics/webhooks/receive-webhook,
https://replicate.com/docs/topics/webhooks/verify-webhook). The prediction's id is the job id; its
``status`` maps as below; the model is ``model`` and the generation time ``metrics.predict_time``
(https://replicate.com/docs/topics/predictions).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from gateway.ids import JobId
from gateway.model import JobEvent, Status
from gateway.payloads import Image
from gateway.providers.common import Ignored, event, image_result, metadata

__all__ = ("STATUSES", "Prediction", "to_event")

STATUSES: dict[str, Status] = {
    "starting": Status.INITIALIZING,
    "processing": Status.GENERATING,
    "succeeded": Status.COMPLETED,
    "failed": Status.FAILED,
    "canceled": Status.CANCELED,
}
"""Replicate's prediction statuses and the job status each becomes."""


class _Metrics(msgspec.Struct, frozen=True):
    predict_time: float | None = None


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a prediction the gateway reads; the others (``input``, ``logs``, ``urls`` ...) are
    skipped."""

    id: JobId
    status: str
    model: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: Any = None
    error: Any = None
    metrics: _Metrics | None = None


_decode = msgspec.json.Decoder(Prediction).decode


def to_event(
    body: bytes, *, kind: str, with_images: bool, received_at: datetime, delivery_id: str | None, timestamp: datetime
) -> JobEvent | Ignored:
    """The job event of one prediction webhook, or :class:`Ignored` for a status Replicate adds later.

    ``timestamp`` (the signed ``webhook-timestamp``) stands in where the prediction has no time of its own.

    Raises:
        msgspec.DecodeError: the body is not JSON.
        msgspec.ValidationError: it is no prediction (no ``id`` that is a job id, no ``status``).
    """
    prediction = _decode(body)
    status = STATUSES.get(prediction.status)
    if status is None:
        return Ignored(provider="replicate", what=prediction.status)
    if status is Status.INITIALIZING:
        moment = prediction.created_at
    elif status is Status.GENERATING:
        moment = prediction.started_at or prediction.created_at
    else:
        moment = prediction.completed_at or prediction.started_at or prediction.created_at
    predict_time = prediction.metrics.predict_time if prediction.metrics is not None else None
    result, images = None, 0
    if status is Status.COMPLETED and with_images:
        result, images = image_result(Image(url=url) for url in _urls(prediction.output))
    error_message = None
    if status is Status.FAILED:
        error_message = str(prediction.error) if prediction.error else "the prediction failed (Replicate gave no error)"
    return event(
        kind=kind,
        job_id=prediction.id,
        status=status,
        timestamp=moment or timestamp,
        received_at=received_at,
        delivery_id=delivery_id,
        meta=metadata(prediction.model, predict_time),
        result=result,
        images=images,
        error_message=error_message,
    )


def _urls(output: Any) -> list[str]:
    """The file URLs of a prediction's output: one URL, or a list of them (other values are skipped)."""
    candidates = output if isinstance(output, list) else [output]
    return [item for item in candidates if isinstance(item, str) and item.startswith(("https://", "http://"))]
