"""Authentication: shared secret and Standard Webhooks signatures made by an independent implementation."""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook

from gateway.answers import WebhookRefused
from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.ingest.authenticate import Authenticator
from gateway.ingest.pipeline import Pipeline
from gateway.kinds import kind_named
from gateway.stores.memory import MemoryIdempotencyStore
from gateway.telemetry.metrics import Metrics, ModelLabels
from gateway.telemetry.recorder import Telemetry
from tests.backends import sqlite_job_store
from tests.conftest import JOB_ID, SECRET, completed_image

IMAGE = "/api/webhooks/image-completion"
OLD_KEY = "whsec_" + base64.b64encode(b"old-key-0123456789abcdef").decode()
NEW_KEY = "whsec_" + base64.b64encode(b"new-key-0123456789abcdef").decode()
OTHER_KEY = "whsec_" + base64.b64encode(b"someone-elses-key-012345").decode()


def signed(body: str, key: str, msg_id: str = "msg_1", when: datetime | None = None) -> dict[str, str]:
    when = when or datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(key).sign(msg_id, when, body),
    }


@pytest.fixture
async def signed_client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = Settings.from_env(
        {
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_SIGNING_KEYS": f"{OLD_KEY},{NEW_KEY}",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'auth.db'}",
        }
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


BODY = json.dumps(completed_image())


async def job_exists(client: AsyncTestClient[Any]) -> bool:
    return (await client.get(f"/api/jobs/{JOB_ID}")).status_code == 200


@pytest.mark.parametrize("key", [OLD_KEY, NEW_KEY])
async def test_signature_from_either_rotated_key_is_accepted(signed_client: AsyncTestClient[Any], key: str) -> None:
    response = await signed_client.post(IMAGE, content=BODY, headers=signed(BODY, key))
    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"


async def test_header_with_several_signatures_is_accepted(signed_client: AsyncTestClient[Any]) -> None:
    headers = signed(BODY, NEW_KEY)
    wrong = signed(BODY, OTHER_KEY)["webhook-signature"]
    headers["webhook-signature"] = f"{wrong} v1a,ignoredasymmetric {headers['webhook-signature']}"
    assert (await signed_client.post(IMAGE, content=BODY, headers=headers)).status_code == 200


async def test_shared_secret_is_accepted(signed_client: AsyncTestClient[Any]) -> None:
    response = await signed_client.post(IMAGE, json=completed_image(), headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 200


async def test_tampered_body_is_401(signed_client: AsyncTestClient[Any]) -> None:
    headers = signed(BODY, NEW_KEY)
    tampered = BODY.replace("gemini", "gemino")
    response = await signed_client.post(IMAGE, content=tampered, headers=headers)
    assert response.status_code == 401
    assert not await job_exists(signed_client)


async def test_wrong_key_is_401(signed_client: AsyncTestClient[Any]) -> None:
    response = await signed_client.post(IMAGE, content=BODY, headers=signed(BODY, OTHER_KEY))
    assert response.status_code == 401


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
async def test_timestamp_outside_tolerance_is_401(signed_client: AsyncTestClient[Any], offset: timedelta) -> None:
    headers = signed(BODY, NEW_KEY, when=datetime.now(UTC) + offset)
    response = await signed_client.post(IMAGE, content=BODY, headers=headers)
    assert response.status_code == 401
    assert not await job_exists(signed_client)


async def test_timestamp_inside_tolerance_is_accepted(signed_client: AsyncTestClient[Any]) -> None:
    headers = signed(BODY, NEW_KEY, when=datetime.now(UTC) - timedelta(minutes=4))
    assert (await signed_client.post(IMAGE, content=BODY, headers=headers)).status_code == 200


@pytest.mark.parametrize(
    "mangle",
    [
        {"webhook-signature": "v1"},
        {"webhook-signature": "v1,"},
        {"webhook-signature": "v1,!!!not-base64!!!"},
        {"webhook-signature": "nocomma"},
        {"webhook-signature": ""},
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": ""},
        {"webhook-id": ""},
    ],
)
async def test_malformed_signature_headers_are_401_not_500(
    signed_client: AsyncTestClient[Any], mangle: dict[str, str]
) -> None:
    headers = signed(BODY, NEW_KEY) | mangle
    response = await signed_client.post(IMAGE, content=BODY, headers=headers)
    assert response.status_code == 401


async def test_wrong_secret_is_401_with_a_body_that_does_not_say_why(signed_client: AsyncTestClient[Any]) -> None:
    response = await signed_client.post(IMAGE, json=completed_image(), headers={"X-Webhook-Secret": "guess"})
    assert response.status_code == 401
    missing = await signed_client.post(IMAGE, json=completed_image())
    assert missing.status_code == 401
    assert response.json() == missing.json()
    assert "guess" not in response.text


async def test_signed_retry_with_a_new_id_is_a_duplicate(signed_client: AsyncTestClient[Any]) -> None:
    first = await signed_client.post(IMAGE, content=BODY, headers=signed(BODY, NEW_KEY, msg_id="msg_a"))
    retry = await signed_client.post(IMAGE, content=BODY, headers=signed(BODY, NEW_KEY, msg_id="msg_b"))
    assert first.json()["outcome"] == "applied"
    assert retry.json()["outcome"] == "duplicate"


async def test_development_without_credentials_accepts_everyone(tmp_path: Path) -> None:
    settings = Settings(database=SqliteDatabase(str(tmp_path / "open.db")))
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.post(IMAGE, json=completed_image())
    assert response.status_code == 200


async def test_secret_with_accents_sent_as_utf8_is_accepted(tmp_path: Path) -> None:
    settings = Settings(webhook_secret="clé-secrète-2025", database=SqliteDatabase(str(tmp_path / "utf8.db")))
    async with AsyncTestClient(app=create_app(settings)) as client:
        good = await client.post(
            IMAGE, json=completed_image(), headers={"X-Webhook-Secret": "clé-secrète-2025".encode()}
        )
        bad = await client.post(IMAGE, json=completed_image(), headers={"X-Webhook-Secret": b"cle-secrete-2025"})
    assert good.status_code == 200
    assert bad.status_code == 401


def _signature_headers(**changed: str) -> dict[str, str]:
    headers = {k.lower(): v for k, v in signed(BODY, OTHER_KEY).items()}
    headers.update(changed)
    return {name: value for name, value in headers.items() if value}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"content-type": "application/json"}, "missing"),
        ({"content-type": "application/json", "x-webhook-secret": "wrong"}, "bad_secret"),
        (_signature_headers(**{"webhook-timestamp": ""}), "malformed"),
        (_signature_headers(**{"webhook-timestamp": "12x"}), "malformed"),
        (_signature_headers(**{"webhook-signature": "v1,not-base64!"}), "malformed"),
        (_signature_headers(**{"webhook-id": ""}), "malformed"),
        (_signature_headers(**{"webhook-timestamp": str(int(datetime.now(UTC).timestamp()) - 3600)}), "expired"),
    ],
    ids=["missing", "wrong-secret", "no-timestamp", "bad-timestamp", "bad-signature-encoding", "no-id", "expired"],
)
async def test_credentials_the_headers_refuse_are_401_before_the_body_is_read(
    tmp_path: Path, headers: dict[str, str], reason: str
) -> None:
    jobs = sqlite_job_store(tmp_path / "early.db")
    await jobs.open()
    registry = CollectorRegistry()
    telemetry = Telemetry(Metrics(registry, ["image", "blog"], ModelLabels()))
    settings = Settings(webhook_secret=SECRET, signing_keys=_keys(OLD_KEY))
    pipeline = Pipeline(settings, jobs, MemoryIdempotencyStore(3600, 100), telemetry)
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"")  # the body was asked for
        yield BODY.encode()

    try:
        with pytest.raises(WebhookRefused) as refused:
            await pipeline.ingest(kind_named("image"), headers, body(), client="127.0.0.1")  # type: ignore[arg-type]
    finally:
        await jobs.close()
    assert (refused.value.status_code, refused.value.detail) == (401, "Missing or invalid webhook credentials")
    assert refused.value.headers == {"Connection": "close"}
    assert read == []
    labels = {"reason": reason, "sender": "unknown"}
    assert registry.get_sample_value("gateway_webhook_auth_failures_total", labels) == 1


