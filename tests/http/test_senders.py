"""Several senders through the real HTTP stack: identity by credential, kinds, job ownership, budgets that
do not leak between senders, and the ``sender`` label (GATEWAY_SENDERS_FILE)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.http.app import create_app
from tests.conftest import LiveServer, completed_blog, completed_image, progress
from tests.signing import sign
from tests.test_cli import run_gateway

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"

BACKEND_SECRET = "backend-secret-0123456789"
SECOND_SECRET = "second-secret-0123456789"
PARTNER_KEY = bytes(range(32))
PARTNER_OLD_KEY = bytes(range(32, 64))

SENDERS = """
[senders.backend]
format = "native"
secret_env = "BACKEND_SECRET"
rate_limit = "2/minute"
rate_limit_burst = 2

[senders.second]
secret_env = "SECOND_SECRET"

[senders.partner]
kinds = ["blog"]
signing_keys_env = "PARTNER_KEYS"
"""


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def environment(tmp_path: Path, family: str, request: pytest.FixtureRequest, senders: str = SENDERS) -> dict[str, str]:
    path = tmp_path / "senders.toml"
    path.write_text(senders)
    env = {
        "GATEWAY_SENDERS_FILE": str(path),
        "BACKEND_SECRET": BACKEND_SECRET,
        "SECOND_SECRET": SECOND_SECRET,
        "PARTNER_KEYS": f"{whsec(PARTNER_OLD_KEY)} {whsec(PARTNER_KEY)}",
    }
    if family == "embedded":
        return env | {"DATABASE_URL": f"sqlite:///{tmp_path / 'senders.db'}"}
    return env | {
        "DATABASE_URL": request.getfixturevalue("database_url"),
        "REDIS_URL": request.getfixturevalue("redis_url"),
        "GATEWAY_REDIS_KEY_PREFIX": request.getfixturevalue("redis_prefix"),
    }


class Gateway:
    """One app with three senders, its client (no credential of its own) and its metrics."""

    def __init__(self, client: AsyncTestClient[Any], registry: CollectorRegistry) -> None:
        self.client = client
        self.registry = registry

    async def as_secret(self, secret: str, route: str, payload: dict[str, Any]) -> Any:
        return await self.client.post(route, json=payload, headers={"X-Webhook-Secret": secret})

    async def as_partner(self, route: str, payload: dict[str, Any], key: bytes = PARTNER_KEY) -> Any:
        body = json.dumps(payload).encode()
        msg_id, timestamp = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": sign(key, msg_id, timestamp, body),
        }
        return await self.client.post(route, content=body, headers=headers)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture(params=["embedded", "distributed"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    """SQLite + memory, and PostgreSQL + Redis (real servers): ownership and budgets hold on both."""
    settings = Settings.from_env(environment(tmp_path, request.param, request))
    registry = CollectorRegistry()
    async with AsyncTestClient(app=create_app(settings, registry=registry)) as client:
        yield Gateway(client, registry)


async def test_the_credential_that_verifies_names_the_sender(gateway: Gateway) -> None:
    backend = await gateway.as_secret(BACKEND_SECRET, IMAGE, completed_image(job_id="id-backend"))
    second = await gateway.as_secret(SECOND_SECRET, IMAGE, completed_image(job_id="id-second"))
    partner = await gateway.as_partner(BLOG, completed_blog(job_id="id-partner"))
    rotated = await gateway.as_partner(BLOG, completed_blog(job_id="id-partner-old"), key=PARTNER_OLD_KEY)
    assert [r.status_code for r in (backend, second, partner, rotated)] == [200, 200, 200, 200]
    anonymous = await gateway.as_secret("nobody-s-secret-0123456789", IMAGE, completed_image(job_id="id-nobody"))
    assert anonymous.status_code == 401

    requests = "gateway_webhook_requests_total"
    assert gateway.sample(requests, kind="image", outcome="applied", sender="backend") == 1
    assert gateway.sample(requests, kind="image", outcome="applied", sender="second") == 1
    assert gateway.sample(requests, kind="blog", outcome="applied", sender="partner") == 2
    assert gateway.sample(requests, kind="image", outcome="unauthorized", sender="unknown") == 1
    assert gateway.sample("gateway_webhook_auth_failures_total", reason="bad_secret", sender="unknown") == 1
    finished = "gateway_jobs_finished_total"
    assert (
        gateway.sample(finished, kind="image", model="gemini-2.0-flash-exp", result="completed", sender="backend") == 1
    )
    assert (
        gateway.sample(finished, kind="image", model="gemini-2.0-flash-exp", result="completed", sender="second") == 1
    )
    text = (await gateway.client.get("/metrics")).text
    assert 'sender="default"' not in text  # the file's closed set, plus unknown


async def test_a_kind_the_sender_may_not_post_is_403_naming_it_and_records_nothing(gateway: Gateway) -> None:
    refused = await gateway.as_partner(IMAGE, completed_image(job_id="not-for-partner"))
    assert refused.status_code == 403
    assert "'partner' may not post image jobs" in refused.json()["detail"]
    assert (await gateway.client.get("/api/jobs/not-for-partner")).status_code == 404
    outcome = {"kind": "image", "outcome": "unauthorized", "sender": "partner"}
    assert gateway.sample("gateway_webhook_requests_total", **outcome) == 1


async def test_a_job_belongs_to_the_sender_that_first_posted_it(gateway: Gateway) -> None:
    first = await gateway.as_secret(BACKEND_SECRET, IMAGE, progress("generating", job_id="owned-1"))
    assert first.status_code == 200
    for payload in (completed_image(job_id="owned-1"), progress("generating", job_id="owned-1")):
        stolen = await gateway.as_secret(SECOND_SECRET, IMAGE, payload)  # a new event, then an exact copy
        assert stolen.status_code == 409, stolen.text
        assert "Job 'owned-1' belongs to another sender" in stolen.json()["detail"]
        assert "Nothing changed" in stolen.json()["detail"]
    job = await gateway.job("owned-1")
    assert job["status"] == "generating"
    assert len(job["history"]) == 1
    assert (await gateway.as_secret(BACKEND_SECRET, IMAGE, completed_image(job_id="owned-1"))).status_code == 200
    assert (await gateway.job("owned-1"))["status"] == "completed"
    conflict = {"kind": "image", "outcome": "conflict", "sender": "second"}
    assert gateway.sample("gateway_webhook_requests_total", **conflict) == 2


async def test_another_senders_job_is_refused_without_telling_its_kind_or_naming_it(gateway: Gateway) -> None:
    """The ownership refusal comes before the kind's, so a sender learns neither another sender's job's
    kind nor, through a reused webhook-id, another sender's job id."""
    assert (
        await gateway.as_secret(BACKEND_SECRET, IMAGE, progress("generating", job_id="hidden-1"))
    ).status_code == 200
    refused = await gateway.as_partner(BLOG, completed_blog(job_id="hidden-1"))
    assert refused.status_code == 409, refused.text
    assert "belongs to another sender" in refused.json()["detail"]
    assert "image" not in refused.json()["detail"]

    first = await gateway.client.post(
        IMAGE,
        json=progress("generating", job_id="hidden-2"),
        headers={"X-Webhook-Secret": BACKEND_SECRET, "webhook-id": "shared-id-1"},
    )
    assert first.status_code == 200, first.text
    reused = await gateway.client.post(
        IMAGE,
        json=progress("generating", job_id="mine-2"),
        headers={"X-Webhook-Secret": SECOND_SECRET, "webhook-id": "shared-id-1"},
    )
    assert reused.status_code == 409, reused.text
    assert "already recorded for another job" in reused.json()["detail"]
    assert "hidden-2" not in reused.json()["detail"]


