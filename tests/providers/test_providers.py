"""The providers' callbacks as job events, with sample payloads from each provider's documentation.

- Replicate: https://replicate.com/docs/topics/webhooks/receive-webhook (an unfinished prediction) and
  https://replicate.com/docs/topics/predictions (a succeeded one); image models' ``output`` is a list of
  file URLs.
- OpenAI: https://developers.openai.com/api/docs/api-reference/webhook-events (``evt_abc123`` ...).
- fal: https://docs.fal.ai/model-apis/model-endpoints/webhooks (successful result, response errors,
  payload errors).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from gateway.model import JobEvent, Status
from gateway.providers import FORMATS, Ignored
from gateway.providers.common import MAX_ERROR_CHARACTERS
from tests.providers.samples import FAL_ERROR, FAL_OK, FAL_PAYLOAD_ERROR

RECEIVED = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SIGNED = datetime(2026, 12, 3, 11, 59, 58, tzinfo=UTC)
"""The signed header's timestamp (``webhook-timestamp``, ``X-Fal-Webhook-Timestamp``)."""


def _map(provider: str, body: dict[str, Any] | bytes, *, kind: str = "image") -> JobEvent | Ignored:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return FORMATS[provider](
        raw, kind=kind, with_images=kind == "image", received_at=RECEIVED, delivery_id="msg_1", timestamp=SIGNED
    )


def _event(provider: str, body: dict[str, Any], *, kind: str = "image") -> JobEvent:
    mapped = _map(provider, body, kind=kind)
    assert isinstance(mapped, JobEvent), mapped
    return mapped


# Replicate ---------------------------------------------------------------------------------------------

REPLICATE_STARTING = {
    "id": "ufawqhfynnddngldkgtslldrkq",
    "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
    "created_at": "2022-04-26T22:13:06.224088Z",
    "started_at": None,
    "completed_at": None,
    "status": "starting",
    "input": {"text": "Alice"},
    "output": None,
    "error": None,
    "logs": None,
    "metrics": {},
}
REPLICATE_SUCCEEDED = {
    "id": "gm3qorzdhgbfurvjtvhg6dckhu",
    "model": "replicate/hello-world",
    "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
    "input": {"text": "Alice"},
    "logs": "",
    "output": "hello Alice",
    "error": None,
    "status": "succeeded",
    "created_at": "2023-09-08T16:19:34.765994Z",
    "data_removed": False,
    "started_at": "2023-09-08T16:19:34.779176Z",
    "completed_at": "2023-09-08T16:19:34.791859Z",
    "metrics": {"predict_time": 0.012683, "total_time": 0.025366},
    "urls": {
        "cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
        "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
    },
}
FLUX_OUTPUT = [
    "https://replicate.delivery/xezq/out-0.webp",
    "https://replicate.delivery/xezq/out-1.webp",
]


def _prediction(status: str, **fields: Any) -> dict[str, Any]:
    return {**REPLICATE_SUCCEEDED, "model": "black-forest-labs/flux-schnell", "status": status, **fields}


def test_replicate_starting_is_initializing_at_the_predictions_creation() -> None:
    event = _event("replicate", REPLICATE_STARTING)
    assert (event.job_id, event.status) == ("ufawqhfynnddngldkgtslldrkq", Status.INITIALIZING)
    assert event.timestamp == datetime(2022, 4, 26, 22, 13, 6, 224088, tzinfo=UTC)
    assert event.delivery_id == "msg_1"
    assert event.metadata is None


def test_replicate_processing_is_generating_from_its_start() -> None:
    event = _event("replicate", _prediction("processing", completed_at=None, output=None, metrics={}))
    assert event.status is Status.GENERATING
    assert event.timestamp == datetime(2023, 9, 8, 16, 19, 34, 779176, tzinfo=UTC)
    assert event.metadata is not None
    assert event.metadata.model_name == "black-forest-labs/flux-schnell"


