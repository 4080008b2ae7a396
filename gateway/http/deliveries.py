"""The deliveries API: list the outbox (dead letters first of all), replay, and re-enable a sink.

``GET /api/deliveries``, ``POST /api/deliveries/{id}/replay``, ``POST /api/deliveries/replay?state=dead``
and ``POST /api/deliveries/enable?sink=http``. Kept in one controller of its own so it can sit behind
the app's guard (reads need the read credential; replay and enable, the bearer token).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, PathParameter, QueryParameter

from gateway.http.params import MAX_EVENT_ID, JobIdFilter
from gateway.http.responses import UNAUTHORIZED, ErrorBody
from gateway.outbox import DeliveryPage, DeliveryRecord, DeliveryState, Outbox
from gateway.telemetry.metrics import SINKS

__all__ = ("Enabled", "Replayed", "delivery_controller")

_MAX_CURSOR_DIGITS = 18


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """How many deliveries were put back to pending, due now."""

    replayed: int


class Enabled(msgspec.Struct, frozen=True, kw_only=True):
    sink: str
    was_disabled: bool
    """Whether the sink had been disabled (by a 410 Gone); ``false``: it was already enabled."""


def delivery_controller(outbox: Outbox, wake: Callable[[], None]) -> type[Controller]:
    """The deliveries routes over ``outbox``; ``wake`` tells the dispatcher there is work now."""

    class Deliveries(Controller):
        path = "/api/deliveries"
        tags = ["deliveries"]  # noqa: RUF012 -- Litestar's own attribute

        @get("/", summary="List deliveries, newest first", responses={401: UNAUTHORIZED})
        async def list_deliveries(
            self,
            wanted: Annotated[DeliveryState | None, QueryParameter(name="state")] = None,  # `state` is reserved
            job_id: JobIdFilter = None,
            limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
            cursor: Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page")] = None,
        ) -> DeliveryPage:
            if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= _MAX_CURSOR_DIGITS):
                raise ValidationException("Invalid cursor: pass back the `next_cursor` of a previous page")
            return await outbox.list_deliveries(
                state=wanted, job_id=job_id, limit=limit, cursor=int(cursor) if cursor else None
            )

        @post(
            "/{delivery_id:int}/replay",
            status_code=200,
            summary="Deliver one event again, with its event id",
            responses={
                401: UNAUTHORIZED,
                404: ResponseSpec(
                    ErrorBody, generate_examples=False, description="No delivery with this id (a number)."
                ),
            },
        )
        async def replay_one(self, delivery_id: Annotated[int, PathParameter(ge=1, le=MAX_EVENT_ID)]) -> DeliveryRecord:
            record = await outbox.replay(delivery_id, datetime.now(UTC))
            if record is None:
                raise NotFoundException(f"No delivery with id {delivery_id}")
            wake()
            return record

        @post(
            "/replay",
            status_code=200,
            summary="Deliver every dead (or delivered) event again",
            responses={401: UNAUTHORIZED},
        )
        async def replay_all(
            self,
            wanted: Annotated[Literal["dead", "delivered"], QueryParameter(name="state")],
            job_id: JobIdFilter = None,
        ) -> Replayed:
            count = await outbox.replay_all(DeliveryState(wanted), job_id, datetime.now(UTC))
            wake()
            return Replayed(replayed=count)

        @post(
            "/enable", status_code=200, summary="Re-enable a sink disabled by a 410 Gone", responses={401: UNAUTHORIZED}
        )
        async def enable(self, sink: FromQuery[str] = "http") -> Enabled:
            if sink not in SINKS:
                raise ValidationException(f"Unknown sink {sink!r}: one of {', '.join(SINKS)}")
            was_disabled = await outbox.enable_sink(sink)
            wake()
            return Enabled(sink=sink, was_disabled=was_disabled)

    return Deliveries
