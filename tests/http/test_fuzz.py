"""Property tests: whatever a sender posts, the gateway answers it cleanly and refused webhooks change nothing.

Every request goes through the in-process app (routing, pipeline, SQLite store): over Litestar's sync
``TestClient``, or, where header bytes matter, straight into the ASGI app the way a server hands them over.
Three gateways run for the whole module: one checking the shared secret, one checking Standard Webhooks
signatures, one accepting either. The contract checked everywhere:

* no answer is a 5xx (a crash is never the sender's fault to retry);
* every 4xx is JSON ``{"status_code": ..., "detail": "<non-empty sentence>"}``;
* a webhook that is refused (401 above all) creates no job, and one that is accepted can be read back.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from standardwebhooks import Webhook

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from tests.conftest import SECRET, completed_blog, completed_image, failed, progress
from tests.http.test_client_input import READ_REQUESTS, store_errors
from tests.signing import sign

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"
SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
MAX_BODY = 1024 * 1024
TOLERANCE = 300
CONFIGS = ("secret", "signing-keys", "both")
BODY_CONFIGS = ("secret", "signing-keys")

FUZZ = settings(
    # GATEWAY_FUZZ_EXAMPLES=2000 for a long campaign on demand (docs/hardening.md).
    max_examples=int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_ids = itertools.count(1)
T = TypeVar("T")


def fresh(prefix: str) -> str:
    """An id no other request of this run uses, always of the same length (Hypothesis replays must draw alike)."""
    return f"{prefix}-{next(_ids):09d}"


# --- the gateways under test ---------------------------------------------------------------------------------


class Gateway:
    """One running app and the credentials it accepts."""

    __slots__ = ("client", "keys", "name", "secret")

    def __init__(self, name: str, client: TestClient[Any], secret: str | None, keys: tuple[bytes, ...]) -> None:
        self.name = name
        self.client = client
        self.secret = secret
        self.keys = keys

    def __repr__(self) -> str:
        return f"<gateway {self.name}>"

    def credentials(self, body: bytes) -> dict[str, str]:
        """Headers that authenticate ``body``: the shared secret, or else a fresh Standard Webhooks signature."""
        if self.secret is not None:
            return {"X-Webhook-Secret": self.secret}
        msg_id, timestamp = fresh("msg"), str(int(time.time()))
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": sign(self.keys[0], msg_id, timestamp, body),
        }

    def post(self, route: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(route, content=body, headers=headers)

    def post_authenticated(self, route: str, body: bytes) -> httpx.Response:
        return self.post(route, body, {"Content-Type": "application/json", **self.credentials(body)})

    def post_raw(
        self,
        route: str,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        chunks: Sequence[int] = (),
        *,
        complete: bool = True,
    ) -> httpx.Response:
        """POST with header bytes exactly as given, the way an HTTP server hands them to the app.

        (The test client re-encodes non-ASCII header values as UTF-8, which no server does.) ``chunks``
        cuts the body at those offsets into several ``http.request`` messages, as a server delivers a
        chunked or slow body; ``complete=False`` ends with a disconnect instead of the last chunk.
        """

        async def call() -> httpx.Response:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": route,
                "raw_path": route.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"testserver"), *headers],
                "client": ("127.0.0.1", 50000),
                "server": ("testserver", 80),
            }
            cuts = [0, *sorted(chunks), len(body)]
            incoming: list[dict[str, Any]] = [
                {"type": "http.request", "body": body[start:end], "more_body": True}
                for start, end in itertools.pairwise(cuts)
            ]
            incoming[-1]["more_body"] = False
            if not complete:
                incoming[-1] = {"type": "http.disconnect"}
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return incoming.pop(0) if incoming else {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await self.client.app(scope, receive, send)
            start = next(message for message in sent if message["type"] == "http.response.start")
            answer = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
            return httpx.Response(start["status"], headers=start.get("headers", []), content=answer)

        return self.client.blocking_portal.call(call)

    def job_exists(self, job_id: str) -> bool:
        response = self.client.get(f"/api/jobs/{job_id}")
        assert response.status_code in (200, 404), response.text
        return response.status_code == 200


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    configs: dict[str, tuple[str | None, tuple[bytes, ...]]] = {
        "secret": (SECRET, ()),
        "signing-keys": (None, (SIGNING_KEY,)),
        "both": (SECRET, (SIGNING_KEY,)),
    }
    with ExitStack() as stack:
        running = {}
        for name, (secret, keys) in configs.items():
            database = Path(tmp_path_factory.mktemp(f"fuzz-{name}")) / "gateway.db"
            app = create_app(
                Settings(
                    webhook_secret=secret,
                    signing_keys=keys,
                    tolerance_seconds=TOLERANCE,
                    max_body_bytes=MAX_BODY,
                    database=SqliteDatabase(str(database)),
                )
            )
            client = stack.enter_context(TestClient(app=app, raise_server_exceptions=False))
            running[name] = Gateway(name, client, secret, keys)
        yield running


def assert_handled(response: httpx.Response) -> None:
    """The contract every answer keeps: never a 5xx, and a 4xx always explains itself in JSON."""
    assert response.status_code < 500, f"{response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert isinstance(body, dict)
        assert body["status_code"] == response.status_code
        assert isinstance(body["detail"], str)
        assert body["detail"].strip()


def assert_accepted_is_readable(gateway: Gateway, response: httpx.Response) -> None:
    """A 200 means the job is recorded: reading it back must work (and not crash on what was stored)."""
    if response.status_code != 200:
        return
    answer = response.json()
    assert answer["received"] is True
    if answer["outcome"] != "duplicate":
        read = gateway.client.get(f"/api/jobs/{answer['job_id']}")
        assert read.status_code == 200, read.text
        assert read.json()["status"] == answer["status"]


# --- strategies ----------------------------------------------------------------------------------------------

json_scalars: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**600), max_value=10**600)
    | st.floats()  # includes nan and +-inf, written as NaN/Infinity (not JSON)
    | st.text()
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)


def encode(value: Any, *, ascii_only: bool = False) -> bytes:
    """JSON as Python writes it, with NaN/Infinity where a float is not finite."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode()


