"""The jobs API: register a job (``POST /api/jobs``), read one, list them with filters, and stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from gateway.http.params import IdFilter, JobIdPath, moment
from gateway.http.responses import UNAUTHORIZED, ErrorBody, error_response, json_response
from gateway.kinds import KINDS, a_job_of_kind, kind_named
from gateway.model import Job, JobPage, JobStats, KindConflict, Status
from gateway.registration import RegisterOutcome, Registration, RegistrationError, decode_registration
from gateway.stores.queries import JobQuery

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from gateway.stores.base import JobStore

__all__ = ("job_routes",)

_REGISTER_RESPONSES = {
    # No generated examples: Litestar cannot render a raw JSON `result` in one.
    201: ResponseSpec(
        Job, generate_examples=False, description="Registered: the job, `pending` until its first webhook."
    ),
    200: ResponseSpec(
        Job,
        generate_examples=False,
        description="Registered before with the same body (nothing changed), or its webhooks came first and "
        "this registration's context was attached to the job they created.",
    ),
    400: ResponseSpec(
        ErrorBody, generate_examples=False, description="Not a valid registration; `detail` names the field path."
    ),
    401: ResponseSpec(ErrorBody, generate_examples=False, description="`GATEWAY_API_TOKEN` is set and was not sent."),
    409: ResponseSpec(
        ErrorBody,
        generate_examples=False,
        description="Registered before with a different body (`detail` names the fields), or the job is "
        "known under another kind (`detail` names its webhook route). Nothing changed.",
    ),
    413: ResponseSpec(ErrorBody, generate_examples=False, description="Body larger than `GATEWAY_MAX_BODY_BYTES`."),
}

_TIME = {"format": "date-time"}


def job_routes(jobs: JobStore, max_body_bytes: int) -> list[HTTPRouteHandler]:
    """The jobs routes over ``jobs`` (the app's guard asks for the token: see :mod:`gateway.http.auth`)."""

    @post(
        "/api/jobs",
        tags=["jobs"],
        summary="Register a job before the backend reports on it",
        responses=_REGISTER_RESPONSES,
        status_code=201,
        request_max_body_size=max_body_bytes,  # Litestar stops reading past it (its default is 10 MB)
    )
    async def register_job(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            body = await request.body()
        except RequestEntityTooLarge:
            return error_response(413, f"Body larger than GATEWAY_MAX_BODY_BYTES ({max_body_bytes} bytes)")
        try:
            registration: Registration = decode_registration(body)
        except RegistrationError as error:
            return error_response(400, str(error))
        try:
            registered = await jobs.register(registration, datetime.now(UTC))
        except KindConflict as conflict:
            return error_response(
                409,
                f"Job {conflict.job_id!r} is {a_job_of_kind(conflict.kind)}: its webhooks go to "
                f"/api/webhooks/{conflict.kind}-completion; register it with kind {conflict.kind!r}",
            )
        if registered.outcome is RegisterOutcome.CONFLICT:
            return error_response(
                409,
                f"Job {registration.job_id!r} is already registered with a different "
                f"{', '.join(registered.differs)}: nothing changed",
            )
        job = await jobs.get(registration.job_id)
        return json_response(job, 201 if registered.outcome is RegisterOutcome.CREATED else 200)

    @get(
        "/api/jobs/stats",
        tags=["jobs"],
        summary="Counts by status and the failure ratio over a window",
        responses={401: UNAUTHORIZED},
    )
    async def job_stats(
        window_seconds: Annotated[
            int, QueryParameter(ge=60, le=7 * 86400, description="The window, ending now (default an hour)")
        ] = 3600,
    ) -> JobStats:
        until = datetime.now(UTC)
        return await jobs.stats(until - timedelta(seconds=window_seconds), until)

    @get(
        "/api/jobs/{job_id:str}",
        tags=["jobs"],
        summary="Read a job with its context and full history",
        responses={
            404: ResponseSpec(ErrorBody, generate_examples=False, description="No job with this id."),
            401: UNAUTHORIZED,
        },
    )
    async def read_job(job_id: JobIdPath) -> Job:
        job = await jobs.get(job_id)
        if job is None:
            raise NotFoundException(f"No job with id {job_id!r}")
        return job

    @get("/api/jobs", tags=["jobs"], summary="List jobs, newest first", responses={401: UNAUTHORIZED})
    async def list_jobs(
        kind: Annotated[str | None, QueryParameter(schema_extra={"enum": [kind.name for kind in KINDS]})] = None,
        status: FromQuery[Status | None] = None,
        user_id: IdFilter = None,
        organization_id: IdFilter = None,
        created_after: Annotated[
            str | None,
            QueryParameter(description="Only jobs created at or after this time (RFC 3339)", schema_extra=_TIME),
        ] = None,
        created_before: Annotated[
            str | None, QueryParameter(description="Only jobs created before this time (RFC 3339)", schema_extra=_TIME)
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(description="`next_cursor` of the previous page", pattern=r"^[0-9]{1,18}$(?!\n)")
        ] = None,
    ) -> JobPage:
        if kind is not None and kind_named(kind) is None:
            raise ValidationException(f"Unknown kind {kind!r}")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise ValidationException("Invalid cursor: pass back the `next_cursor` of a previous page")
        query = JobQuery(
            kind=kind,
            status=status,
            user_id=user_id,
            organization_id=organization_id,
            created_after=moment("created_after", created_after),
            created_before=moment("created_before", created_before),
            cursor=int(cursor) if cursor else None,
            limit=limit,
        )
        return await jobs.list_jobs(query)

    return [register_job, job_stats, read_job, list_jobs]
