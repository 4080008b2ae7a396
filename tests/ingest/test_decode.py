"""Decoding covers every kind: a completed event's ``data`` becomes the job's result whatever its kind."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from gateway.ingest.decode import decode_event
from gateway.kinds import KINDS, JobKind
from gateway.payloads import Canceled, Failed, Generating, Metadata, NonEmptyText, Payload, Pending, _Shape

RECEIVED = datetime(2025, 10, 21, 16, 45, tzinfo=UTC)


def _completed(job_id: str, data: dict[str, object]) -> bytes:
    metadata = {"model_name": "model-x", "generation_time_seconds": 3.5}
    return msgspec.json.encode(
        {
            "job_id": job_id,
            "status": "completed",
            "timestamp": "2025-10-21T16:45:00Z",
            "data": {**data, "metadata": metadata},
        }
    )


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kinds_completed_result_is_kept(kind: JobKind) -> None:
    assert kind.sample is not None, f"{kind.name} has no sample: `gateway send` cannot post its completed event"
    sample = kind.sample("job-1")

    event = decode_event(kind, _completed("job-1", sample), "msg_1", RECEIVED)

    assert event.result is not None, f"a completed {kind.name} event's result was dropped"
    assert msgspec.json.decode(event.result) == sample  # as sent, metadata kept apart
    assert event.metadata == Metadata(model_name="model-x", generation_time_seconds=3.5)


# A kind the gateway does not ship, built here and never added to KINDS: its entry alone must be enough.
class Clip(_Shape, frozen=True):
    url: NonEmptyText


class VideoData(_Shape, frozen=True):
    clips: list[Clip]
    metadata: Metadata | None = None


class VideoCompleted(Payload, frozen=True, tag="completed"):
    data: VideoData


VideoPayload = Pending | Generating | VideoCompleted | Failed | Canceled


def test_a_new_kinds_result_needs_only_its_entry() -> None:
    video = JobKind("video", VideoPayload, "Video generation.")

    event = decode_event(
        video, _completed("clip-1", {"clips": [{"url": "https://example.test/c.mp4"}]}), None, RECEIVED
    )

    assert event.kind == "video"
    assert event.result is not None
    assert msgspec.json.decode(event.result) == {"clips": [{"url": "https://example.test/c.mp4"}]}
    assert event.images == 0


class BareCompleted(Payload, frozen=True, tag="completed"):
    data: list[Clip]


@pytest.mark.parametrize("union", [Pending | Generating | Failed, Pending | BareCompleted], ids=["none", "no-metadata"])
def test_a_kind_whose_completed_result_cannot_be_kept_is_refused_at_import(union: object) -> None:
    with pytest.raises(TypeError, match="exactly one `completed` Struct"):
        JobKind("video", union, "Video generation.")
