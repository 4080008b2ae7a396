"""The Standard Webhooks module against the ``standardwebhooks`` library, both ways, and its edge cases."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from gateway.signatures import InvalidKey, parse_header, parse_key, sign, verify

KEY = b"contract-key-0123456789"
OTHER = b"another-key-0123456789a"
WHSEC = "whsec_" + base64.b64encode(KEY).decode()

keys = st.binary(min_size=16, max_size=100)  # past 64 bytes too: HMAC hashes such a key first
message_ids = st.text(min_size=1, max_size=40)
bodies = st.text(max_size=300)


def _headers(message_id: str, timestamp: str, signature: str) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


@settings(max_examples=60, deadline=None)
@given(key=keys, message_id=message_ids, body=bodies)
def test_our_signature_verifies_with_the_library(key: bytes, message_id: str, body: str) -> None:
    timestamp = str(int(datetime.now(UTC).timestamp()))
    signature = sign(key, message_id, timestamp, body.encode())
    Webhook(key).verify(body.encode(), _headers(message_id, timestamp, signature), json_parse=False)


@settings(max_examples=60, deadline=None)
@given(key=keys, message_id=message_ids, body=bodies)
def test_the_librarys_signature_verifies_with_ours(key: bytes, message_id: str, body: str) -> None:
    whsec = "whsec_" + base64.b64encode(key).decode()
    now = datetime.now(UTC)
    signature = Webhook(whsec).sign(message_id, now, body)
    timestamp = str(int(now.timestamp()))
    assert verify([parse_key(whsec)], message_id, timestamp, body.encode(), signature)
    assert sign(parse_key(whsec), message_id, timestamp, body.encode()) == signature


def test_any_signature_of_the_header_with_any_key_verifies() -> None:
    """Rotation: the sender signs with old and new keys; the receiver holds either, or both."""
    theirs = sign(OTHER, "msg_1", "1700000000", b"{}")
    ours = sign(KEY, "msg_1", "1700000000", b"{}")
    for header in (f"{ours} {theirs}", f"{theirs} {ours}", f"{theirs}  {ours} "):
        assert verify([KEY], "msg_1", "1700000000", b"{}", header)
        assert verify([b"unrelated-key-0123456", KEY], "msg_1", "1700000000", b"{}", header)
    assert not verify([b"unrelated-key-0123456"], "msg_1", "1700000000", b"{}", f"{ours} {theirs}")
    assert not verify([], "msg_1", "1700000000", b"{}", ours)


@pytest.mark.parametrize(
    ("message_id", "timestamp", "body"),
    [("msg_2", "1700000000", b"{}"), ("msg_1", "1700000001", b"{}"), ("msg_1", "1700000000", b"{} ")],
)
def test_a_signature_covers_id_timestamp_and_body(message_id: str, timestamp: str, body: bytes) -> None:
    header = sign(KEY, "msg_1", "1700000000", b"{}")
    assert not verify([KEY], message_id, timestamp, body, header)


def test_unknown_versions_missing_commas_and_bad_base64_are_skipped() -> None:
    good = sign(KEY, "msg_1", "1700000000", b"{}")
    encoded = good.removeprefix("v1,")
    skipped = [f"v1a,{encoded}", f"v2,{encoded}", f"v1{encoded}", encoded, "v1,!!!not-base64", "v1,abc", ","]
    for token in skipped:
        assert parse_header(token) == []
        assert not verify([KEY], "msg_1", "1700000000", b"{}", token)
    # Skipped tokens do not hide a good signature beside them.
    header = " ".join([*skipped, good])
    assert parse_header(header) == [base64.b64decode(encoded)]
    assert verify([KEY], "msg_1", "1700000000", b"{}", header)


def test_a_whsec_key_is_decoded() -> None:
    assert parse_key(WHSEC) == KEY
    assert parse_key(base64.b64encode(KEY).decode(), prefix_optional=True) == KEY


@pytest.mark.parametrize(
    ("text", "prefix_optional", "message"),
    [
        (base64.b64encode(KEY).decode(), False, "must start with 'whsec_' (a Standard Webhooks key)"),
        ("not base64!", True, "must start with 'whsec_', followed by the key in base64"),
        ("whsec_!!!notbase64", True, "is not valid base64 after its 'whsec_' prefix"),
        ("whsec_!!!notbase64", False, "is not valid base64 after its 'whsec_' prefix"),
        ("whsec_" + base64.b64encode(b"short-key").decode(), False, "is shorter than 16 bytes once decoded"),
        (base64.b64encode(b"short-key").decode(), True, "is shorter than 16 bytes once decoded"),
    ],
)
def test_an_unusable_key_is_refused_without_echoing_it(text: str, prefix_optional: bool, message: str) -> None:
    with pytest.raises(InvalidKey) as raised:
        parse_key(text, prefix_optional=prefix_optional)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith(message)
    assert text.removeprefix("whsec_") not in str(raised.value)
