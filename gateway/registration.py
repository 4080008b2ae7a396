"""``POST /api/jobs``: the app registers a job (who asked for it, and what) before the backend reports on it.

The body is validated strictly (unknown fields refused, 400 naming the field path), because unlike the
backend's webhooks it comes from the app, which the gateway's API documents exactly.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec

from gateway.ids import Identifier, JobId
from gateway.kinds import KINDS, kind_named
from gateway.model import JobContext
from gateway.payloads import Dimensions

__all__ = (
    "RegisterOutcome",
    "Registered",
    "Registration",
    "RegistrationError",
    "decode_registration",
    "differing_fields",
)

Short = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Registration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /api/jobs``: the seed's ``ImageGeneration`` model, keyed by the backend's job id."""

    job_id: JobId
    kind: str
    """A job kind the gateway has a webhook route for (``image``, ``blog``)."""
    user_id: Identifier
    organization_id: Identifier | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=20_000)] | None = None
    num_images: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    size: Dimensions | None = None
    format: Short | None = None
    style: Short | None = None
    quality: Short | None = None
    metadata: Annotated[dict[str, Any], msgspec.Meta(max_length=64)] | None = None
    """Free-form, the app's own: stored and returned as sent."""

    @property
    def context(self) -> JobContext:
        return JobContext(
            prompt=self.prompt,
            num_images=self.num_images,
            size=self.size,
            format=self.format,
            style=self.style,
            quality=self.quality,
            metadata=self.metadata,
        )


class RegistrationError(ValueError):
    """A body that is not a valid registration; the message names the field."""


_decoder = msgspec.json.Decoder(Registration)


def decode_registration(body: bytes) -> Registration:
    """Validate ``body``; raise :class:`RegistrationError` with msgspec's field path otherwise."""
    try:
        registration = _decoder.decode(body)
    except msgspec.ValidationError as error:
        raise RegistrationError(f"Invalid registration: {error}") from None
    except msgspec.DecodeError as error:
        raise RegistrationError(f"Malformed JSON: {error}") from None
    except RecursionError:
        raise RegistrationError("Malformed JSON: nested too deeply") from None
    if kind_named(registration.kind) is None:
        names = ", ".join(kind.name for kind in KINDS)
        raise RegistrationError(
            f"Invalid registration: unknown kind {registration.kind!r} (one of {names}) - at `$.kind`"
        )
    return registration


class RegisterOutcome(enum.StrEnum):
    """What a registration did."""

    CREATED = "created"
    """A new job, ``pending`` until its first webhook (201)."""
    UNCHANGED = "unchanged"
    """Registered before with the same body: nothing changed (200, so a retry is safe)."""
    ATTACHED = "attached"
    """Its webhooks came first: the context was attached to the job they created (200)."""
    CONFLICT = "conflict"
    """Registered before with a different body: nothing changed (409)."""


class Registered(msgspec.Struct, frozen=True, kw_only=True):
    """The job store's answer to a registration."""

    outcome: RegisterOutcome
    differs: tuple[str, ...] = ()
    """For a conflict: the fields whose registered value differs from this body's."""


def differing_fields(
    registration: Registration, user_id: str | None, organization_id: str | None, context: JobContext | None
) -> tuple[str, ...]:
    """Fields of ``registration`` that differ from what is stored (the job id and kind already match)."""
    stored = {"user_id": user_id, "organization_id": organization_id, **msgspec.structs.asdict(context or JobContext())}
    given = {
        "user_id": registration.user_id,
        "organization_id": registration.organization_id,
        **msgspec.structs.asdict(registration.context),
    }
    return tuple(name for name, value in given.items() if stored[name] != value)