def valid_webhooks(job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """One valid webhook of each shape, as (route, payload)."""
    generating = progress("generating", job_id=job_id) | {"data": {"metadata": {"model_name": "flux-dev"}}}
    return [
        (IMAGE, completed_image(job_id=job_id)),
        (IMAGE, failed(job_id=job_id)),
        (IMAGE, generating),
        (BLOG, completed_blog(job_id)),
    ]


@st.composite
def valid_webhook(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    route, payload = draw(st.sampled_from(valid_webhooks("placeholder")))
    return route, payload | {"job_id": fresh("job")}


def paths_in(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every field (and list item) of a payload, nested ones included."""
    items: Iterator[tuple[str | int, Any]]
    if isinstance(node, dict):
        items = iter(node.items())
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from paths_in(value, (*prefix, key))


def replace_at(payload: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set ``payload[path] = value`` if the path still exists (an earlier replacement may have removed it)."""
    node: Any = payload
    for key in path[:-1]:
        if not _has(node, key):
            return
        node = node[key]
    last = path[-1]
    if _has(node, last) or (isinstance(node, dict) and isinstance(last, str)):
        node[last] = value


def _has(node: Any, key: str | int) -> bool:
    if isinstance(node, dict):
        return isinstance(key, str) and key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


@st.composite
def mistyped_webhook(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid webhook with one to three of its fields (at any depth) given arbitrary JSON values."""
    route, payload = draw(valid_webhook())
    payload = copy.deepcopy(payload)
    paths = list(paths_in(payload))
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        replace_at(payload, path, draw(json_values))
    return route, payload


INVALID_UTF8 = st.sampled_from(
    [b"\x80", b"\xff", b"\xfe\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
) | st.binary(min_size=1, max_size=6).filter(lambda raw: not _is_utf8(raw))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def nested_json(depth: int, container: str) -> bytes:
    """``depth`` levels of arrays or objects, written without recursion (json.dumps would hit its limit)."""
    if container == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


# --- sanity: the fuzzers' "valid" requests really are valid ---------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_valid_webhooks_are_accepted(gateways: dict[str, Gateway], config: str) -> None:
    """Every shape the fuzzers start from is accepted with the credentials the fuzzers send."""
    gateway = gateways[config]
    for route, template in valid_webhooks("placeholder"):
        payload = template | {"job_id": fresh("job")}
        response = gateway.post_authenticated(route, encode(payload))
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "applied"
        assert gateway.job_exists(payload["job_id"])


def test_a_signature_from_the_reference_library_is_accepted(gateways: dict[str, Gateway]) -> None:
    """Interoperability: a webhook signed by the ``standardwebhooks`` package authenticates."""
    job_id = fresh("job")
    body = json.dumps(completed_image(job_id=job_id))
    msg_id, now = fresh("msg"), datetime.now(UTC)
    signature = Webhook(SIGNING_KEY).sign(msg_id, now, body)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    response = gateways["signing-keys"].post(IMAGE, body.encode(), headers)
    assert response.status_code == 200, response.text
    assert gateways["signing-keys"].job_exists(job_id)


# --- bodies ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(body=st.binary(max_size=2048), route=st.sampled_from([IMAGE, BLOG]))
def test_arbitrary_bytes_are_answered_cleanly(
    gateways: dict[str, Gateway], config: str, body: bytes, route: str
) -> None:
    """Random bytes posted as JSON get a 400 that explains itself, never a crash."""
    response = gateways[config].post_authenticated(route, body)
    assert_handled(response)
    assert response.status_code == 400


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(value=json_values, ascii_only=st.booleans(), route=st.sampled_from([IMAGE, BLOG]))
def test_arbitrary_json_values_are_answered_cleanly(
    gateways: dict[str, Gateway], config: str, value: Any, ascii_only: bool, route: str
) -> None:
    """Any JSON value (huge integers, NaN/Infinity, unicode, nesting) is refused with a 400, never a crash."""
    response = gateways[config].post_authenticated(route, encode(value, ascii_only=ascii_only))
    assert_handled(response)
    assert response.status_code == 400


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(webhook=mistyped_webhook(), ascii_only=st.booleans())
def test_fields_of_the_wrong_type_are_answered_cleanly(
    gateways: dict[str, Gateway], config: str, webhook: tuple[str, dict[str, Any]], ascii_only: bool
) -> None:
    """A payload-shaped body with any field replaced by any JSON value is refused or accepted, never a crash."""
    gateway = gateways[config]
    route, payload = webhook
    response = gateway.post_authenticated(route, encode(payload, ascii_only=ascii_only))
    assert_handled(response)
    assert response.status_code in (200, 400, 409), response.text
    assert_accepted_is_readable(gateway, response)


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(depth=st.integers(min_value=1, max_value=20_000), container=st.sampled_from(["list", "dict"]))
def test_deeply_nested_json_is_a_client_error(
    gateways: dict[str, Gateway], config: str, depth: int, container: str
) -> None:
    """A small body nested thousands of levels deep is a 400 (or 413), not a crash."""
    response = gateways[config].post_authenticated(IMAGE, nested_json(depth, container))
    assert_handled(response)
    assert response.status_code in (400, 413)


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(
    webhook=valid_webhook(),
    depth=st.integers(min_value=1, max_value=5_000),
    container=st.sampled_from(["list", "dict"]),
)
def test_deeply_nested_unknown_field_is_handled(
    gateways: dict[str, Gateway], config: str, webhook: tuple[str, dict[str, Any]], depth: int, container: str
) -> None:
    """Unknown fields are ignored, however deep they nest: the webhook is accepted or refused, never a crash."""
    gateway = gateways[config]
    route, payload = webhook
    body = encode(payload)[:-1] + b',"extra":' + nested_json(depth, container) + b"}"
    response = gateway.post_authenticated(route, body)
    assert_handled(response)
    assert_accepted_is_readable(gateway, response)


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(
    webhook=valid_webhook(),
    field=st.sampled_from(["job_id", "status", "timestamp", "value", "key"]),
    bad=INVALID_UTF8,
    before=st.text(max_size=5),
)
def test_invalid_utf8_is_a_client_error(
    gateways: dict[str, Gateway],
    config: str,
    webhook: tuple[str, dict[str, Any]],
    field: str,
    bad: bytes,
    before: str,
) -> None:
    """Bytes that are not UTF-8, inside any string of an otherwise valid webhook, never crash the gateway."""
    gateway = gateways[config]
    route, payload = webhook
    marker = "\u2603MARK\u2603"
    payload = dict(payload)
    if field == "value":
        payload["note"] = before + marker
    elif field == "key":
        payload[before + marker] = 1
    else:
        payload[field] = str(payload[field]) + marker
    body = encode(payload).replace(marker.encode(), bad)
    assert not _is_utf8(body)
    response = gateway.post_authenticated(route, body)
    assert_handled(response)
    assert response.status_code in (200, 400), response.text
    assert_accepted_is_readable(gateway, response)


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(webhook=valid_webhook(), data=st.data())
def test_duplicated_keys_are_answered_cleanly(
    gateways: dict[str, Gateway], config: str, webhook: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """An object repeating a key (with the same or another value, before or after) never crashes the gateway."""
    gateway = gateways[config]
    route, payload = webhook
    pairs = list(payload.items())
    for key in data.draw(st.lists(st.sampled_from(sorted(payload)), min_size=1, max_size=3)):
        value = data.draw(st.one_of(st.just(payload[key]), json_values))
        pairs.insert(data.draw(st.integers(0, len(pairs))), (key, value))
    body = b"{" + b",".join(encode(key) + b":" + encode(value) for key, value in pairs) + b"}"
    response = gateway.post_authenticated(route, body)
    assert_handled(response)
    assert response.status_code in (200, 400, 409), response.text
    assert_accepted_is_readable(gateway, response)


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(webhook=valid_webhook(), data=st.data())
def test_truncated_bodies_are_malformed_json(
    gateways: dict[str, Gateway], config: str, webhook: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """A body cut short anywhere (a dropped connection, a buggy sender) is a 400 and records nothing."""
    gateway = gateways[config]
    route, payload = webhook
    body = encode(payload)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    response = gateway.post_authenticated(route, body[:cut])
    assert_handled(response)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Malformed JSON")
    assert not gateway.job_exists(payload["job_id"])


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(webhook=valid_webhook(), data=st.data())
def test_a_body_in_chunks_is_answered_as_if_whole(
    gateways: dict[str, Gateway], config: str, webhook: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """A chunked (or slowly sent) body, cut anywhere, even mid-character, into chunks of any size (empty
    ones included), is the same webhook: applied once; cut off by a disconnect, it is a 400 and records
    nothing."""
    gateway = gateways[config]
    route, payload = webhook
    body = encode(payload)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    headers = [(b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in gateway.credentials(body).items()]
    if data.draw(st.booleans()):
        response = gateway.post_raw(route, body, headers, cuts, complete=False)
        assert_handled(response)
        assert response.status_code == 400
        assert not gateway.job_exists(payload["job_id"])
        return
    response = gateway.post_raw(route, body, headers, cuts)
    assert_handled(response)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
    assert_accepted_is_readable(gateway, response)


offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


def _in_zone(moment: datetime, zone: tzinfo | None) -> datetime:
    return moment.replace(tzinfo=zone)


moments = st.builds(
    _in_zone,
    st.datetimes()
    | st.datetimes(datetime.min, datetime(1, 1, 2))  # the first and last days, where a zone
    | st.datetimes(datetime(9999, 12, 30), datetime.max),  # can push the instant out of range
    st.none() | offsets,
)


@pytest.mark.parametrize("config", BODY_CONFIGS)
@FUZZ
@given(webhook=valid_webhook(), moment=moments)
def test_any_timestamp_is_answered_cleanly(
    gateways: dict[str, Gateway], config: str, webhook: tuple[str, dict[str, Any]], moment: datetime
) -> None:
    """Every RFC 3339 timestamp from year 1 to 9999, in any zone, is accepted or refused, never a crash."""
    gateway = gateways[config]
    route, payload = webhook
    response = gateway.post_authenticated(route, encode(payload | {"timestamp": moment.isoformat()}))
    assert_handled(response)
    assert response.status_code in (200, 400), response.text
    assert_accepted_is_readable(gateway, response)


# --- headers ---------------------------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
LONG = "A" * 10_000


class Choice:
    """One header's value (``None``: left out) and what the gateway must make of it (``None``: unspecified)."""

    __slots__ = ("valid", "value")

    def __init__(self, value: str | None, valid: bool | None) -> None:
        self.value = value
        self.valid = valid

    def __repr__(self) -> str:
        return f"Choice({shorten(self.value)}, valid={self.valid})"


def shorten(text: str | None) -> str:
    """Long header values shown by their start and length, so a falsifying example stays readable."""
    return repr(text) if text is None or len(text) <= 60 else f"{text[:20]!r}...({len(text)} chars)"


def or_random_text(fixed: Sequence[T], random: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """One of ``fixed``, or (as likely as any one of them) a value from ``random``.

    Hypothesis would otherwise favour the random branch, and combinations of the interesting fixed values
    (a valid content type with an absurd length, say) would rarely be tried.
    """
    return st.sampled_from([*fixed, None]).flatmap(lambda value: random if value is None else st.just(value))


def choices(valid: Sequence[str | None], invalid: Sequence[str | None]) -> st.SearchStrategy[Choice]:
    fixed = [Choice(value, True) for value in valid] + [Choice(value, False) for value in invalid]
    return or_random_text(fixed, header_text.map(lambda text: Choice(text, None)))


CONTENT_TYPES = choices(
    valid=["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/cloudevents+json"],
    invalid=[None, "", "text/plain", "application/x-www-form-urlencoded", "application/jsonp", "json", LONG],
)
SECRETS = choices(
    valid=[SECRET],
    invalid=[None, "", SECRET + "x", SECRET[:-1], SECRET.upper(), "v1", LONG],
)
WEBHOOK_IDS = choices(valid=["fresh"], invalid=[None, ""])
TIMESTAMPS = choices(
    valid=["now", "now-60", "now+60"],
    invalid=[None, "", "abc", "-5", "1e9", "now-3600", "now+3600", "0", "9" * 40, "9" * 5000],
)
SIGNATURES = choices(
    valid=["good", "good-among-others"],
    invalid=[None, "", "v1", "v1,", "v1,!!!", "v2,good", "other-key", "other-body", "v1," + LONG],
)


class ContentLength:
    """How the body's length is announced, and which refusal (if any) that must cause.

    ``announce`` is "exact", "absent" (a chunked body) or a literal header value; ``expected`` the statuses
    it forces, ``None`` when the announced length is harmless.
    """

    __slots__ = ("announce", "expected")

    def __init__(self, announce: str, expected: frozenset[int] | None) -> None:
        self.announce = announce
        self.expected = expected

    def __repr__(self) -> str:
        return f"ContentLength({shorten(self.announce)}, expected={self.expected})"


CONTENT_LENGTHS = or_random_text(
    [
        ContentLength("exact", None),
        ContentLength("absent", None),
        ContentLength("1", None),
        ContentLength(str(MAX_BODY), None),
        ContentLength(str(MAX_BODY + 1), frozenset({413})),
        ContentLength("9" * 40, frozenset({413})),
        ContentLength("9" * 5000, frozenset({400, 413})),
        ContentLength("abc", frozenset({400})),
        ContentLength("-1", frozenset({400})),
        ContentLength("1e3", frozenset({400})),
        ContentLength("", frozenset({400})),
        ContentLength("0x10", frozenset({400})),
    ],
    header_text.map(lambda text: ContentLength(text, _announced(text))),
)


def _announced(text: str) -> frozenset[int] | None:
    """What a Content-Length of ``text`` must cause for a small body: nothing, 413 or 400."""
    if text.isascii() and text.isdigit():
        return frozenset({413}) if int(text) > MAX_BODY else None
    return frozenset({400})


def resolve_timestamp(template: str, now: int) -> str:
    if template.startswith("now"):
        return str(now + int(template[3:] or 0))
    return template


def resolve_signature(template: str, msg_id: str, timestamp: str, body: bytes) -> str:
    good = sign(SIGNING_KEY, msg_id, timestamp, body)
    return {
        "good": good,
        "good-among-others": f"v1,{base64.b64encode(b'x' * 32).decode()} v1a,zzz {good}",
        "v2,good": "v2," + good.removeprefix("v1,"),
        "other-key": sign(OTHER_KEY, msg_id, timestamp, body),
        "other-body": sign(SIGNING_KEY, msg_id, timestamp, body + b" "),
    }.get(template, template)


def header_value(text: str) -> bytes:
    """A header value's bytes as a sender puts them on the wire (the gateway reads them back as Latin-1)."""
    return text.encode("latin-1")


@pytest.mark.parametrize("config", CONFIGS)
@settings(FUZZ, max_examples=300)
@given(
    webhook=valid_webhook(),
    content_type=CONTENT_TYPES,
    content_length=CONTENT_LENGTHS,
    secret=SECRETS,
    webhook_id=WEBHOOK_IDS,
    timestamp=TIMESTAMPS,
    signature=SIGNATURES,
)
def test_random_headers_never_crash_and_never_let_an_unauthenticated_webhook_in(
    gateways: dict[str, Gateway],
    config: str,
    webhook: tuple[str, dict[str, Any]],
    content_type: Choice,
    content_length: ContentLength,
    secret: Choice,
    webhook_id: Choice,
    timestamp: Choice,
    signature: Choice,
) -> None:
    """Whatever the headers, the answer is the first check that fails (415, 400/413, 401) or 200; a refused
    webhook creates no job, and a webhook is accepted only with a correct secret or signature."""
    gateway = gateways[config]
    route, payload = webhook
    body = encode(payload)
    now = int(time.time())

    msg_id = fresh("msg") if webhook_id.value == "fresh" else webhook_id.value
    stamp = resolve_timestamp(timestamp.value, now) if timestamp.value is not None else None
    announced = {"exact": str(len(body)), "absent": None}.get(content_length.announce, content_length.announce)
    signed = None if signature.value is None else resolve_signature(signature.value, msg_id or "", stamp or "", body)
    headers = [
        (name, header_value(value))
        for name, value in (
            (b"content-type", content_type.value),
            (b"content-length", announced),
            (b"x-webhook-secret", secret.value),
            (b"webhook-id", msg_id),
            (b"webhook-timestamp", stamp),
            (b"webhook-signature", signed),
        )
        if value is not None
    ]
    response = gateway.post_raw(route, body, headers)
    assert_handled(response)

    # What the answer must be, check by check, as far as the chosen headers determine it.
    secret_ok = gateway.secret is not None and secret.valid
    signature_ok = bool(gateway.keys) and webhook_id.valid and timestamp.valid and signature.valid
    unknown_auth = (gateway.secret is not None and secret.valid is None) or (
        bool(gateway.keys) and None in (webhook_id.valid, timestamp.valid, signature.valid)
    )
    expected: set[int] | None
    if content_type.valid is False:
        expected = {415}
    elif content_type.valid is None:
        expected = None
    elif content_length.expected is not None:
        expected = set(content_length.expected)
    elif secret_ok or signature_ok:
        # a random webhook-id beside a good secret may break the id's alphabet (gateway/ids.py): a 400
        expected = {200} if webhook_id.valid is not None else {200, 400}
    elif unknown_auth:
        expected = None
    else:
        expected = {401}
    if expected is not None:
        assert response.status_code in expected, (expected, response.status_code, response.text)

    if response.status_code == 200:
        assert secret_ok or signature_ok or unknown_auth, "accepted without valid credentials"
        assert_accepted_is_readable(gateway, response)
    else:
        assert not gateway.job_exists(payload["job_id"]), f"a {response.status_code} created a job"


@pytest.mark.parametrize("config", ["signing-keys", "both"])
@settings(FUZZ, max_examples=200)
@given(webhook=valid_webhook(), body=st.binary(max_size=512), use_payload=st.booleans(), skew=st.integers())
def test_signatures_for_another_body_or_time_are_refused(
    gateways: dict[str, Gateway],
    config: str,
    webhook: tuple[str, dict[str, Any]],
    body: bytes,
    use_payload: bool,
    skew: int,
) -> None:
    """A signature is only good for its exact body and timestamp: replaying it with another body is a 401
    and creates no job; a correctly signed webhook is accepted only within the clock tolerance."""
    gateway = gateways[config]
    route, payload = webhook
    sent = encode(payload)
    signed_body = sent if use_payload else body
    msg_id, stamp = fresh("msg"), str(max(0, int(time.time()) + skew))
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": sign(SIGNING_KEY, msg_id, stamp, signed_body),
    }
    response = gateway.post(route, sent, headers)
    assert_handled(response)
    in_tolerance = abs(int(stamp) - time.time()) <= TOLERANCE - 5
    out_of_tolerance = abs(int(stamp) - time.time()) > TOLERANCE + 5
    if signed_body != sent or out_of_tolerance:
        assert response.status_code == 401, response.text
        assert not gateway.job_exists(payload["job_id"])
    elif in_tolerance:
        assert response.status_code == 200, response.text
        assert gateway.job_exists(payload["job_id"])


# --- pinned cases: the smallest inputs the properties above found crashing the gateway ----------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{"job_id":"utf8-1","status":"failed","timestamp":"2025-10-21T16:45:00Z","error_message":"\xff"}',
            id="invalid-utf8-in-a-string",
        ),
        pytest.param(b'{"job_id":"utf8-2","status":"\xc3"}', id="invalid-utf8-in-the-status"),
        pytest.param(nested_json(3000, "dict"), id="3000-nested-objects"),
        pytest.param(
            b'{"job_id":"deep-2","status":"pending","timestamp":"2025-10-21T16:45:00Z","x":'
            + nested_json(3000, "list")
            + b"}",
            id="3000-nested-arrays-in-an-unknown-field",
        ),
        pytest.param(
            b'{"job_id":"deep-1","status":"pending","timestamp":"2025-10-21T16:45:00Z","x":'
            + nested_json(3000, "dict")
            + b"}",
            id="3000-nested-objects-in-an-unknown-field",
        ),
        pytest.param(
            b'{"job_id":"tz-1","status":"pending","timestamp":"0001-01-01T00:00:00+01:00"}',
            id="timestamp-before-year-1-in-utc",
        ),
        pytest.param(
            b'{"job_id":"tz-2","status":"pending","timestamp":"9999-12-31T23:59:59-01:00"}',
            id="timestamp-after-year-9999-in-utc",
        ),
    ],
)
def test_pinned_bodies_are_client_errors(gateways: dict[str, Gateway], body: bytes) -> None:
    """Bodies that once crashed the gateway with a 500 are answered with a 400 and record nothing."""
    gateway = gateways["secret"]
    response = gateway.post_authenticated(IMAGE, body)
    assert_handled(response)
    assert response.status_code == 400


def test_content_length_with_thousands_of_digits_is_a_client_error(gateways: dict[str, Gateway]) -> None:
    """An absurd Content-Length (more digits than Python converts by default) is refused, not a crash."""
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET, "Content-Length": "9" * 5000}
    response = gateways["secret"].post(IMAGE, b"{}", headers)
    assert_handled(response)
    assert response.status_code in (400, 413)


