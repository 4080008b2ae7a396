"""AI providers as senders, through the real HTTP stack: Replicate, OpenAI and fal callbacks signed as each
provider signs them, each one's lifecycle to completion, failure and cancellation, a JWK Set served locally,
rotated and taken down, a native sender's ``v1a`` signatures, and providers that cannot post as one another.

Signing as the providers do (their docs are cited in gateway/providers/):
- Replicate and OpenAI: Standard Webhooks ``v1`` under a ``whsec_`` secret, by the ``standardwebhooks``
  library (tests/signing.py);
- fal: ed25519 over ``request_id\\nuser_id\\ntimestamp\\nsha256(body).hex()`` in ``X-Fal-Webhook-*`` headers,
  by the ``cryptography`` library, under keys published as a JWK Set
  (https://docs.fal.ai/model-apis/model-endpoints/webhooks).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.http.app import create_app
from gateway.jwks import KeySet
from gateway.signatures import Ed25519PrivateKey
from tests.conftest import completed_image
from tests.jwks_server import JwksServer
from tests.providers.samples import FAL_ERROR as FAL_ERROR_SAMPLE
from tests.providers.samples import FAL_OK
from tests.signing import sign

REPLICATE_KEY = bytes(range(1, 33))
OPENAI_KEY = bytes(range(33, 65))
BACKEND_SECRET = "backend-secret-0123456789"
IMAGE = "/api/webhooks/image-completion"

SENDERS = """
[senders.backend]
secret_env = "BACKEND_SECRET"

[senders.replicate]
format = "replicate"
kind = "image"
signing_keys_env = "REPLICATE_WEBHOOK_SECRET"
rate_limit = "4/minute"
rate_limit_burst = 4

[senders.openai]
format = "openai"
kind = "blog"
signing_keys_env = "OPENAI_WEBHOOK_SECRET"

[senders.fal]
format = "fal"
kind = "image"
jwks_url = "{jwks_url}"

[senders.signer]
kinds = ["image"]
public_keys_env = "SIGNER_PUBLIC_KEYS"
"""


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def whpk(key: Ed25519PrivateKey) -> str:
    return "whpk_" + base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


class Gateway:
    """One app with a native sender, three providers and a v1a signer; its client has no credential."""

    def __init__(self, client: AsyncTestClient[Any], registry: CollectorRegistry, fal: Ed25519PrivateKey) -> None:
        self.client = client
        self.registry = registry
        self.fal_key = fal

    def key_set(self, sender: str) -> KeySet:
        key_sets: dict[str, KeySet] = self.client.app.state["key_sets"]
        return key_sets[sender]

    async def standard(self, route: str, payload: dict[str, Any], key: bytes) -> Any:
        """A Standard Webhooks ``v1`` call, as Replicate and OpenAI send theirs."""
        body = json.dumps(payload).encode()
        msg_id, timestamp = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": sign(key, msg_id, timestamp, body),
        }
        return await self.client.post(route, content=body, headers=headers)

    async def replicate(self, payload: dict[str, Any], route: str = "/api/senders/replicate/webhooks") -> Any:
        return await self.standard(route, payload, REPLICATE_KEY)

    async def openai(self, payload: dict[str, Any], route: str = "/api/senders/openai/webhooks") -> Any:
        return await self.standard(route, payload, OPENAI_KEY)

    async def fal(
        self,
        payload: dict[str, Any],
        key: Ed25519PrivateKey | None = None,
        route: str = "/api/senders/fal/webhooks",
        timestamp: int | None = None,
    ) -> Any:
        body = json.dumps(payload).encode()
        request_id, user_id = payload["request_id"], "user-1"
        moment = str(timestamp or int(time.time()))
        message = "\n".join([request_id, user_id, moment, hashlib.sha256(body).hexdigest()]).encode()
        headers = {
            "content-type": "application/json",
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": user_id,
            "x-fal-webhook-timestamp": moment,
            "x-fal-webhook-signature": (key or self.fal_key).sign(message).hex(),
        }
        return await self.client.post(route, content=body, headers=headers)

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.up()
    yield server
    if server._server is not None:
        await server.down()


SIGNER = Ed25519PrivateKey.generate()


def _settings(tmp_path: Path, jwks_url: str, stores: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "senders.toml"
    path.write_text(SENDERS.format(jwks_url=jwks_url))
    return Settings.from_env(
        {
            "GATEWAY_SENDERS_FILE": str(path),
            "BACKEND_SECRET": BACKEND_SECRET,
            "REPLICATE_WEBHOOK_SECRET": whsec(REPLICATE_KEY),
            "OPENAI_WEBHOOK_SECRET": whsec(OPENAI_KEY),
            "SIGNER_PUBLIC_KEYS": whpk(SIGNER),
            **(stores or {"DATABASE_URL": f"sqlite:///{tmp_path / 'providers.db'}"}),
        }
    )


@pytest.fixture(params=["embedded", "distributed"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path, jwks: JwksServer) -> AsyncIterator[Gateway]:
    """SQLite + memory, and PostgreSQL + Redis (real servers): the providers' jobs and budgets hold on both."""
    stores = None
    if request.param == "distributed":
        stores = {
            "DATABASE_URL": request.getfixturevalue("database_url"),
            "REDIS_URL": request.getfixturevalue("redis_url"),
            "GATEWAY_REDIS_KEY_PREFIX": request.getfixturevalue("redis_prefix"),
        }
    fal = Ed25519PrivateKey.generate()
    jwks.serve(fal)
    registry = CollectorRegistry()
    async with AsyncTestClient(app=create_app(_settings(tmp_path, jwks.url, stores), registry=registry)) as client:
        yield Gateway(client, registry, fal)


