"""Settings read from the environment: the defaults a bare deployment gets, the start-up errors a bad value gives."""

from __future__ import annotations

import base64

import pytest

from gateway.config import ConfigError, PostgresDatabase, Settings

KEY_1 = b"0123456789abcdef0123456789abcdef"
KEY_2 = b"fedcba9876543210fedcba9876543210"
KEY_3 = bytes(range(24))


def whsec(key: bytes, *, prefix: bool = True) -> str:
    encoded = base64.b64encode(key).decode()
    return f"whsec_{encoded}" if prefix else encoded


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    """With nothing set, the gateway binds 127.0.0.1:8000, stores jobs in ./gateway.db and accepts anyone."""
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.tolerance_seconds == 300
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.idempotency_ttl_seconds == 72 * 3600
    assert settings.database.path == "gateway.db"
    assert settings.log_level == "INFO"
    assert settings.webhook_secret is None
    assert settings.signing_keys == ()
    assert settings.authenticates is False


def test_blank_values_count_as_unset() -> None:
    """A variable exported empty (``GATEWAY_PORT=``) keeps the default instead of failing start-up."""
    settings = Settings.from_env({"GATEWAY_PORT": "  ", "WEBHOOK_SECRET": "", "DATABASE_URL": " "})
    assert settings.port == 8000
    assert settings.webhook_secret is None
    assert settings.database.path == "gateway.db"


def test_values_are_read_and_converted() -> None:
    """Every variable reaches the setting it documents, converted to its type."""
    settings = Settings.from_env(
        {
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": "65535",
            "WEBHOOK_TOLERANCE_SECONDS": "1",
            "GATEWAY_MAX_BODY_BYTES": "2048",
            "GATEWAY_BODY_TIMEOUT_SECONDS": "2.5",
            "GATEWAY_MAX_BUFFERED_BYTES": "4096",
            "GATEWAY_IDEMPOTENCY_TTL_SECONDS": "60",
            "GATEWAY_IDEMPOTENCY_MAX_KEYS": "10",
            "GATEWAY_LOG_LEVEL": "debug",
            "WEBHOOK_SECRET": "s3cret",
        }
    )
    assert settings.host == "0.0.0.0"
    assert settings.port == 65535
    assert settings.tolerance_seconds == 1
    assert settings.max_body_bytes == 2048
    assert settings.body_timeout_seconds == 2.5
    assert settings.max_buffered_bytes == 4096
    assert settings.idempotency_ttl_seconds == 60
    assert settings.idempotency_max_keys == 10
    assert settings.log_level == "DEBUG"
    assert settings.webhook_secret == "s3cret"
    assert settings.authenticates is True


def test_without_a_mapping_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gateway serve`` reads the real environment."""
    monkeypatch.setenv("GATEWAY_PORT", "9123")
    monkeypatch.delenv("GATEWAY_ENV", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert Settings.from_env().port == 9123


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "abc"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_PORT", "0"),
        ("GATEWAY_PORT", "80.5"),
        ("GATEWAY_ENV", "staging"),
        ("WEBHOOK_TOLERANCE_SECONDS", "0"),
        ("GATEWAY_MAX_BODY_BYTES", "-1"),
        ("GATEWAY_BODY_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_BODY_TIMEOUT_SECONDS", "forever"),
        ("GATEWAY_MAX_BUFFERED_BYTES", "0"),
        ("GATEWAY_MAX_BUFFERED_BYTES", "1000"),  # less than the body limit: no full-size body could be read
        ("GATEWAY_IDEMPOTENCY_TTL_SECONDS", "0"),
        ("GATEWAY_IDEMPOTENCY_MAX_KEYS", "many"),
        ("GATEWAY_LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "postgresql:///gateway"),
        ("GATEWAY_DB_POOL_SIZE", "0"),
        ("GATEWAY_STORE_TIMEOUT_SECONDS", "soon"),
        ("GATEWAY_STORE_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_MIGRATE_ON_START", "maybe"),
        ("GATEWAY_REDIS_POOL_SIZE", "0"),
        ("DATABASE_URL", "sqlite://"),
        ("DATABASE_URL", "sqlite:////nonexistent-dir/x.db"),
        ("WEBHOOK_SIGNING_KEYS", "whsec_!!!notbase64"),
        ("GATEWAY_NATS_SUBJECT_PREFIX", "gateway.*"),
        ("GATEWAY_NATS_SUBJECT_PREFIX", "gateway..jobs"),
        ("GATEWAY_NATS_SUBJECT_PREFIX", "gateway.jobs."),
        ("GATEWAY_NATS_STREAM", "GATEWAY.JOBS"),
        ("GATEWAY_NATS_STREAM", "gateway jobs"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    """A typo in a deployment is refused with the variable's name, never replaced by a default."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "position"),
    [
        ("whsec_!!!notbase64", "#1"),
        (f"{whsec(KEY_1)},whsec_!!!notbase64", "#2"),
        (whsec(b"short-key"), "#1"),  # valid base64, but 9 bytes once decoded
    ],
)
def test_a_bad_signing_key_is_not_echoed(keys: str, position: str) -> None:
    """The error names the key's position, never its text: start-up errors end up in logs."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WEBHOOK_SIGNING_KEYS": keys})
    message = str(caught.value)
    assert "WEBHOOK_SIGNING_KEYS" in message
    for token in keys.split(","):
        assert token.removeprefix("whsec_") not in message
    assert position in message


def test_secrets_are_left_out_of_the_settings_repr() -> None:
    """Logging the settings object does not leak the shared secret or the signing keys."""
    settings = Settings.from_env({"WEBHOOK_SECRET": "top-secret-value", "WEBHOOK_SIGNING_KEYS": whsec(KEY_1)})
    text = repr(settings)
    assert "top-secret-value" not in text
    assert base64.b64encode(KEY_1).decode() not in text
    assert repr(KEY_1) not in text


def test_production_without_credentials_refuses_to_start() -> None:
    """Production never silently accepts unauthenticated webhooks."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"GATEWAY_ENV": "production"})
    message = str(caught.value)
    assert "WEBHOOK_SECRET" in message
    assert "WEBHOOK_SIGNING_KEYS" in message