def test_replicate_succeeded_completes_an_image_job_with_its_output_urls() -> None:
    event = _event("replicate", _prediction("succeeded", output=FLUX_OUTPUT))
    assert event.status is Status.COMPLETED
    assert event.timestamp == datetime(2023, 9, 8, 16, 19, 34, 791859, tzinfo=UTC)
    assert event.result is not None
    assert json.loads(bytes(event.result)) == {"images": [{"url": url} for url in FLUX_OUTPUT]}
    assert event.images == 2
    assert event.metadata is not None
    assert (event.metadata.model_name, event.metadata.generation_time_seconds) == (
        "black-forest-labs/flux-schnell",
        0.012683,
    )


def test_replicate_succeeded_without_file_output_completes_with_no_result() -> None:
    """The docs' hello-world prediction outputs text: a provider job's ``completed`` needs no result."""
    event = _event("replicate", REPLICATE_SUCCEEDED)
    assert (event.status, event.result, event.images) == (Status.COMPLETED, None, 0)
    assert event.metadata is not None
    assert event.metadata.model_name == "replicate/hello-world"
    blog = _event("replicate", _prediction("succeeded", output=FLUX_OUTPUT), kind="blog")
    assert (blog.kind, blog.result, blog.images) == ("blog", None, 0)


def test_replicate_failed_fails_the_job_with_its_error() -> None:
    event = _event("replicate", _prediction("failed", output=None, error="CUDA out of memory"))
    assert (event.status, event.error_message) == (Status.FAILED, "CUDA out of memory")
    silent = _event("replicate", _prediction("failed", output=None, error=None))
    assert silent.error_message == "the prediction failed (Replicate gave no error)"


def test_replicate_canceled_cancels_the_job() -> None:
    event = _event("replicate", _prediction("canceled", output=None, metrics={}))
    assert (event.status, event.error_message, event.result) == (Status.CANCELED, None, None)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "processing", "started_at": "0001-01-01T00:00:00+01:00"},
        {"status": "succeeded", "completed_at": "0001-01-01T00:30:00+01:00"},
        {"status": "starting", "created_at": "9999-12-31T23:59:59-01:00", "started_at": None},
    ],
)
def test_a_replicate_time_outside_years_1_to_9999_in_utc_is_a_validation_error(fields: dict[str, Any]) -> None:
    """A signed callback whose time overflows once in UTC is refused as invalid (a 400), never a crash."""
    with pytest.raises(msgspec.ValidationError, match="outside years 1-9999"):
        _map("replicate", _prediction(**fields))


def test_a_status_replicate_adds_later_is_ignored() -> None:
    ignored = _map("replicate", _prediction("aborted"))
    assert ignored == Ignored(provider="replicate", what="aborted")
    assert "acknowledged, not recorded" in ignored.detail


# OpenAI ------------------------------------------------------------------------------------------------


def _openai(event_type: str, object_id: str = "resp_abc123") -> dict[str, Any]:
    return {
        "id": "evt_abc123",
        "object": "event",
        "type": event_type,
        "created_at": 1719168000,
        "data": {"id": object_id},
    }


@pytest.mark.parametrize(
    ("event_type", "object_id", "status"),
    [
        ("response.completed", "resp_abc123", Status.COMPLETED),
        ("response.cancelled", "resp_abc123", Status.CANCELED),
        ("response.failed", "resp_abc123", Status.FAILED),
        ("response.incomplete", "resp_abc123", Status.FAILED),
        ("batch.completed", "batch_abc123", Status.COMPLETED),
        ("batch.cancelled", "batch_abc123", Status.CANCELED),
        ("batch.expired", "batch_abc123", Status.FAILED),
        ("batch.failed", "batch_abc123", Status.FAILED),
        ("fine_tuning.job.succeeded", "ftjob_abc123", Status.COMPLETED),
        ("fine_tuning.job.failed", "ftjob_abc123", Status.FAILED),
        ("fine_tuning.job.cancelled", "ftjob_abc123", Status.CANCELED),
        ("eval.run.succeeded", "evalrun_abc123", Status.COMPLETED),
        ("eval.run.failed", "evalrun_abc123", Status.FAILED),
        ("eval.run.canceled", "evalrun_abc123", Status.CANCELED),
    ],
)
def test_openai_events_end_the_job_they_name(event_type: str, object_id: str, status: Status) -> None:
    event = _event("openai", _openai(event_type, object_id), kind="blog")
    assert (event.job_id, event.status, event.kind) == (object_id, status, "blog")
    assert event.timestamp == datetime(2024, 6, 23, 18, 40, tzinfo=UTC)
    assert event.result is None  # ids only
    assert (event.error_message is not None) == (status is Status.FAILED)