async def test_a_registered_job_belongs_to_the_first_sender_that_posts_for_it(gateway: Gateway) -> None:
    registered = await gateway.client.post("/api/jobs", json={"job_id": "reg-1", "kind": "image", "user_id": "user-1"})
    assert registered.status_code in (200, 201), registered.text
    assert (await gateway.as_secret(SECOND_SECRET, IMAGE, progress("initializing", job_id="reg-1"))).status_code == 200
    refused = await gateway.as_secret(BACKEND_SECRET, IMAGE, completed_image(job_id="reg-1"))
    assert refused.status_code == 409
    assert "'reg-1'" in refused.json()["detail"]
    assert (await gateway.job("reg-1"))["status"] == "initializing"
    assert (await gateway.as_secret(SECOND_SECRET, IMAGE, completed_image(job_id="reg-1"))).status_code == 200


async def test_a_sender_exhausting_its_budget_never_throttles_another(gateway: Gateway) -> None:
    answers = [await gateway.as_secret(BACKEND_SECRET, IMAGE, completed_image(job_id=f"budget-{n}")) for n in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    limited = answers[2]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Policy"] == '"sender:backend";q=2;w=60'
    assert limited.headers["RateLimit"].startswith('"sender:backend";r=0;t=')
    assert "sender 'backend'" in limited.json()["detail"]
    assert answers[1].headers["RateLimit"].startswith('"sender:backend";r=0;')
    assert (await gateway.client.get("/api/jobs/budget-2")).status_code == 404
    for n in range(5):  # the other senders have no budget of their own, and the backend's is not theirs
        assert (await gateway.as_secret(SECOND_SECRET, IMAGE, completed_image(job_id=f"other-{n}"))).status_code == 200
    assert (await gateway.as_partner(BLOG, completed_blog(job_id="other-blog"))).status_code == 200
    decisions = "gateway_rate_limit_decisions_total"
    assert gateway.sample(decisions, result="allowed", sender="backend") == 2
    assert gateway.sample(decisions, result="limited", sender="backend") == 1
    assert gateway.sample(decisions, result="allowed", sender="second") == 5
    assert gateway.sample(decisions, result="limited", sender="second") == 0
    assert gateway.sample("gateway_webhook_requests_total", kind="image", outcome="rate_limited", sender="backend") == 1


async def test_the_address_limit_still_comes_first_for_unidentified_traffic(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = environment(tmp_path, "embedded", request) | {"GATEWAY_RATE_LIMIT": "3/minute"}
    registry = CollectorRegistry()
    async with AsyncTestClient(app=create_app(Settings.from_env(env), registry=registry)) as client:
        gateway = Gateway(client, registry)
        guesses = [await gateway.as_secret(f"guess-{n:020d}", IMAGE, completed_image()) for n in range(3)]
        assert [guess.status_code for guess in guesses] == [401, 401, 401]
        blocked = await gateway.as_secret(SECOND_SECRET, IMAGE, completed_image(job_id="after-guesses"))
        assert blocked.status_code == 429
        assert blocked.headers["RateLimit-Policy"] == '"sender";q=3;w=60'
    assert gateway.sample("gateway_rate_limit_decisions_total", result="allowed", sender="unknown") == 3
    assert gateway.sample("gateway_rate_limit_decisions_total", result="limited", sender="unknown") == 1


async def test_a_webhook_variable_no_sender_names_is_ignored_with_one_warning(
    tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    env = environment(tmp_path, "embedded", request) | {"WEBHOOK_SECRET": "old-shared-secret-0123456789"}
    with caplog.at_level(logging.WARNING, logger="gateway"):
        async with AsyncTestClient(app=create_app(Settings.from_env(env))) as client:
            ignored = await client.post(
                IMAGE, json=completed_image(), headers={"X-Webhook-Secret": "old-shared-secret-0123456789"}
            )
    assert ignored.status_code == 401
    warnings = [record.getMessage() for record in caplog.records if "WEBHOOK_SECRET" in record.getMessage()]
    assert len(warnings) == 1
    assert "no sender of GATEWAY_SENDERS_FILE names it" in warnings[0]


def test_gateway_send_posts_as_the_first_sender_of_the_file(tmp_path: Path, stopping: list[LiveServer]) -> None:
    """A real ``gateway serve`` with the file, and ``gateway send`` reading the same file: the first sender's
    credentials, and its name in the report."""
    path = tmp_path / "senders.toml"
    path.write_text(SENDERS)
    env = {
        "GATEWAY_SENDERS_FILE": str(path),
        "BACKEND_SECRET": BACKEND_SECRET,
        "SECOND_SECRET": SECOND_SECRET,
        "PARTNER_KEYS": whsec(PARTNER_KEY),
    }
    server = LiveServer(tmp_path, env)
    stopping.append(server)
    result = run_gateway(tmp_path, "send", "--url", server.url, "--json", "--job-id", "sent-1", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["authentication"] == "X-Webhook-Secret, as sender 'backend' of GATEWAY_SENDERS_FILE"
    assert [answer["outcome"] for answer in report["requests"]] == ["applied"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'gateway_webhook_requests_total{kind="image",outcome="applied",sender="backend"} 1.0' in metrics


async def test_two_replicas_never_both_claim_a_job(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two gateways on one PostgreSQL and Redis, each receiving a different sender's first event for the same
    jobs at the same moment: every job has exactly one owner, and the other sender got a 409."""
    unlimited = SENDERS.replace('rate_limit = "2/minute"\nrate_limit_burst = 2\n', "")
    assert "rate_limit" not in unlimited
    settings = Settings.from_env(environment(tmp_path, "distributed", request, unlimited))
    first_app, second_app = create_app(settings, registry=CollectorRegistry()), create_app(settings)
    async with AsyncTestClient(app=first_app) as first, AsyncTestClient(app=second_app) as second:
        one, other = Gateway(first, CollectorRegistry()), Gateway(second, CollectorRegistry())
        jobs = [f"race-{n}" for n in range(20)]
        answers = await asyncio.gather(
            *(
                call
                for job_id in jobs
                for call in (
                    one.as_secret(BACKEND_SECRET, IMAGE, progress("generating", job_id=job_id)),
                    other.as_secret(SECOND_SECRET, IMAGE, progress("initializing", job_id=job_id)),
                )
            )
        )
        for number, job_id in enumerate(jobs):
            backend, second_sender = answers[2 * number], answers[2 * number + 1]
            assert sorted((backend.status_code, second_sender.status_code)) == [200, 409], job_id
            assert len((await one.job(job_id))["history"]) == 1
            winner = BACKEND_SECRET if backend.status_code == 200 else SECOND_SECRET
            loser = SECOND_SECRET if winner == BACKEND_SECRET else BACKEND_SECRET
            assert (await other.as_secret(winner, IMAGE, completed_image(job_id=job_id))).status_code == 200
            assert (await one.as_secret(loser, IMAGE, completed_image(job_id=job_id))).status_code == 409


async def test_the_log_line_names_the_sender(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.webhook"):
        await gateway.as_partner(BLOG, completed_blog(job_id="logged-1"))
        await gateway.as_secret("wrong-secret-0123456789", BLOG, completed_blog(job_id="logged-2"))
    lines = [record for record in caplog.records if record.name == "gateway.webhook"]
    assert [(getattr(line, "job_id", None), getattr(line, "sender", None)) for line in lines] == [
        ("logged-1", "partner"),
        (None, "unknown"),
    ]


async def test_in_development_a_sender_without_credential_takes_what_no_credential_verifies(
    tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    text = SENDERS + '\n[senders.local]\nkinds = ["image"]\n'
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        app = create_app(Settings.from_env(environment(tmp_path, "embedded", request, text)), registry=registry)
        async with AsyncTestClient(app=app) as client:
            gateway = Gateway(client, registry)
            anonymous = await client.post(IMAGE, json=completed_image(job_id="local-1"))
            backend = await gateway.as_secret(SECOND_SECRET, IMAGE, completed_image(job_id="local-2"))
            blog = await client.post(BLOG, json=completed_blog(job_id="local-3"))
    assert (anonymous.status_code, backend.status_code, blog.status_code) == (200, 200, 403)
    assert gateway.sample("gateway_webhook_requests_total", kind="image", outcome="applied", sender="local") == 1
    assert gateway.sample("gateway_webhook_requests_total", kind="image", outcome="applied", sender="second") == 1
    assert any("sender 'local' of GATEWAY_SENDERS_FILE has no credential" in r.getMessage() for r in caplog.records)