# Replicate: https://replicate.com/docs/topics/webhooks/receive-webhook, .../topics/predictions


def prediction(prediction_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": prediction_id,
        "model": "black-forest-labs/flux-schnell",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": {"prompt": "a studio photo of a golden retriever wearing sunglasses"},
        "logs": "",
        "output": None,
        "error": None,
        "status": status,
        "created_at": "2026-07-14T09:12:03.221000Z",
        "started_at": None,
        "completed_at": None,
        "metrics": {},
        "urls": {
            "get": f"https://api.replicate.com/v1/predictions/{prediction_id}",
            "cancel": f"https://api.replicate.com/v1/predictions/{prediction_id}/cancel",
        },
        **fields,
    }


STARTED = {"started_at": "2026-07-14T09:12:04.000000Z"}
ENDED = {**STARTED, "completed_at": "2026-07-14T09:12:06.500000Z", "metrics": {"predict_time": 2.1}}


async def test_a_replicate_prediction_becomes_an_image_job_from_start_to_images(gateway: Gateway) -> None:
    output = ["https://replicate.delivery/xezq/out-0.webp", "https://replicate.delivery/xezq/out-1.webp"]
    answers = [
        await gateway.replicate(prediction("qz7mfxlkw3vdpygt1o8hbnsuae", "starting")),
        await gateway.replicate(prediction("qz7mfxlkw3vdpygt1o8hbnsuae", "processing", **STARTED)),
        await gateway.replicate(prediction("qz7mfxlkw3vdpygt1o8hbnsuae", "processing", **STARTED, logs="step 2")),
        await gateway.replicate(prediction("qz7mfxlkw3vdpygt1o8hbnsuae", "succeeded", **ENDED, output=output)),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200], [a.text for a in answers]
    assert [a.json()["outcome"] for a in answers] == ["applied", "applied", "duplicate", "applied"]
    job = await gateway.job("qz7mfxlkw3vdpygt1o8hbnsuae")
    assert (job["kind"], job["status"]) == ("image", "completed")
    assert job["result"] == {"images": [{"url": url} for url in output]}
    assert job["metadata"] == {"model_name": "black-forest-labs/flux-schnell", "generation_time_seconds": 2.1}
    assert [entry["status"] for entry in job["history"]] == ["initializing", "generating", "completed"]
    assert job["history"][-1]["timestamp"].startswith("2026-07-14T09:12:06.5")

    finished = {"kind": "image", "model": "black-forest-labs/flux-schnell", "result": "completed"}
    assert gateway.sample("gateway_jobs_finished_total", **finished, sender="replicate") == 1
    labels = {"kind": "image", "model": "black-forest-labs/flux-schnell"}
    assert gateway.sample("gateway_generation_duration_seconds_count", **labels) == 1
    assert gateway.sample("gateway_images_total", model="black-forest-labs/flux-schnell") == 2