def test_openai_incomplete_response_fails_with_a_clear_message() -> None:
    event = _event("openai", _openai("response.incomplete"))
    assert event.error_message is not None
    assert "ended incomplete" in event.error_message
    expired = _event("openai", _openai("batch.expired", "batch_abc123"))
    assert expired.error_message is not None
    assert "batch.expired" in expired.error_message


@pytest.mark.parametrize(
    "body",
    [
        {"id": "evt_1", "type": "realtime.call.incoming", "created_at": 1719168000, "data": {"call_id": "rtc_1"}},
        _openai("response.queued"),
        _openai("batch.incomplete", "batch_abc123"),
        _openai("vector_store.file.completed", "file_1"),
    ],
)
def test_an_openai_event_that_is_no_jobs_end_is_ignored(body: dict[str, Any]) -> None:
    ignored = _map("openai", body)
    assert isinstance(ignored, Ignored)
    assert (ignored.provider, ignored.what) == ("openai", body["type"])


# fal ---------------------------------------------------------------------------------------------------


def test_fal_ok_completes_the_job_with_its_images_at_the_signed_time() -> None:
    event = _event("fal", FAL_OK)
    assert (event.job_id, event.status, event.timestamp) == (FAL_OK["request_id"], Status.COMPLETED, SIGNED)
    assert event.result is not None
    assert json.loads(bytes(event.result)) == {
        "images": [
            {"url": "https://url.to/image.png", "format": "png", "dimensions": "1024x1024", "size_bytes": 1824075}
        ]
    }
    assert event.images == 1


def test_fal_reports_the_generation_time_where_the_payload_has_timings() -> None:
    event = _event("fal", {**FAL_OK, "payload": {**FAL_OK["payload"], "timings": {"inference": 2.5}}})
    assert event.metadata is not None
    assert event.metadata.generation_time_seconds == 2.5
    assert _event("fal", FAL_OK).metadata is None


def test_fal_error_fails_the_job_with_its_error_and_payload_error() -> None:
    assert _event("fal", FAL_ERROR).error_message == "Invalid status code: 422"
    event = _event("fal", FAL_PAYLOAD_ERROR)
    assert event.status is Status.FAILED
    assert event.error_message == (
        "Error while serializing the payload (payload_error: Response payload is not JSON serializable.)"
    )


def test_fal_ok_whose_payload_could_not_be_delivered_completes_without_images() -> None:
    event = _event("fal", {**FAL_PAYLOAD_ERROR, "status": "OK", "error": None})
    assert (event.status, event.result, event.images) == (Status.COMPLETED, None, 0)


def test_a_status_fal_adds_later_is_ignored() -> None:
    assert _map("fal", {**FAL_OK, "status": "CANCELLED"}) == Ignored(provider="fal", what="CANCELLED")


# Every provider ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("replicate", {**REPLICATE_STARTING, "id": "bad id with spaces"}),
        ("replicate", {"status": "starting"}),
        ("openai", {**_openai("response.completed"), "data": {}}),
        ("openai", {"id": "evt_1"}),
        ("fal", {**FAL_OK, "request_id": "../etc/passwd"}),
        ("fal", b"not json"),
    ],
)
def test_a_body_that_is_no_callback_of_its_provider_is_refused(provider: str, body: dict[str, Any] | bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        _map(provider, body)


def test_what_a_provider_sends_never_becomes_an_unusable_label_or_text() -> None:
    """Signed provider values the gateway cannot store or label are left out or cut, never refused (a
    refusal would only make the provider retry)."""
    event = _event(
        "replicate",
        _prediction(
            "failed", model="evil\nmodel", error="x\x00" * MAX_ERROR_CHARACTERS, metrics={"predict_time": 1e12}
        ),
    )
    assert event.metadata is None
    assert event.error_message is not None
    assert len(event.error_message) == MAX_ERROR_CHARACTERS
    assert "\x00" not in event.error_message
