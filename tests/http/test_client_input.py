"""Client input is a 4xx, never a store outage: ids, times, cursors and payload values are validated at the
edge, on both store families (SQLite + memory, PostgreSQL + Redis). Every refusal here once reached a store
and came back as a 503 with a store error counted, or was accepted when it should not have been."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient, TestClient

from gateway.config import Settings
from gateway.http.app import create_app
from tests.conftest import SECRET, completed_blog, completed_image, progress

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"
_STORE_ERRORS = re.compile(r"^gateway_store_errors_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    """Every test here runs on both store families."""
    return family_settings


def store_errors(metrics_text: str) -> float:
    return sum(float(value) for value in _STORE_ERRORS.findall(metrics_text))


# --- the read API's parameters ----------------------------------------------------------------------------------

REFUSED_READS = [
    ("/api/jobs/abc%0A", {}, {}, "job_id"),
    ("/api/jobs/a%00b", {}, {}, "job_id"),
    ("/api/jobs/a%00b/events", {}, {}, "job_id"),
    ("/api/jobs", {"user_id": "user\x00"}, {}, "user_id"),
    ("/api/jobs", {"organization_id": "org\n"}, {}, "organization_id"),
    ("/api/jobs", {"created_after": "0001-01-01T00:00:00+01:00"}, {}, "created_after"),
    ("/api/jobs", {"created_before": "9999-12-31T23:59:59-01:00"}, {}, "created_before"),
    ("/api/jobs/events", {"after": str(2**64)}, {}, "after"),
    ("/api/jobs/events", {"user_id": "u\x00"}, {}, "user_id"),
    ("/api/jobs/events", {}, {"Last-Event-ID": str(2**63)}, "Last-Event-ID"),
    ("/api/jobs/job-1/events", {"after": str(2**63)}, {}, "after"),
    ("/api/deliveries", {"job_id": "job-1\n"}, {}, "job_id"),
    ("/api/deliveries", {"job_id": "a\x00"}, {}, "job_id"),
]


@pytest.mark.parametrize(("path", "params", "headers", "name"), REFUSED_READS)
async def test_a_value_no_store_can_hold_is_a_400_naming_the_parameter(
    client: AsyncTestClient[Any], path: str, params: dict[str, str], headers: dict[str, str], name: str
) -> None:
    await client.post(IMAGE, json=progress("generating", job_id="job-1"))
    response = await client.get(path, params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert name in response.text
    assert store_errors((await client.get("/metrics")).text) == 0


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_number = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), _text)
_moment = st.one_of(
    st.datetimes(timezones=st.timezones() | st.just(None)).map(lambda moment: moment.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00", "0001-01-01T00:00:00Z"]),
    _text,
)
_id = st.one_of(st.just("job-1"), st.from_regex(r"\Ajob-1[\x00-\x1f\x7f-\x9f]\Z"), _text)
_path_id = _id.filter(lambda job: job not in ("", "events", "stats", ".", "..")).map(lambda job: quote(job, safe=""))
READ_REQUESTS = st.one_of(  # the read API: a path, its query and its headers (finite answers only)
    st.tuples(
        st.just("/api/jobs"),
        st.fixed_dictionaries(
            {},
            optional={
                "user_id": _id,
                "organization_id": _id,
                "created_after": _moment,
                "created_before": _moment,
                "limit": _number,
                "cursor": _number,
                "kind": _text,
                "status": _text,
            },
        ),
        st.just({}),
    ),
    st.tuples(st.just("/api/jobs/stats"), st.fixed_dictionaries({}, optional={"window_seconds": _number}), st.just({})),
    st.tuples(_path_id.map(lambda job: f"/api/jobs/{job}"), st.just({}), st.just({})),
    st.tuples(
        _path_id.map(lambda job: f"/api/jobs/{job}/events"),
        st.fixed_dictionaries({}, optional={"after": _number}),
        st.fixed_dictionaries({}, optional={"Last-Event-ID": st.integers(-(2**70), 2**70).map(str)}),
    ),
    st.tuples(
        st.just("/api/deliveries"),
        st.fixed_dictionaries({}, optional={"job_id": _id, "limit": _number, "cursor": _number, "state": _text}),
        st.just({}),
    ),
)


def test_no_read_api_parameter_makes_a_5xx_or_a_store_error(settings: Settings) -> None:
    """Any value of any read API parameter is answered 2xx/4xx, and no store error is ever counted."""
    with TestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        assert client.post(IMAGE, json=completed_image(job_id="job-1")).status_code == 200

        @settings_for_reads
        @given(read=READ_REQUESTS)
        def check(read: tuple[str, dict[str, str], dict[str, str]]) -> None:
            path, params, headers = read
            if path.endswith("/events"):
                # Only answers that end are read: a finished job's stream with nothing after the resume
                # point (204), a 404 or a 400; an open stream would never end.
                headers = {"Last-Event-ID": str(2**62), **headers}
            response = client.get(path, params=params, headers=headers)
            assert response.status_code < 500, (read, response.text)

        check()
        assert store_errors(client.get("/metrics").text) == 0


settings_for_reads = examples(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- ids match their alphabet exactly ---------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["job-1\n", "job-1\x00", "\njob-1", "job 1", "jöb"])
async def test_a_job_id_outside_its_alphabet_is_refused_everywhere(client: AsyncTestClient[Any], job_id: str) -> None:
    webhook = await client.post(IMAGE, json=progress("generating", job_id=job_id))
    assert webhook.status_code == 400, webhook.text
    assert "$.job_id" in webhook.json()["detail"]
    registration = await client.post("/api/jobs", json={"job_id": job_id, "kind": "image", "user_id": "u"})
    assert registration.status_code == 400
    assert "$.job_id" in registration.json()["detail"]
    assert (await client.get("/api/jobs")).json()["jobs"] == []


@pytest.mark.parametrize("field", ["user_id", "organization_id"])
@pytest.mark.parametrize("value", ["user\x00", "user\n", "user\x85"])
async def test_a_registered_id_with_a_control_character_is_refused(
    client: AsyncTestClient[Any], field: str, value: str
) -> None:
    body = {"job_id": "job-1", "kind": "image", "user_id": "u", field: value}
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 400, response.text
    assert f"$.{field}" in response.json()["detail"]
    assert store_errors((await client.get("/metrics")).text) == 0


@pytest.mark.parametrize("delivery_id", ["msg_1\x00", "msg\t1", "msg_1\x7f"])
async def test_a_webhook_id_with_a_control_character_is_refused(client: AsyncTestClient[Any], delivery_id: str) -> None:
    response = await client.post(IMAGE, json=completed_image(job_id="job-1"), headers={"webhook-id": delivery_id})
    assert response.status_code == 400, response.text
    assert "webhook-id" in response.json()["detail"]
    assert (await client.get("/api/jobs/job-1")).status_code == 404
    assert store_errors((await client.get("/metrics")).text) == 0


# --- values that reach metrics are bounded -----------------------------------------------------------------------


def _with_metadata(**metadata: Any) -> dict[str, Any]:
    payload = completed_image(job_id="job-1")
    payload["data"]["metadata"].update(metadata)
    return payload


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (_with_metadata(generation_time_seconds=1.7e308), "$.data.metadata.generation_time_seconds"),
        (_with_metadata(generation_time_seconds=7 * 86400 + 1), "$.data.metadata.generation_time_seconds"),
        (_with_metadata(model_name="gemini\x00"), "$.data.metadata.model_name"),
        (_with_metadata(model_name="gemini\nfake_metric 1"), "$.data.metadata.model_name"),
        (
            completed_image(job_id="job-1") | {"data": {"images": [{"url": "u", "size_bytes": 2**40 + 1}]}},
            "$.data.images[0].size_bytes",
        ),
        (
            completed_image(job_id="job-1") | {"data": {"images": [{"url": "u"}] * 1001}},
            "$.data.images",
        ),
        (
            completed_image(job_id="job-1") | {"data": {"images": [{"url": "u", "dimensions": "10x10\n"}]}},
            "$.data.images[0].dimensions",
        ),
    ],
)
async def test_an_implausible_value_is_refused_before_any_metric_sees_it(
    client: AsyncTestClient[Any], payload: dict[str, Any], path: str
) -> None:
    response = await client.post(IMAGE, json=payload)
    assert response.status_code == 400, response.text
    assert path in response.json()["detail"]
    metrics = (await client.get("/metrics")).text
    assert "+Inf" not in "".join(line for line in metrics.splitlines() if "_sum" in line)
    assert "\\x00" not in metrics
    assert "gemini" not in metrics


async def test_a_word_count_past_its_maximum_is_refused(client: AsyncTestClient[Any]) -> None:
    payload = completed_blog()
    payload["data"]["article"]["word_count"] = 10_000_001
    response = await client.post(BLOG, json=payload)
    assert response.status_code == 400, response.text
    assert "$.data.article.word_count" in response.json()["detail"]


async def test_values_at_their_maxima_are_accepted(client: AsyncTestClient[Any]) -> None:
    payload = _with_metadata(generation_time_seconds=7 * 86400, model_name="m" * 200)
    payload["data"]["images"] = [{"url": "u", "size_bytes": 2**40}] * 1000
    assert (await client.post(IMAGE, json=payload)).status_code == 200
    blog = completed_blog()
    blog["data"]["article"]["word_count"] = 10_000_000
    assert (await client.post(BLOG, json=blog)).status_code == 200


# --- duplicated JSON keys -----------------------------------------------------------------------------------------


async def test_a_duplicated_key_takes_its_last_value_and_only_that_value_is_kept(
    client: AsyncTestClient[Any],
) -> None:
    """What docs/webhooks-validation.md says: the last value wins, and the gateway stores and forwards its own
    encoding of what it decoded, never the sender's bytes, so no reader downstream can see the other value."""
    body = (
        b'{"job_id":"first","job_id":"last","status":"completed","status":"completed",'
        b'"timestamp":"2025-10-21T16:45:00Z","data":{"images":[{"url":"http://a/1.png","url":"http://a/2.png"}]}}'
    )
    response = await client.post(IMAGE, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == "last"
    assert (await client.get("/api/jobs/first")).status_code == 404
    job = await client.get("/api/jobs/last")
    assert job.json()["result"] == {"images": [{"url": "http://a/2.png"}]}
    assert "http://a/1.png" not in job.text


async def test_a_status_repeated_with_another_value_is_a_400(client: AsyncTestClient[Any]) -> None:
    """``status`` decides which payload shape applies: two different ones are refused, whichever comes first."""
    body = b'{"job_id":"job-1","status":"generating","timestamp":"2025-10-21T16:45:00Z","status":"completed"}'
    response = await client.post(IMAGE, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "$.status" in response.json()["detail"]
    assert (await client.get("/api/jobs/job-1")).status_code == 404


# --- a webhook-id recorded for another job ------------------------------------------------------------------------


async def test_a_webhook_id_recorded_for_another_job_is_a_409_naming_it(client: AsyncTestClient[Any]) -> None:
    first = await client.post(IMAGE, json=completed_image(job_id="job-a"), headers={"webhook-id": "msg_1"})
    assert first.status_code == 200
    reused = await client.post(IMAGE, json=completed_image(job_id="job-b"), headers={"webhook-id": "msg_1"})
    assert reused.status_code == 409, reused.text
    assert "'job-a'" in reused.json()["detail"]
    assert (await client.get("/api/jobs/job-b")).status_code == 404
    assert [entry["delivery_id"] for entry in (await client.get("/api/jobs/job-a")).json()["history"]] == ["msg_1"]
    # The same delivery again is still a duplicate of its own job.
    again = await client.post(IMAGE, json=completed_image(job_id="job-a"), headers={"webhook-id": "msg_1"})
    assert again.json()["outcome"] == "duplicate"


def _forget_deliveries(settings: Settings) -> None:
    """What eviction does: the idempotency store no longer knows any delivery (only the job store does)."""
    if settings.redis_url is None:
        return  # the next app's in-memory store starts empty
    with redis.Redis.from_url(settings.redis_url) as server:
        keys = list(server.scan_iter(f"{settings.redis_key_prefix}*"))
        if keys:
            server.delete(*keys)


async def test_a_reused_webhook_id_is_a_409_when_only_the_job_store_remembers_it(settings: Settings) -> None:
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        headers = {"webhook-id": "msg_1"}
        assert (
            await client.post(IMAGE, json=progress("generating", job_id="job-a"), headers=headers)
        ).status_code == 200
    _forget_deliveries(settings)
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        reused = await client.post(IMAGE, json=progress("generating", job_id="job-b"), headers=headers)
        assert reused.status_code == 409, reused.text
        assert "'job-a'" in reused.json()["detail"]
        assert (await client.get("/api/jobs/job-b")).status_code == 404
        # Refused, not claimed: the id stays the first job's, and job-b's own delivery goes through.
        own = await client.post(IMAGE, json=progress("generating", job_id="job-b"), headers={"webhook-id": "msg_2"})
        assert own.json()["outcome"] == "applied"
        assert store_errors((await client.get("/metrics")).text) == 0


def test_one_webhook_id_sent_for_several_jobs_at_once_is_recorded_once(settings: Settings) -> None:
    """Four jobs sending one webhook-id at once: one is recorded, the others refused, whichever came first."""

    async def run() -> list[int]:
        async with AsyncTestClient(app=create_app(settings)) as client:
            client.headers["X-Webhook-Secret"] = SECRET
            answers = await asyncio.gather(
                *(
                    client.post(IMAGE, json=progress("generating", job_id=f"job-{n}"), headers={"webhook-id": "m"})
                    for n in range(4)
                )
            )
            return sorted(answer.status_code for answer in answers)

    assert asyncio.run(run()) == [200, 409, 409, 409]
