"""The registry of job kinds: a new kind is one payload union in :mod:`gateway.payloads` plus one entry here.

Each kind gets its own webhook route (``/api/webhooks/<name>-completion``) and its own decoder, built
once at import so the hot path never builds one. The union's ``completed`` Struct is found by its tag, and
its ``data`` (less ``metadata``) is the job's result, whatever the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec

from gateway.payloads import BlogPayload, ImagePayload, Payload

__all__ = ("KINDS", "JobKind", "a_job_of_kind", "kind_named")


@dataclass(frozen=True, slots=True)
class JobKind:
    """A kind of generation job and the payload its webhooks carry."""

    name: str
    payload: Any
    """The tagged union of this kind's payload Structs (tagged on ``status``)."""
    description: str
    sample: Callable[[str], dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    """A completed event's ``data`` for a job id, less ``metadata``: what ``gateway send`` posts (``None``:
    it posts no completed event of this kind)."""
    decoder: msgspec.json.Decoder[Payload] = field(init=False, repr=False, compare=False)
    completed: type[Payload] = field(init=False, repr=False, compare=False)
    """The union's Struct tagged ``completed``: its ``data`` is the result the job store keeps."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.payload))
        completed = [member for member in get_args(self.payload) if member.__struct_config__.tag == "completed"]
        if len(completed) != 1 or not _has_result(completed[0]):
            raise TypeError(
                f"the {self.name} payload union needs exactly one `completed` Struct, "
                "whose `data` is a Struct with a `metadata` field"
            )
        object.__setattr__(self, "completed", completed[0])

    @property
    def route(self) -> str:
        return f"/api/webhooks/{self.name}-completion"

    @property
    def statuses(self) -> tuple[str, ...]:
        """The ``status`` values this kind's webhooks may carry, in the union's order."""
        return tuple(str(member.__struct_config__.tag) for member in get_args(self.payload))


def _has_result(completed: type[Payload]) -> bool:
    """Whether ``completed`` carries ``data``: a Struct with ``metadata`` (kept apart from the result)."""
    info = msgspec.inspect.type_info(completed)
    assert isinstance(info, msgspec.inspect.StructType)
    data = next((field.type for field in info.fields if field.name == "data"), None)
    return isinstance(data, msgspec.inspect.StructType) and any(field.name == "metadata" for field in data.fields)


def _image_sample(job_id: str) -> dict[str, Any]:
    image = {
        "url": f"http://localhost:9006/generated_images/{job_id}/image_1.png",
        "format": "PNG",
        "dimensions": "1024x1024",
        "size_bytes": 2048576,
    }
    return {"images": [image]}


def _blog_sample(_job_id: str) -> dict[str, Any]:
    return {"article": {"title": "Ten ways to test a webhook", "url": "https://example.test/a", "word_count": 1200}}


KINDS: tuple[JobKind, ...] = (
    JobKind(
        "image",
        ImagePayload,
        "Image generation: a completed event carries `data.images[]` and `data.metadata`.",
        _image_sample,
    ),
    JobKind(
        "blog",
        BlogPayload,
        "Blog article generation: a completed event carries `data.article` and `data.metadata`.",
        _blog_sample,
    ),
)

_BY_NAME = {kind.name: kind for kind in KINDS}


def kind_named(name: str) -> JobKind | None:
    return _BY_NAME.get(name)


def a_job_of_kind(name: str) -> str:
    """``"an image job"``, ``"a blog job"``: a kind's name in a sentence."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name} job"
