"""The OpenAPI document a sender's developer reads: every route, body, header and answer of the webhooks."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient, TestClient

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from tests.conftest import SECRET

WEBHOOK_ROUTES = ("/api/webhooks/image-completion", "/api/webhooks/blog-completion")
STATUSES = {"pending", "initializing", "generating", "saving", "completed", "failed", "canceled"}
AUTH_HEADERS = {"X-Webhook-Secret", "webhook-id", "webhook-timestamp", "webhook-signature"}
ERROR_CODES = {"400", "401", "404", "409", "413", "415", "503"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document one app serves, fetched once for the module: building an app per test that only
    reads the document was most of this module's time."""
    database = SqliteDatabase(str(tmp_path_factory.mktemp("openapi") / "gateway.db"))
    with TestClient(app=create_app(Settings(webhook_secret=SECRET, database=database))) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
def openapi(served: dict[str, Any]) -> dict[str, Any]:
    """A copy of the served document of the test's own, so no test can change what another reads."""
    return copy.deepcopy(served)


def webhook_operation(openapi: dict[str, Any], route: str) -> dict[str, Any]:
    operation: dict[str, Any] = openapi["paths"][route]["post"]
    return operation


def request_schema(openapi: dict[str, Any], route: str) -> dict[str, Any]:
    body = webhook_operation(openapi, route)["requestBody"]
    assert body["required"] is True
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


