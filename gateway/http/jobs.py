"""The read API: ``GET /api/jobs/{job_id}`` and ``GET /api/jobs``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from litestar import get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.http.responses import ErrorBody
from gateway.kinds import KINDS, kind_named
from gateway.model import Job, JobPage, Status

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from gateway.stores.base import JobStore

__all__ = ("job_routes",)


def job_routes(jobs: JobStore) -> list[HTTPRouteHandler]:
    """The read routes over ``jobs``."""

    @get(
        "/api/jobs/{job_id:str}",
        tags=["jobs"],
        summary="Read a job with its full history",
        responses={404: ResponseSpec(ErrorBody, description="No job with this id.")},
    )
    async def read_job(job_id: FromPath[str]) -> Job:
        job = await jobs.get(job_id)
        if job is None:
            raise NotFoundException(f"No job with id {job_id!r}")
        return job

    @get("/api/jobs", tags=["jobs"], summary="List jobs, newest first")
    async def list_jobs(
        kind: Annotated[str | None, QueryParameter(schema_extra={"enum": [kind.name for kind in KINDS]})] = None,
        status: FromQuery[Status | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(description="`next_cursor` of the previous page", pattern=r"^[0-9]{1,18}$")
        ] = None,
    ) -> JobPage:
        if kind is not None and kind_named(kind) is None:
            raise ValidationException(f"Unknown kind {kind!r}")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise ValidationException("Invalid cursor: pass back the `next_cursor` of a previous page")
        return await jobs.list_jobs(kind=kind, status=status, limit=limit, cursor=int(cursor) if cursor else None)

    return [read_job, list_jobs]