async def test_a_right_secret_wins_over_malformed_signature_headers_before_the_body(tmp_path: Path) -> None:
    settings = Settings(webhook_secret=SECRET, signing_keys=_keys(OLD_KEY))
    authenticator = Authenticator(settings.webhook_secret, settings.signing_keys, settings.tolerance_seconds)
    now = datetime.now(UTC).timestamp()
    assert authenticator.verify_headers(_signature_headers(**{"x-webhook-secret": SECRET, "webhook-id": ""}), now) == (
        authenticator.verify({"x-webhook-secret": SECRET}, b"", now)
    )
    # Well-formed, fresh signature headers: only the body can decide.
    assert authenticator.verify_headers(_signature_headers(), now) is None


def _keys(*keys: str) -> tuple[bytes, ...]:
    return Settings.from_env({"WEBHOOK_SIGNING_KEYS": ",".join(keys)}).signing_keys


@pytest.mark.parametrize("given", ["", "x", SECRET[:-1], SECRET, SECRET + "x" * 1000], ids=len)
def test_the_secret_comparison_sees_equal_lengths_whatever_the_secret(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """``hmac.compare_digest`` runs in time that depends on its operands' lengths: comparing the raw
    secret with the header told a prober how long the secret is. Only fixed-size digests are compared."""
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for secret in ("short", SECRET, "a-much-longer-shared-secret-" * 8):
        verdict = Authenticator(secret, (), 300).verify({"x-webhook-secret": given}, b"{}", time.time())
        assert (verdict.failure is None) == (given == secret)
    assert compared == [(32, 32)] * 3