def variants(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a union schema (or the schema itself if it is not one)."""
    return list(schema.get("anyOf") or schema.get("oneOf") or [schema])


def subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in a schema tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from subschemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from subschemas(item)


def documented_statuses(schema: dict[str, Any]) -> set[str]:
    statuses: set[str] = set()
    for variant in variants(schema):
        status = variant.get("properties", {}).get("status", {})
        statuses.update(status.get("enum", []))
        if "const" in status:
            statuses.add(status["const"])
    return statuses


def completed_variant(schema: dict[str, Any]) -> dict[str, Any]:
    matches = [variant for variant in variants(schema) if "completed" in documented_statuses(variant)]
    assert len(matches) == 1
    return matches[0]


def resolve(openapi: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/components/schemas/")
    resolved: dict[str, Any] = openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


async def test_the_document_is_served(client: AsyncTestClient[Any]) -> None:
    """``/schema/openapi.json`` answers with an OpenAPI 3 document."""
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


async def test_the_document_the_app_holds_is_the_one_served(settings: Settings) -> None:
    """``app.openapi_schema`` (what ``python -m docs.generate`` reads) is the served document, webhook
    routes included, whether it is first read from the app or first served."""
    served_first = create_app(settings)
    async with AsyncTestClient(app=served_first) as client:
        served = (await client.get("/schema/openapi.json")).json()
    assert set(WEBHOOK_ROUTES) <= set(served["paths"])
    assert json.loads(json.dumps(served_first.openapi_schema.to_schema())) == served
    read_first = create_app(settings)
    held = json.loads(json.dumps(read_first.openapi_schema.to_schema()))
    async with AsyncTestClient(app=read_first) as client:
        assert (await client.get("/schema/openapi.json")).json() == held == served


@pytest.mark.parametrize("route", WEBHOOK_ROUTES)
def test_webhook_body_documents_every_status(openapi: dict[str, Any], route: str) -> None:
    """The body is required JSON whose schema lists every status a sender may post."""
    schema = request_schema(openapi, route)
    assert documented_statuses(schema) == STATUSES
    assert all("$ref" not in node for node in subschemas(schema)), "the body schema must be self-contained"
    for variant in variants(schema):
        assert {"job_id", "status", "timestamp"} <= set(variant["required"])


def test_image_body_documents_the_images(openapi: dict[str, Any]) -> None:
    """A completed image webhook is documented as carrying a non-empty ``data.images`` list with URLs."""
    completed = completed_variant(request_schema(openapi, WEBHOOK_ROUTES[0]))
    assert "data" in completed["required"]
    data = completed["properties"]["data"]
    assert "images" in data["required"]
    images = data["properties"]["images"]
    assert images["type"] == "array"
    assert images["minItems"] == 1
    assert "url" in images["items"]["required"]


def test_blog_body_documents_the_article(openapi: dict[str, Any]) -> None:
    """A completed blog webhook is documented as carrying ``data.article`` with a title."""
    completed = completed_variant(request_schema(openapi, WEBHOOK_ROUTES[1]))
    data = completed["properties"]["data"]
    assert "article" in data["required"]
    assert "title" in data["properties"]["article"]["required"]


def test_failed_body_requires_an_error_message(openapi: dict[str, Any]) -> None:
    """The docs say what the decoder enforces: a ``failed`` webhook needs ``error_message``."""
    for route in WEBHOOK_ROUTES:
        failed = [v for v in variants(request_schema(openapi, route)) if documented_statuses(v) == {"failed"}]
        assert len(failed) == 1
        assert "error_message" in failed[0]["required"]


def test_canceled_body_documents_an_optional_reason(openapi: dict[str, Any]) -> None:
    """A ``canceled`` webhook may say why in ``error_message``; it is not required."""
    for route in WEBHOOK_ROUTES:
        canceled = [v for v in variants(request_schema(openapi, route)) if documented_statuses(v) == {"canceled"}]
        assert len(canceled) == 1
        assert "error_message" in canceled[0]["properties"]
        assert "error_message" not in canceled[0]["required"]


@pytest.mark.parametrize("route", WEBHOOK_ROUTES)
def test_webhook_authentication_headers_are_documented(openapi: dict[str, Any], route: str) -> None:
    """Both ways to authenticate (shared secret, Standard Webhooks signature) appear as optional headers."""
    parameters = webhook_operation(openapi, route)["parameters"]
    headers = {parameter["name"]: parameter for parameter in parameters if parameter["in"] == "header"}
    assert set(headers) >= AUTH_HEADERS
    for name in AUTH_HEADERS:
        assert headers[name]["required"] is False
        assert headers[name]["description"]


@pytest.mark.parametrize("route", WEBHOOK_ROUTES)
def test_webhook_answers_are_documented(openapi: dict[str, Any], route: str) -> None:
    """Every status the route can answer is documented, errors with a ``detail`` string."""
    responses = webhook_operation(openapi, route)["responses"]
    assert {"200", *ERROR_CODES} <= set(responses)
    accepted = resolve(openapi, responses["200"]["content"]["application/json"]["schema"])
    assert {"job_id", "status", "outcome"} <= set(accepted["properties"])
    for code in ERROR_CODES:
        assert responses[code]["description"]
        error = resolve(openapi, responses[code]["content"]["application/json"]["schema"])
        assert "detail" in error["required"]
        assert error["properties"]["detail"]["type"] == "string"


def test_read_routes_are_documented(openapi: dict[str, Any]) -> None:
    """The job read API is in the document next to the webhooks."""
    assert "get" in openapi["paths"]["/api/jobs/{job_id}"]
    assert "get" in openapi["paths"]["/api/jobs"]
    list_parameters = {parameter["name"] for parameter in openapi["paths"]["/api/jobs"]["get"]["parameters"]}
    assert {"kind", "status", "limit", "cursor"} <= list_parameters


def test_jobs_api_routes_are_documented(openapi: dict[str, Any]) -> None:
    """Registration, stats, the live streams and the browser session are in the document too."""
    paths = openapi["paths"]
    list_parameters = {parameter["name"] for parameter in paths["/api/jobs"]["get"]["parameters"]}
    assert {"user_id", "organization_id", "created_after", "created_before"} <= list_parameters
    registration = paths["/api/jobs"]["post"]["responses"]
    assert {"200", "201", "400", "401", "409"} <= set(registration)
    assert "get" in paths["/api/jobs/stats"]
    assert "get" in paths["/api/jobs/events"]
    assert "get" in paths["/api/jobs/{job_id}/events"]
    assert {"post", "delete"} <= set(paths["/api/session"])


def test_live_streams_are_documented_as_server_sent_events(openapi: dict[str, Any]) -> None:
    for path in ("/api/jobs/events", "/api/jobs/{job_id}/events"):
        operation = openapi["paths"][path]["get"]
        assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}, path
        assert {"401", "503"} <= set(operation["responses"]), path
        assert "Last-Event-ID" in {parameter["name"] for parameter in operation["parameters"]}, path
    finished = openapi["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["204"]
    assert "content" not in finished


def test_guarded_routes_document_401(openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        if path.startswith(("/api/jobs", "/api/deliveries")):
            for method, operation in item.items():
                assert "401" in operation["responses"], f"{method.upper()} {path}"
    assert "404" in openapi["paths"]["/api/deliveries/{delivery_id}/replay"]["post"]["responses"]


async def test_options_lists_every_method_of_a_shared_path(client: AsyncTestClient[Any]) -> None:
    """Litestar alone would list only the first handler's method of a path served by several."""
    for path, methods in (("/api/session", "DELETE, OPTIONS, POST"), ("/api/jobs", "GET, OPTIONS, POST")):
        response = await client.options(path)
        assert response.status_code == 204
        assert response.headers["allow"] == methods


async def test_the_api_docs_load_nothing_from_another_host(client: AsyncTestClient[Any]) -> None:
    """``/schema`` (the status page's "API docs") works offline and tells no third party who reads it:
    every script, stylesheet and icon it references is a path on the gateway, and each is served."""
    page = await client.get("/schema")
    assert page.status_code == 200
    assert "swagger-ui" in page.text
    head = page.text.split("<body", 1)[0]  # the document itself (inlined in the body) may name any URL
    references = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', head)
    assert len(references) >= 4  # the stylesheet, two scripts and the icon
    assert [reference for reference in references if not reference.startswith("/")] == []
    assert "fonts.googleapis" not in page.text
    assert "cdn." not in page.text
    for reference in references:
        asset = await client.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.content) > 0
