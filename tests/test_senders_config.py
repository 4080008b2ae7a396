"""GATEWAY_SENDERS_FILE: what the file declares, the variables it names, and every start-up refusal.

Each refusal is one line naming the sender, the key and (where there is one) the variable, never a value.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.config import ConfigError, Rate, Settings
from tests.test_cli import run_gateway

KEY_A = "whsec_" + base64.b64encode(b"a" * 24).decode()
KEY_B = "whsec_" + base64.b64encode(b"b" * 24).decode()
SECRET_A = "backend-secret-0123456789"
SECRET_B = "partner-secret-0123456789"

EXAMPLE = """
[senders.backend]
format = "native"
secret_env = "BACKEND_SECRET"
rate_limit = "50/second"
rate_limit_burst = 100

[senders.partner]
kinds = ["blog"]
signing_keys_env = "PARTNER_KEYS"
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
    assert message.startswith("GATEWAY_SENDERS_FILE (")
    for value in (SECRET_A, SECRET_B, KEY_A, KEY_B, "tiny5"):
        assert value not in message
    return message


def test_the_file_declares_each_sender_with_its_resolved_credentials(tmp_path: Path) -> None:
    loaded = settings(tmp_path, EXAMPLE, BACKEND_SECRET=SECRET_A, PARTNER_KEYS=f"{KEY_A}, {KEY_B}")
    backend, partner = loaded.active_senders
    assert (backend.name, backend.secret, backend.signing_keys, backend.kinds) == ("backend", SECRET_A, (), None)
    assert backend.rate == Rate(count=50, window_seconds=1, burst=100)
    assert (partner.name, partner.secret, partner.kinds, partner.rate) == ("partner", None, frozenset({"blog"}), None)
    assert partner.signing_keys == (b"a" * 24, b"b" * 24)
    assert loaded.authenticates
    assert SECRET_A not in repr(loaded)


def test_keys_may_be_separated_by_spaces(tmp_path: Path) -> None:
    loaded = settings(tmp_path, EXAMPLE, BACKEND_SECRET=SECRET_A, PARTNER_KEYS=f"{KEY_A} {KEY_B}")
    assert len(loaded.active_senders[1].signing_keys) == 2


def test_without_a_file_one_default_sender_has_the_webhook_variables() -> None:
    loaded = Settings.from_env({"WEBHOOK_SECRET": SECRET_A, "WEBHOOK_SIGNING_KEYS": KEY_A})
    (default,) = loaded.active_senders
    assert (default.name, default.secret, default.signing_keys, default.kinds, default.rate) == (
        "default",
        SECRET_A,
        (b"a" * 24,),
        None,
        None,
    )
    assert loaded.unnamed_credentials == ()


def test_with_a_file_the_webhook_variables_count_only_where_a_sender_names_them(tmp_path: Path) -> None:
    text = '[senders.backend]\nsecret_env = "WEBHOOK_SECRET"\n'
    loaded = settings(tmp_path, text, WEBHOOK_SECRET=SECRET_A, WEBHOOK_SIGNING_KEYS="not a key at all")
    assert loaded.active_senders[0].secret == SECRET_A
    assert loaded.signing_keys == ()
    assert loaded.unnamed_credentials == ("WEBHOOK_SIGNING_KEYS",)
    ignored = settings(tmp_path, EXAMPLE, BACKEND_SECRET=SECRET_A, PARTNER_KEYS=KEY_A, WEBHOOK_SECRET=SECRET_B)
    assert ignored.webhook_secret is None
    assert SECRET_B not in {sender.secret for sender in ignored.active_senders}
    assert ignored.unnamed_credentials == ("WEBHOOK_SECRET",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[senders.backend\nsecret_env = 1", "is not valid TOML"),
        ("[sender.backend]\n", "unknown top-level key 'sender'"),
        ("", "declares no sender"),
        ('[senders."Back End"]\n', "sender 'Back End': a name is 1 to 64 of a-z"),
        (f"[senders.{'a' * 65}]\n", "a name is 1 to 64"),
        ('[senders.backend]\nsecret = "BACKEND_SECRET"\n', "sender 'backend': unknown key 'secret'"),
        ('[senders.backend]\nformat = "stripe"\n', "sender 'backend': unknown format 'stripe'"),
        ('[senders.backend]\nkinds = ["video"]\n', "sender 'backend': kinds: unknown kind 'video'"),
        ('[senders.backend]\nkinds = "image"\n', "sender 'backend': kinds: Expected `array"),
        ('[senders.backend]\nrate_limit = "fast"\n', "sender 'backend': rate_limit must look like <count>/"),
        ('[senders.backend]\nrate_limit = "5/second"\nrate_limit_burst = 0\n', "rate_limit_burst must be >= 1"),
        ("[senders.backend]\nrate_limit_burst = 5\n", "rate_limit_burst is set but rate_limit is not"),
    ],
)
def test_a_file_that_cannot_be_used_is_refused_naming_sender_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text)


