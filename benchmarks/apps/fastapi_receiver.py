"""(E) What a user would write instead: FastAPI + pydantic v2, the secret check, an in-memory dedup dict
and three metrics, persisting nothing."""

from __future__ import annotations

import hmac
import os
import time
from typing import Literal

from fastapi import FastAPI, Header, HTTPException
from prometheus_client import Counter, Histogram
from pydantic import BaseModel

SECRET = os.environ.get("WEBHOOK_SECRET", "bench-secret")


class Image(BaseModel):
    url: str
    format: str | None = None
    dimensions: str | None = None
    size_bytes: int | None = None


class Metadata(BaseModel):
    model_name: str | None = None
    generation_time_seconds: float | None = None


class Data(BaseModel):
    images: list[Image] = []
    metadata: Metadata | None = None


class Payload(BaseModel):
    job_id: str
    status: Literal["pending", "initializing", "generating", "saving", "completed", "failed"]
    timestamp: str
    data: Data | None = None
    error_message: str | None = None


REQUESTS = Counter("receiver_webhooks_total", "Webhooks", ["status", "outcome"])
LATENCY = Histogram("receiver_webhook_seconds", "Latency", ["status"])
GENERATION = Histogram("receiver_generation_seconds", "Generation time", ["model"])
seen: dict[tuple[str, str], float] = {}
app = FastAPI()


@app.post("/api/webhooks/image-completion")
async def receive(payload: Payload, x_webhook_secret: str = Header("")) -> dict[str, object]:
    started = time.perf_counter()
    if not hmac.compare_digest(x_webhook_secret.encode(), SECRET.encode()):
        raise HTTPException(401)
    key = (payload.job_id, payload.status)
    outcome = "duplicate" if key in seen else "applied"
    seen[key] = time.time()
    if payload.data is not None and payload.data.metadata is not None:
        metadata = payload.data.metadata
        if metadata.generation_time_seconds is not None:
            GENERATION.labels(metadata.model_name or "unknown").observe(metadata.generation_time_seconds)
    REQUESTS.labels(payload.status, outcome).inc()
    LATENCY.labels(payload.status).observe(time.perf_counter() - started)
    return {"received": True, "job_id": payload.job_id, "status": payload.status, "outcome": outcome}