@pytest.mark.parametrize(
    "credentials",
    [{"WEBHOOK_SECRET": "s3cret-of-16-chars"}, {"WEBHOOK_SIGNING_KEYS": whsec(KEY_1)}],
    ids=["shared-secret", "signing-keys"],
)
def test_production_with_a_credential_starts(credentials: dict[str, str]) -> None:
    """Either way of authenticating senders is enough for production."""
    settings = Settings.from_env({"GATEWAY_ENV": "production", "GATEWAY_PUBLIC_READ": "true", **credentials})
    assert settings.env == "production"
    assert settings.authenticates is True


@pytest.mark.parametrize("secret", ["abc", "fifteen-chars!!"])
def test_production_refuses_a_short_shared_secret_and_says_how_to_make_one(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"GATEWAY_ENV": "production", "GATEWAY_PUBLIC_READ": "true", "WEBHOOK_SECRET": secret})
    message = str(caught.value)
    assert "WEBHOOK_SECRET" in message
    assert "16 characters" in message
    assert "secrets.token_urlsafe" in message
    assert secret not in message


def test_a_short_shared_secret_still_starts_in_development() -> None:
    assert Settings.from_env({"WEBHOOK_SECRET": "abc"}).webhook_secret == "abc"


def test_sixteen_characters_are_enough_in_production() -> None:
    settings = Settings.from_env(
        {"GATEWAY_ENV": "production", "GATEWAY_PUBLIC_READ": "true", "WEBHOOK_SECRET": "x" * 16}
    )
    assert settings.webhook_secret == "x" * 16


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///rel.db", "rel.db"),
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls_map_to_file_paths(url: str, path: str) -> None:
    """Three slashes mean a path relative to the working directory, four an absolute one."""
    assert Settings.from_env({"DATABASE_URL": url}).database.path == path


def test_several_signing_keys_are_decoded_in_order() -> None:
    """Key rotation: every listed key is usable, with or without the ``whsec_`` prefix and stray spaces."""
    value = f"{whsec(KEY_1)}, {whsec(KEY_2, prefix=False)} ,{whsec(KEY_3)},"
    settings = Settings.from_env({"WEBHOOK_SIGNING_KEYS": value})
    assert settings.signing_keys == (KEY_1, KEY_2, KEY_3)
    assert settings.authenticates is True


def test_a_postgresql_url_selects_the_shared_job_store_and_hides_its_password() -> None:
    url = "postgresql://gateway:s3cret-pw@db.internal:5432/gateway"
    settings = Settings.from_env({"DATABASE_URL": url, "GATEWAY_DB_POOL_SIZE": "25"})
    assert isinstance(settings.database, PostgresDatabase)
    assert settings.database.url == url
    assert settings.db_pool_size == 25
    assert "s3cret-pw" not in repr(settings)
    assert settings.database.shown == "postgresql://gateway:***@db.internal:5432/gateway"
    assert isinstance(Settings.from_env({"DATABASE_URL": "postgres://db/g"}).database, PostgresDatabase)


def test_a_mistyped_database_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": "postgresq://gateway:s3cret-pw@db/gateway"})
    assert "DATABASE_URL" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": "gateway:s3cret-pw@db/gateway"})
    assert "s3cret-pw" not in str(caught.value)


def test_nats_subjects_and_stream_default_to_the_documented_names_and_can_be_moved() -> None:
    defaults = Settings.from_env({"GATEWAY_NATS_URL": "nats://127.0.0.1:4222"})
    assert (defaults.nats_subject_prefix, defaults.nats_stream) == ("gateway.jobs", "GATEWAY_JOBS")
    moved = Settings.from_env({"GATEWAY_NATS_SUBJECT_PREFIX": "staging.gw-1.jobs", "GATEWAY_NATS_STREAM": "GW_STAGING"})
    assert (moved.nats_subject_prefix, moved.nats_stream) == ("staging.gw-1.jobs", "GW_STAGING")


@pytest.mark.parametrize("url", ["sqlite:/gateway.db", "sqlite:gateway.db", "sqlite://gateway.db", "sqlite://"])
def test_a_sqlite_url_with_too_few_slashes_is_told_the_right_form(url: str) -> None:
    """``sqlite:/gateway.db`` has a scheme: the message shows the forms that work, not "no scheme"."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": url})
    message = str(caught.value)
    assert "no scheme" not in message
    assert "sqlite:///gateway.db" in message
    assert "sqlite:////abs/path/gateway.db" in message


def test_a_signing_key_without_its_prefix_is_told_to_start_with_whsec() -> None:
    """A key that is neither ``whsec_...`` nor base64 is not said to have a prefix it lacks."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WEBHOOK_SIGNING_KEYS": "abc"})
    message = str(caught.value)
    assert "key #1 must start with 'whsec_'" in message
    assert "after its 'whsec_' prefix" not in message
    assert "abc" not in message