async def test_a_replicate_prediction_that_fails_or_is_canceled_ends_so(gateway: Gateway) -> None:
    await gateway.replicate(prediction("failingprediction0001", "starting"))
    failed = await gateway.replicate(
        prediction("failingprediction0001", "failed", **ENDED, error="CUDA error: out of memory")
    )
    canceled = await gateway.replicate(prediction("canceledprediction001", "canceled", **ENDED))
    assert [failed.status_code, canceled.status_code] == [200, 200]
    job = await gateway.job("failingprediction0001")
    assert (job["status"], job["error_message"]) == ("failed", "CUDA error: out of memory")
    assert (await gateway.job("canceledprediction001"))["status"] == "canceled"
    finished = "gateway_jobs_finished_total"
    labels = {"kind": "image", "model": "black-forest-labs/flux-schnell", "sender": "replicate"}
    assert gateway.sample(finished, **labels, result="failed") == 1
    assert gateway.sample(finished, **labels, result="canceled") == 1


async def test_a_status_a_provider_adds_later_is_acknowledged_and_recorded_nowhere(gateway: Gateway) -> None:
    answer = await gateway.replicate(prediction("futurestatus00000001", "paused"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "ignored"
    assert "'paused'" in answer.json()["detail"]
    assert (await gateway.client.get("/api/jobs/futurestatus00000001")).status_code == 404
    incoming = {"id": "evt_1", "type": "realtime.call.incoming", "created_at": 1719168000, "data": {"call_id": "c"}}
    assert (await gateway.openai(incoming)).json()["outcome"] == "ignored"
    requests = "gateway_webhook_requests_total"
    assert gateway.sample(requests, kind="image", outcome="ignored", sender="replicate") == 1
    assert gateway.sample(requests, kind="blog", outcome="ignored", sender="openai") == 1


# OpenAI: https://developers.openai.com/api/docs/api-reference/webhook-events


def openai_event(event_type: str, object_id: str, created_at: int = 1719168000) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created_at": created_at,
        "data": {"id": object_id},
    }


async def test_openai_events_complete_fail_and_cancel_their_jobs_without_results(gateway: Gateway) -> None:
    answers = [
        await gateway.openai(openai_event("response.completed", "resp_abc123")),
        await gateway.openai(openai_event("batch.failed", "batch_abc123")),
        await gateway.openai(openai_event("response.incomplete", "resp_def456")),
        await gateway.openai(openai_event("fine_tuning.job.cancelled", "ftjob_abc123")),
        await gateway.openai(openai_event("eval.run.canceled", "evalrun_abc123")),
    ]
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    completed = await gateway.job("resp_abc123")
    assert (completed["kind"], completed["status"], completed["result"]) == ("blog", "completed", None)
    assert completed["history"][0]["timestamp"] == "2024-06-23T18:40:00Z"
    batch = await gateway.job("batch_abc123")
    assert batch["status"] == "failed"
    assert "batch.failed" in batch["error_message"]
    incomplete = await gateway.job("resp_def456")
    assert incomplete["status"] == "failed"
    assert "ended incomplete" in incomplete["error_message"]
    assert (await gateway.job("ftjob_abc123"))["status"] == "canceled"
    assert (await gateway.job("evalrun_abc123"))["status"] == "canceled"


# fal: https://docs.fal.ai/model-apis/model-endpoints/webhooks

# A second job, so the error does not land on the completed one.
FAL_ERROR = {**FAL_ERROR_SAMPLE, "request_id": "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d"}


async def test_fal_callbacks_verify_with_its_published_keys_and_complete_or_fail_jobs(gateway: Gateway) -> None:
    ok, error = await gateway.fal(FAL_OK), await gateway.fal(FAL_ERROR)
    assert [ok.status_code, error.status_code] == [200, 200], [ok.text, error.text]
    job = await gateway.job(FAL_OK["request_id"])
    assert (job["kind"], job["status"]) == ("image", "completed")
    assert job["result"] == {
        "images": [
            {"url": "https://url.to/image.png", "format": "png", "dimensions": "1024x1024", "size_bytes": 1824075}
        ]
    }
    failed = await gateway.job(FAL_ERROR["request_id"])
    assert (failed["status"], failed["error_message"]) == ("failed", "Invalid status code: 422")

    forged = await gateway.fal({**FAL_OK, "request_id": "forged-0001"}, key=Ed25519PrivateKey.generate())
    assert forged.status_code == 401
    stale = await gateway.fal({**FAL_OK, "request_id": "replayed-0001"}, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 401
    assert gateway.sample("gateway_webhook_auth_failures_total", reason="expired", sender="unknown") == 1


async def test_a_fal_key_rotated_in_is_fetched_on_demand(gateway: Gateway, jwks: JwksServer) -> None:
    old, new = gateway.fal_key, Ed25519PrivateKey.generate()
    jwks.serve(old, new)  # fal publishes its next key, then signs with it
    rotated = {**FAL_OK, "request_id": "rotated-0001"}
    assert (await gateway.fal(rotated, key=new)).status_code == 401  # fetched under a minute ago: not yet
    gateway.key_set("fal").min_refetch_seconds = 0  # as a minute later
    fetches = jwks.requests
    assert (await gateway.fal(rotated, key=new)).status_code == 200
    assert jwks.requests == fetches + 1
    assert (await gateway.fal({**FAL_OK, "request_id": "old-key-0001"}, key=old)).status_code == 200


async def test_fal_keeps_verifying_with_the_last_good_set_while_its_jwks_is_down(
    gateway: Gateway, jwks: JwksServer
) -> None:
    await jwks.down()
    key_set = gateway.key_set("fal")
    key_set.min_refetch_seconds = 0
    assert not await key_set.refresh()  # the schedule's next fetch fails
    assert (await gateway.fal({**FAL_OK, "request_id": "while-down-0001"})).status_code == 200
    assert gateway.sample("gateway_jwks_state", sender="fal", state="stale") == 1
    assert gateway.sample("gateway_jwks_state", sender="fal", state="fresh") == 0


async def test_a_jwks_down_at_start_up_is_a_503_for_its_sender_alone(tmp_path: Path, jwks: JwksServer) -> None:
    fal = Ed25519PrivateKey.generate()
    jwks.serve(fal)
    await jwks.down()
    registry = CollectorRegistry()
    async with AsyncTestClient(app=create_app(_settings(tmp_path, jwks.url), registry=registry)) as client:
        gateway = Gateway(client, registry, fal)  # the gateway started without the set
        refused = await gateway.fal(FAL_OK)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert gateway.sample("gateway_jwks_state", sender="fal", state="unavailable") == 1
        others = await gateway.replicate(prediction("unaffected0000000001", "starting"))
        assert others.status_code == 200

        await jwks.up()
        gateway.key_set("fal").min_refetch_seconds = 0  # fal's retry, a minute later
        assert (await gateway.fal(FAL_OK)).status_code == 200
        assert gateway.sample("gateway_jwks_state", sender="fal", state="fresh") == 1


# Senders apart


async def test_a_provider_cannot_post_as_another_sender(gateway: Gateway) -> None:
    start = prediction("crossposted000000001", "starting")
    assert (await gateway.replicate(start, route="/api/senders/openai/webhooks")).status_code == 401
    assert (await gateway.replicate(start, route="/api/senders/fal/webhooks")).status_code == 401
    assert (await gateway.replicate(completed_image(job_id="crossposted000000001"), route=IMAGE)).status_code == 401
    native = await gateway.client.post(
        "/api/senders/replicate/webhooks", json=start, headers={"X-Webhook-Secret": BACKEND_SECRET}
    )
    assert native.status_code == 401
    assert (await gateway.client.get("/api/jobs/crossposted000000001")).status_code == 404


@pytest.mark.parametrize("name", ["nobody", "backend", "signer"])
async def test_the_sender_route_is_404_for_an_unknown_or_native_sender(gateway: Gateway, name: str) -> None:
    answer = await gateway.client.post(f"/api/senders/{name}/webhooks", json={})
    assert answer.status_code == 404
    assert "/api/senders/replicate/webhooks" in answer.json()["detail"]


async def test_a_providers_budget_is_its_own(gateway: Gateway) -> None:
    answers = [await gateway.replicate(prediction(f"budget{n:014d}", "starting")) for n in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    assert "sender:replicate" in answers[-1].headers["ratelimit-policy"]
    assert (await gateway.openai(openai_event("batch.completed", "batch_budget"))).status_code == 200
    fal = await gateway.fal({**FAL_OK, "request_id": "budget-fal-0001"})
    assert fal.status_code == 200


async def test_a_native_sender_signs_v1a_with_its_whpk_keys(gateway: Gateway) -> None:
    body = json.dumps(completed_image(job_id="v1a-job-0001")).encode()
    msg_id, timestamp = "msg_v1a_1", str(int(time.time()))
    signature = SIGNER.sign(f"{msg_id}.{timestamp}.".encode() + body)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1a," + base64.b64encode(signature).decode(),
    }
    assert (await gateway.client.post(IMAGE, content=body, headers=headers)).status_code == 200
    requests = "gateway_webhook_requests_total"
    assert gateway.sample(requests, kind="image", outcome="applied", sender="signer") == 1
    forged = {**headers, "webhook-id": "msg_v1a_2"}
    assert (await gateway.client.post(IMAGE, content=body, headers=forged)).status_code == 401


NATIVE_JWKS = """
[senders.backend]
secret_env = "BACKEND_SECRET"

[senders.keyed]
kinds = ["image"]
jwks_url = "{jwks_url}"
"""


def _keyed_app(tmp_path: Path, jwks: JwksServer) -> tuple[Settings, CollectorRegistry]:
    path = tmp_path / "keyed.toml"
    path.write_text(NATIVE_JWKS.format(jwks_url=jwks.url))
    env = {
        "GATEWAY_SENDERS_FILE": str(path),
        "BACKEND_SECRET": BACKEND_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'keyed.db'}",
    }
    return Settings.from_env(env), CollectorRegistry()


def _v1a(key: Ed25519PrivateKey, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    msg_id, timestamp = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    signature = base64.b64encode(key.sign(f"{msg_id}.{timestamp}.".encode() + body)).decode()
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1a,{signature}",
    }
    return body, headers


async def test_a_native_senders_v1a_signatures_verify_with_its_jwks(tmp_path: Path, jwks: JwksServer) -> None:
    key = Ed25519PrivateKey.generate()
    jwks.serve(key)
    settings, registry = _keyed_app(tmp_path, jwks)
    async with AsyncTestClient(app=create_app(settings, registry=registry)) as client:
        body, headers = _v1a(key, completed_image(job_id="keyed-0001"))
        assert (await client.post(IMAGE, content=body, headers=headers)).status_code == 200
        labels = {"kind": "image", "outcome": "applied", "sender": "keyed"}
        assert registry.get_sample_value("gateway_webhook_requests_total", labels) == 1


async def test_a_native_senders_jwks_down_at_start_up_is_a_503_for_it_alone(tmp_path: Path, jwks: JwksServer) -> None:
    key = Ed25519PrivateKey.generate()
    jwks.serve(key)
    await jwks.down()
    settings, registry = _keyed_app(tmp_path, jwks)
    async with AsyncTestClient(app=create_app(settings, registry=registry)) as client:
        body, headers = _v1a(key, completed_image(job_id="keyed-0002"))
        refused = await client.post(IMAGE, content=body, headers=headers)
        assert refused.status_code == 503
        assert "'keyed'" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        backend = await client.post(
            IMAGE, json=completed_image(job_id="backend-0002"), headers={"X-Webhook-Secret": BACKEND_SECRET}
        )
        assert backend.status_code == 200


async def test_the_openapi_document_lists_each_provider_senders_route(gateway: Gateway) -> None:
    document = (await gateway.client.get("/schema/openapi.json")).json()
    for name, header in (
        ("replicate", "webhook-signature"),
        ("openai", "webhook-id"),
        ("fal", "X-Fal-Webhook-Signature"),
    ):
        operation = document["paths"][f"/api/senders/{name}/webhooks"]["post"]
        assert header in {parameter["name"] for parameter in operation["parameters"]}
        assert "ignored" in operation["description"]
    assert "/api/senders/backend/webhooks" not in document["paths"]
