"""schemathesis against the gateway's own OpenAPI document, over real HTTP to a ``gateway serve``.

Every operation gets schema-valid and schema-violating requests (bodies, query strings, path parameters,
headers), authenticated with the shared secret so webhooks reach the decoder and the store. Every
answer must be documented (status code, content type, body schema, headers) and none may be a 5xx;
schema-violating requests must be refused with a 4xx. The budget is small in the default suite;
``GATEWAY_FUZZ_EXAMPLES=2000 python -m pytest tests/http/test_schemathesis.py tests/http/test_fuzz.py`` runs
a long campaign on demand (docs/hardening.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.testing import TestClient
from schemathesis.checks import positive_data_acceptance

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from tests.conftest import SECRET, LiveServer

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "40"))
STREAM_SECONDS = 0.5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("schemathesis"), {"WEBHOOK_SECRET": SECRET})
    schema.config.update(base_url=server.url)  # checks that send requests of their own need it too
    yield server
    server.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


# The document the app serves at /schema/openapi.json, built without a server (the test sends to one).
with TestClient(create_app(Settings(database=SqliteDatabase(":memory:")))) as _app:
    DOCUMENT = _app.get("/schema/openapi.json").json()
# Its `servers: [{"url": "/"}]` would make every request URL relative: the live server's URL is the base.
schema = schemathesis.openapi.from_dict({key: value for key, value in DOCUMENT.items() if key != "servers"})
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_and_never_5xx(
    case: schemathesis.Case, gateway: LiveServer, session: requests.Session
) -> None:
    # Integers written with a fraction (2048576.0) are JSON Schema integers but msgspec refuses them with a
    # 400 naming the field: documented strictness (docs/webhooks.md), so schema-valid-but-refused is not checked.
    case.call_and_validate(
        base_url=gateway.url,
        session=session,
        headers={"X-Webhook-Secret": SECRET},
        # A live stream (GET /api/jobs/events) never ends by itself: schemathesis reads it, and checks what
        # came, for this long in all, rather than its default 10 s per request. The stream's head and first
        # bytes come at once; every other answer has 2 s. (A stream with nothing to send is read until this
        # runs out: each of the operation's thirty-odd examples that opens one costs all of it.)
        timeout=STREAM_SECONDS if case.operation.path == "/api/jobs/events" else 2,
        excluded_checks=[positive_data_acceptance],
    )


def test_the_fuzzed_document_is_the_one_the_gateway_serves(gateway: LiveServer) -> None:
    """The fuzz reads the document from the app object: it must be the one served, with the webhook routes
    (a document that lost its routes would make the fuzz pass vacuously)."""
    served = requests.get(f"{gateway.url}/schema/openapi.json", timeout=5).json()
    assert served == DOCUMENT
    assert {"/api/webhooks/image-completion", "/api/webhooks/blog-completion", "/api/jobs"} <= set(served["paths"])
