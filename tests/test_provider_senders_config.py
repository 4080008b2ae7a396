"""Provider senders and ed25519 keys in GATEWAY_SENDERS_FILE: what they declare, and every start-up refusal
(one line naming the sender, the key and the variable, never a value)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.config import ConfigError, Settings
from gateway.signatures import Ed25519PrivateKey

WHSEC = "whsec_" + base64.b64encode(b"r" * 32).decode()
PUBLIC = Ed25519PrivateKey.generate().public_key()
WHPK = "whpk_" + base64.b64encode(PUBLIC.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
PRODUCTION = {"GATEWAY_ENV": "production", "GATEWAY_API_TOKEN": "t" * 32}

PROVIDERS = """
[senders.replicate]
format = "replicate"
kind = "image"
signing_keys_env = "REPLICATE_WEBHOOK_SECRET"

[senders.fal]
format = "fal"
kind = "image"
jwks_url = "https://rest.alpha.fal.ai/.well-known/jwks.json"

[senders.signer]
public_keys_env = "SIGNER_KEYS"
"""


def settings(tmp_path: Path, text: str, **env: str) -> Settings:
    path = tmp_path / "senders.toml"
    path.write_text(text)
    return Settings.from_env({"GATEWAY_SENDERS_FILE": str(path), **env})


def refusal(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, text, **env)
    message = str(caught.value)
    assert "\n" not in message
    assert WHSEC not in message
    assert WHPK not in message
    return message


def test_providers_declare_one_kind_and_their_providers_credentials(tmp_path: Path) -> None:
    loaded = settings(tmp_path, PROVIDERS, REPLICATE_WEBHOOK_SECRET=WHSEC, SIGNER_KEYS=f"{WHPK},{WHPK}", **PRODUCTION)
    replicate, fal, signer = loaded.active_senders
    assert (replicate.format, replicate.kind, replicate.kinds, replicate.provider) == (
        "replicate",
        "image",
        frozenset({"image"}),
        True,
    )
    assert replicate.signing_keys == (b"r" * 32,)
    assert (fal.format, fal.jwks_url, fal.authenticates) == (
        "fal",
        "https://rest.alpha.fal.ai/.well-known/jwks.json",
        True,
    )
    assert (signer.provider, len(signer.public_keys), signer.kinds) == (False, 2, None)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[senders.r]\nformat = "replicate"\n', {}, "sender 'r': format replicate needs kind"),
        (
            '[senders.r]\nformat = "openai"\nkinds = ["blog"]\n',
            {},
            "sender 'r': format openai declares kind (one kind), not kinds",
        ),
        ('[senders.r]\nkind = "image"\n', {}, "sender 'r': kind is for a provider's format"),
        ('[senders.r]\nformat = "fal"\nkind = "video"\n', {}, "sender 'r': kind: unknown kind 'video'"),
        (
            '[senders.r]\nformat = "replicate"\nkind = "image"\nsecret_env = "S"\n',
            {"S": "secret-0123456789abcdef"},
            "sender 'r': secret_env is not used by format replicate (it takes signing_keys_env)",
        ),
        (
            '[senders.r]\nformat = "fal"\nkind = "image"\nsigning_keys_env = "K"\n',
            {"K": WHSEC},
            "sender 'r': signing_keys_env is not used by format fal (it takes public_keys_env, jwks_url)",
        ),
        (
            '[senders.r]\npublic_keys_env = "K"\n',
            {"K": f"{WHPK} whpk_c2hvcnQ="},
            "sender 'r': public_keys_env K: key #2 must hold 32 bytes",
        ),
        ('[senders.r]\npublic_keys_env = "K"\n', {}, "sender 'r': public_keys_env names K, which is unset or empty"),
        (
            '[senders.r]\nformat = "fal"\nkind = "image"\njwks_url = "http://keys.example/jwks.json"\n',
            PRODUCTION,
            "sender 'r': jwks_url must start with https:// in production",
        ),
        ('[senders.r]\nformat = "fal"\nkind = "image"\n', PRODUCTION, "sender 'r': GATEWAY_ENV=production needs"),
    ],
)
def test_a_provider_or_key_that_cannot_be_used_is_refused_naming_it(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    assert expected in refusal(tmp_path, text, **env)


def test_http_jwks_urls_are_allowed_outside_production(tmp_path: Path) -> None:
    text = '[senders.r]\nformat = "fal"\nkind = "image"\njwks_url = "http://127.0.0.1:8080/jwks.json"\n'
    (sender,) = settings(tmp_path, text).active_senders
    assert sender.jwks_url == "http://127.0.0.1:8080/jwks.json"
