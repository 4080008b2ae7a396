"""fal's queue webhooks as job events.

fal posts ``{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error",
"payload_error"}`` once a queued request is done, signed with ed25519 under keys it publishes as a JWK
Set, in its own ``X-Fal-Webhook-*`` headers (https://docs.fal.ai/model-apis/model-endpoints/webhooks;
the signature is :func:`gateway.signatures.verify_fal`). The request id is the job id. The body has no
time of its own: the signed ``X-Fal-Webhook-Timestamp`` is the event's. No model either; the generation
time is ``payload.timings.inference`` where the model's output has it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from gateway.ids import JobId
from gateway.model import JobEvent, Status
from gateway.payloads import MAX_SIZE_BYTES, Image
from gateway.providers.common import Ignored, event, image_result, metadata

__all__ = ("JWKS_URL", "STATUSES", "to_event")

JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
"""Where fal publishes its webhook keys (the ``jwks_url`` of a fal sender)."""
STATUSES = {"OK": Status.COMPLETED, "ERROR": Status.FAILED}


class _Callback(msgspec.Struct, frozen=True, kw_only=True):
    request_id: JobId
    status: str
    payload: Any = None
    error: Any = None
    payload_error: Any = None


_decode = msgspec.json.Decoder(_Callback).decode


def to_event(
    body: bytes, *, kind: str, with_images: bool, received_at: datetime, delivery_id: str | None, timestamp: datetime
) -> JobEvent | Ignored:
    """The job event of one fal webhook, or :class:`Ignored` for a status fal adds later.

    ``OK`` completes the job (with ``payload.images`` as its images, for an image sender); ``ERROR``
    fails it with ``error``, and ``payload_error`` when the payload could not be delivered.

    Raises:
        msgspec.DecodeError: the body is not JSON.
        msgspec.ValidationError: no ``request_id`` that is a job id, or no ``status``.
    """
    callback = _decode(body)
    status = STATUSES.get(callback.status)
    if status is None:
        return Ignored(provider="fal", what=callback.status)
    result, images, error_message = None, 0, None
    if status is Status.COMPLETED and with_images:
        result, images = image_result(_images(callback.payload))
    elif status is Status.FAILED:
        error_message = str(callback.error) if callback.error else "fal reported ERROR without an error"
        if callback.payload_error:
            error_message += f" (payload_error: {callback.payload_error})"
    return event(
        kind=kind,
        job_id=callback.request_id,
        status=status,
        timestamp=timestamp,
        received_at=received_at,
        delivery_id=delivery_id,
        meta=metadata(None, _inference_seconds(callback.payload)),
        result=result,
        images=images,
        error_message=error_message,
    )


def _images(payload: Any) -> list[Image]:
    """``payload.images[]`` as the gateway's images: ``url``, and where fal gives them the format (from
    ``content_type``), the dimensions (``width``, ``height``) and the size (``file_size``)."""
    found = []
    listed = payload.get("images") if isinstance(payload, dict) else None
    for item in listed if isinstance(listed, list) else []:
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url:
            continue
        content_type, width, height, size = (
            item.get(name) for name in ("content_type", "width", "height", "file_size")
        )
        found.append(
            Image(
                url=url,
                format=content_type.removeprefix("image/") if isinstance(content_type, str) and content_type else None,
                dimensions=f"{width}x{height}" if _pixels(width) and _pixels(height) else None,
                size_bytes=size
                if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_SIZE_BYTES
                else None,
            )
        )
    return found


def _inference_seconds(payload: Any) -> float | None:
    """``payload.timings.inference``: the generation time, where the model's output reports it."""
    timings = payload.get("timings") if isinstance(payload, dict) else None
    seconds = timings.get("inference") if isinstance(timings, dict) else None
    return float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None


def _pixels(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 999_999