def test_signed_timestamp_with_thousands_of_digits_is_refused(gateways: dict[str, Gateway]) -> None:
    """A correctly signed webhook whose timestamp is 5000 digits long is outside the tolerance: 401."""
    job_id = fresh("job")
    body = encode(progress("generating", job_id=job_id))
    msg_id, stamp = fresh("msg"), "9" * 5000
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": sign(SIGNING_KEY, msg_id, stamp, body),
    }
    response = gateways["signing-keys"].post(IMAGE, body, headers)
    assert_handled(response)
    assert response.status_code == 401
    assert not gateways["signing-keys"].job_exists(job_id)


def test_an_empty_webhook_id_does_not_swallow_other_webhooks(gateways: dict[str, Gateway]) -> None:
    """A sender that sends ``webhook-id:`` empty must not have its next webhooks dropped as duplicates:
    each is either refused (so the sender knows) or recorded."""
    gateway = gateways["secret"]
    for job_id in (fresh("job"), fresh("job")):
        headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET, "webhook-id": ""}
        response = gateway.post(IMAGE, encode(progress("pending", job_id=job_id)), headers)
        assert_handled(response)
        if response.status_code == 200:
            assert gateway.job_exists(job_id), f"answered {response.json()} but {job_id} was never recorded"


def test_content_length_in_non_ascii_digits_is_a_client_error(gateways: dict[str, Gateway]) -> None:
    """``Content-Length: \u00b2`` (a Latin-1 superscript two, which ``str.isdigit`` accepts) is a 400, not a crash."""
    headers = [
        (b"content-type", b"application/json"),
        (b"x-webhook-secret", SECRET.encode()),
        (b"content-length", "\u00b2".encode("latin-1")),
    ]
    response = gateways["secret"].post_raw(IMAGE, b"{}", headers)
    assert_handled(response)
    assert response.status_code == 400