def test_an_unset_or_empty_variable_is_refused_naming_it(tmp_path: Path) -> None:
    message = refusal(tmp_path, EXAMPLE, PARTNER_KEYS=KEY_A)
    assert "sender 'backend': secret_env names BACKEND_SECRET, which is unset or empty" in message
    message = refusal(tmp_path, EXAMPLE, BACKEND_SECRET=SECRET_A, PARTNER_KEYS="  ")
    assert "sender 'partner': signing_keys_env names PARTNER_KEYS, which is unset or empty" in message


def test_a_malformed_key_is_refused_naming_its_variable_and_position(tmp_path: Path) -> None:
    message = refusal(tmp_path, EXAMPLE, BACKEND_SECRET=SECRET_A, PARTNER_KEYS=f"{KEY_A} whsec_short")
    assert "sender 'partner': signing_keys_env PARTNER_KEYS: key #2" in message


def test_two_senders_sharing_a_credential_are_refused(tmp_path: Path) -> None:
    shared_secret = '[senders.one]\nsecret_env = "ONE"\n[senders.two]\nsecret_env = "TWO"\n'
    message = refusal(tmp_path, shared_secret, ONE=SECRET_A, TWO=SECRET_A)
    assert "sender 'two': secret_env TWO holds a credential of sender 'one' (secret_env ONE)" in message
    shared_key = '[senders.one]\nsigning_keys_env = "ONE"\n[senders.two]\nsigning_keys_env = "TWO"\n'
    message = refusal(tmp_path, shared_key, ONE=f"{KEY_A} {KEY_B}", TWO=KEY_B)
    assert "sender 'two': signing_keys_env TWO holds a credential of sender 'one'" in message
    # One sender's secret that is another's signing key: holding the secret would sign as the other.
    secret_and_key = '[senders.one]\nsecret_env = "ONE"\n[senders.two]\nsigning_keys_env = "TWO"\n'
    message = refusal(tmp_path, secret_and_key, ONE=KEY_B, TWO=f"{KEY_A} {KEY_B}")
    assert "sender 'two': signing_keys_env TWO holds a credential of sender 'one' (secret_env ONE)" in message


def test_production_refuses_a_sender_without_credential_or_with_a_short_secret(tmp_path: Path) -> None:
    production = {"GATEWAY_ENV": "production", "GATEWAY_API_TOKEN": "t" * 32}
    anyone = '[senders.backend]\nkinds = ["image"]\n'
    assert "sender 'backend': GATEWAY_ENV=production needs secret_env or signing_keys_env" in refusal(
        tmp_path, anyone, **production
    )
    short = '[senders.backend]\nsecret_env = "BACKEND_SECRET"\n'
    message = refusal(tmp_path, short, BACKEND_SECRET="tiny5", **production)
    assert "sender 'backend': secret_env BACKEND_SECRET must hold at least 16 characters in production" in message
    assert settings(tmp_path, short, BACKEND_SECRET=SECRET_A, **production).authenticates


def test_an_unreadable_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GATEWAY_SENDERS_FILE \(.*missing.toml\): cannot be read"):
        Settings.from_env({"GATEWAY_SENDERS_FILE": str(tmp_path / "missing.toml")})


def test_the_cli_refuses_a_bad_file_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "senders.toml"
    path.write_text('[senders.backend]\nsecret_env = "BACKEND_SECRET"\n')
    result = run_gateway(tmp_path, "migrate", env={"GATEWAY_SENDERS_FILE": str(path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gateway: configuration error: GATEWAY_SENDERS_FILE ({path}): sender 'backend': secret_env names "
        "BACKEND_SECRET, which is unset or empty"
    ]


def test_the_documented_example_file_is_valid(tmp_path: Path) -> None:
    """docs/senders.md's example file declares what it says, once its variables are set."""
    page = (Path(__file__).parent.parent / "docs" / "senders.md").read_text()
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    loaded = settings(
        tmp_path,
        example,
        BACKEND_WEBHOOK_SECRET=SECRET_A,
        WRITER_SIGNING_KEYS=f"{KEY_A} {KEY_B}",
        PARTNER_WEBHOOK_SECRET=SECRET_B,
        PARTNER_SIGNING_KEYS="whsec_" + base64.b64encode(b"c" * 24).decode(),
        GATEWAY_ENV="production",
        GATEWAY_API_TOKEN="t" * 32,
    )
    backend, writer, partner = loaded.active_senders
    assert backend.rate == Rate(count=200, window_seconds=1, burst=400)
    assert (writer.kinds, len(writer.signing_keys), writer.rate) == (frozenset({"blog"}), 2, Rate(20, 1, 20))
    assert (partner.kinds, partner.secret, partner.rate) == (frozenset({"image"}), SECRET_B, None)
