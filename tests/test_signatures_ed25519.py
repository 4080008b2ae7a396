"""ed25519 signatures: Standard Webhooks ``v1a`` (``whpk_`` keys, rotation) and fal's own scheme.

The sender's side is signed here with the ``cryptography`` library directly, over the bytes each
specification names, so a mistake in :mod:`gateway.signatures`' message building cannot cancel out.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.signatures import (
    Ed25519PrivateKey,
    InvalidKey,
    parse_header,
    parse_public_key,
    parse_secret_key,
    public_key_text,
    sign,
    sign_fal,
    sign_v1a,
    verify,
    verify_fal,
    verify_v1a,
)

BODY = b'{"job_id": "job-1", "status": "completed"}'


def _v1a(key: Ed25519PrivateKey, message_id: str, timestamp: str, body: bytes) -> str:
    """A sender's ``v1a`` signature, per the Standard Webhooks spec: ed25519 over ``id.timestamp.body``."""
    return "v1a," + base64.b64encode(key.sign(f"{message_id}.{timestamp}.".encode() + body)).decode()


def _whpk(key: Ed25519PrivateKey) -> str:
    return "whpk_" + base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def test_a_senders_v1a_signature_verifies_with_its_whpk_key() -> None:
    sender = Ed25519PrivateKey.generate()
    header = _v1a(sender, "msg_1", "1700000000", BODY)
    key = parse_public_key(_whpk(sender))
    assert verify_v1a([key], "msg_1", "1700000000", BODY, header)
    assert sign_v1a(sender, "msg_1", "1700000000", BODY) == header  # ed25519 is deterministic
    assert public_key_text(key) == _whpk(sender)


@pytest.mark.parametrize(
    ("message_id", "timestamp", "body"),
    [("msg_2", "1700000000", BODY), ("msg_1", "1700000001", BODY), ("msg_1", "1700000000", BODY + b" ")],
)
def test_a_v1a_signature_over_another_message_fails(message_id: str, timestamp: str, body: bytes) -> None:
    sender = Ed25519PrivateKey.generate()
    header = _v1a(sender, "msg_1", "1700000000", BODY)
    assert not verify_v1a([sender.public_key()], message_id, timestamp, body, header)


def test_any_v1a_signature_with_any_key_verifies_rotation() -> None:
    """The sender signs with its old and new keys; the receiver holds either, or both."""
    old, new, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    both = f"{_v1a(old, 'm', '1', BODY)} {_v1a(new, 'm', '1', BODY)}"
    for keys in ([old.public_key()], [new.public_key()], [stranger.public_key(), new.public_key()]):
        assert verify_v1a(keys, "m", "1", BODY, both)
    assert not verify_v1a([stranger.public_key()], "m", "1", BODY, both)
    assert not verify_v1a([], "m", "1", BODY, both)


def test_v1_and_v1a_signatures_share_a_header_without_confusion() -> None:
    """A header may carry both versions: each verifier reads its own tokens and skips the other's."""
    hmac_key = b"contract-key-0123456789"
    sender = Ed25519PrivateKey.generate()
    header = f"{sign(hmac_key, 'm', '1', BODY)} {_v1a(sender, 'm', '1', BODY)}"
    assert verify([hmac_key], "m", "1", BODY, header)
    assert verify_v1a([sender.public_key()], "m", "1", BODY, header)
    assert len(parse_header(header)) == 1
    assert len(parse_header(header, "v1a")) == 1
    assert not verify_v1a([sender.public_key()], "m", "1", BODY, sign(hmac_key, "m", "1", BODY))


@pytest.mark.parametrize(
    "header",
    ["", "v1a", "v1a,", "v1a,not base64!", "v1a," + base64.b64encode(b"short").decode(), "v1a," + "A" * 88],
)
def test_a_malformed_v1a_header_verifies_nothing(header: str) -> None:
    assert not verify_v1a([Ed25519PrivateKey.generate().public_key()], "m", "1", BODY, header)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MCowBQYDK2VwAyEA", "must start with 'whpk_'"),
        ("whpk_***", "is not valid base64 after its 'whpk_' prefix"),
        ("whpk_" + base64.b64encode(b"x" * 31).decode(), "must hold 32 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 32).decode(), "must start with 'whpk_'"),
    ],
)
def test_a_malformed_public_key_is_refused_without_echoing_it(text: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message) as refused:
        parse_public_key(text)
    assert text not in str(refused.value)


def test_a_whsk_secret_key_signs_for_its_whpk_public_key() -> None:
    seed = bytes(range(32))
    secret = parse_secret_key("whsk_" + base64.b64encode(seed).decode())
    public = parse_public_key(public_key_text(secret.public_key()))
    assert verify_v1a([public], "m", "1", BODY, sign_v1a(secret, "m", "1", BODY))
    with pytest.raises(InvalidKey, match="must start with 'whsk_'"):
        parse_secret_key(base64.b64encode(seed).decode())


# fal: https://docs.fal.ai/model-apis/model-endpoints/webhooks ("Verifying Your Webhook"): the message is
# the request id, the user id, the timestamp and the body's hex SHA-256, joined by newlines; the
# X-Fal-Webhook-Signature header is the ed25519 signature in hex.
FAL_BODY = (
    b'{"request_id": "123e4567-e89b-12d3-a456-426614174000", "gateway_request_id": '
    b'"123e4567-e89b-12d3-a456-426614174000", "status": "OK", "payload": {"images": [{"url": '
    b'"https://url.to/image.png", "content_type": "image/png", "file_name": "image.png", '
    b'"file_size": 1824075, "width": 1024, "height": 1024}], "seed": 196619188014358660}}'
)


def _fal(key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
    message = "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()])
    return key.sign(message.encode()).hex()


def test_a_fal_signature_verifies_with_one_of_its_published_keys() -> None:
    fal, retired = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    request_id = "123e4567-e89b-12d3-a456-426614174000"
    signature = _fal(fal, request_id, "user-1", "1752019770", FAL_BODY)
    keys = [retired.public_key(), fal.public_key()]
    assert verify_fal(keys, request_id, "user-1", "1752019770", FAL_BODY, signature)
    assert sign_fal(fal, request_id, "user-1", "1752019770", FAL_BODY) == signature
    assert not verify_fal([retired.public_key()], request_id, "user-1", "1752019770", FAL_BODY, signature)


@pytest.mark.parametrize(
    ("request_id", "user_id", "timestamp", "body"),
    [
        ("other-request", "user-1", "1752019770", FAL_BODY),
        ("req-1", "user-2", "1752019770", FAL_BODY),
        ("req-1", "user-1", "1752019771", FAL_BODY),
        ("req-1", "user-1", "1752019770", FAL_BODY + b"\n"),
    ],
)
def test_a_fal_signature_over_another_message_fails(request_id: str, user_id: str, timestamp: str, body: bytes) -> None:
    fal = Ed25519PrivateKey.generate()
    signature = _fal(fal, "req-1", "user-1", "1752019770", FAL_BODY)
    assert not verify_fal([fal.public_key()], request_id, user_id, timestamp, body, signature)


@pytest.mark.parametrize("signature", ["", "zz", "v1a,AAAA", "00" * 63])
def test_a_malformed_fal_signature_verifies_nothing(signature: str) -> None:
    assert not verify_fal([Ed25519PrivateKey.generate().public_key()], "r", "u", "1", FAL_BODY, signature)