def test_signed_timestamp_in_non_ascii_digits_is_refused(gateways: dict[str, Gateway]) -> None:
    """A correctly signed webhook whose ``webhook-timestamp`` is Latin-1 superscript digits is a 401, not a crash.

    Reproduces over real HTTP too: uvicorn passes the header bytes through as they are.
    """
    job_id = fresh("job")
    body = encode(progress("generating", job_id=job_id))
    msg_id, stamp = fresh("msg"), "\u00b9\u00b2"
    headers = [
        (b"content-type", b"application/json"),
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", stamp.encode("latin-1")),
        # The gateway reads header bytes as Latin-1 and signs their UTF-8 encoding.
        (b"webhook-signature", sign(SIGNING_KEY, msg_id, stamp, body).encode()),
    ]
    response = gateways["signing-keys"].post_raw(IMAGE, body, headers)
    assert_handled(response)
    assert response.status_code == 401
    assert not gateways["signing-keys"].job_exists(job_id)


# --- the read API's parameters --------------------------------------------------------------------------------


@FUZZ
@given(read=READ_REQUESTS)
def test_read_api_parameters_are_answered_cleanly(
    gateways: dict[str, Gateway], read: tuple[str, dict[str, str], dict[str, str]]
) -> None:
    """Any value of any read API parameter (ids, times, cursors, limits) is a 2xx or a 4xx in the documented
    shape, never a 5xx, and never counts as a store error (tests/http/test_client_input.py runs it on PostgreSQL)."""
    client = gateways["secret"].client
    before = store_errors(client.get("/metrics").text)
    path, params, headers = read
    if path.endswith("/events"):
        headers = {"Last-Event-ID": str(2**62), **headers}  # a stream that ends: 204, 404 or 400
    response = client.get(path, params=params, headers=headers)
    assert_handled(response)
    assert store_errors(client.get("/metrics").text) == before
