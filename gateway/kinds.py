"""The registry of job kinds: a new kind is one payload union in :mod:`gateway.payloads` plus one line here.

Each kind gets its own webhook route (``/api/webhooks/<name>-completion``) and its own decoder, built
once at import so the hot path never builds one.
"""

from __future__ import annotations

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
    decoder: msgspec.json.Decoder[Payload] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.payload))

    @property
    def route(self) -> str:
        return f"/api/webhooks/{self.name}-completion"

    @property
    def statuses(self) -> tuple[str, ...]:
        """The ``status`` values this kind's webhooks may carry, in the union's order."""
        return tuple(str(member.__struct_config__.tag) for member in get_args(self.payload))


KINDS: tuple[JobKind, ...] = (
    JobKind(
        "image",
        ImagePayload,
        "Image generation: a completed event carries `data.images[]` and `data.metadata`.",
    ),
    JobKind(
        "blog",
        BlogPayload,
        "Blog article generation: a completed event carries `data.article` and `data.metadata`.",
    ),
)

_BY_NAME = {kind.name: kind for kind in KINDS}


def kind_named(name: str) -> JobKind | None:
    return _BY_NAME.get(name)


def a_job_of_kind(name: str) -> str:
    """``"an image job"``, ``"a blog job"``: a kind's name in a sentence."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name} job"
