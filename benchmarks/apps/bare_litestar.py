"""(B) The framework baseline: a bare Litestar handler taking the image payload as a msgspec Struct."""

from __future__ import annotations

from litestar import Litestar, post

from gateway.payloads import ImagePayload


@post("/api/webhooks/image-completion", status_code=200)
async def receive(data: ImagePayload) -> dict[str, object]:
    return {"received": True, "job_id": data.job_id, "status": data.__struct_config__.tag}


app = Litestar([receive], openapi_config=None, logging_config=None)
