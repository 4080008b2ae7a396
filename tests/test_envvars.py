"""The settings declaration is what start-up enforces: each declared bound refuses the value just past it
(naming the variable) and accepts the value on it; URLs of the wrong scheme are refused without echoing them."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings
from gateway.envvars import Declared, declared

# Values that keep the rules joining several settings out of the way of a single bound.
BASE = {"GATEWAY_MAX_BODY_BYTES": "1", "GATEWAY_IDEMPOTENCY_TTL_SECONDS": "1"}
BOUNDED = [item for item in declared(Settings) if item.env.parse is None and item.type in (int, int | None, float)]


def _text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def test_the_declaration_bounds_the_numbers_it_should() -> None:
    names = {item.env.names[0] for item in BOUNDED}
    assert {"GATEWAY_PORT", "GATEWAY_STORE_TIMEOUT_SECONDS", "GATEWAY_RETENTION_DAYS"} <= names
    assert all(item.env.meta.ge is not None for item in BOUNDED), "a number without a lower bound"


@pytest.mark.parametrize("item", BOUNDED, ids=lambda item: item.env.names[0])
def test_every_declared_bound_is_enforced_at_start_up(item: Declared) -> None:
    name, meta = item.env.names[0], item.env.meta
    step = 1 if item.type is not float else 0.001
    bounds = [(meta.ge, -step)] + ([(meta.le, step)] if meta.le is not None else [])
    for bound, past in bounds:
        assert bound is not None
        environ = {**BASE, name: _text(bound)}
        assert getattr(Settings.from_env(environ), item.field) == bound
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**BASE, name: _text(bound + past)})
        assert name in str(caught.value)
        assert _text(bound) in str(caught.value), "the message says the bound"


@pytest.mark.parametrize(
    ("name", "url", "expected"),
    [
        ("GATEWAY_NATS_URL", "http://nats:nats-pw@127.0.0.1:4222", "got scheme 'http'"),
        ("GATEWAY_NATS_URL", "nats-pw@127.0.0.1:4222", "got no scheme"),
        ("REDIS_URL", "memcached://:redis-pw@cache", "got scheme 'memcached'"),
    ],
)
def test_a_url_of_another_scheme_is_told_the_schemes_without_being_echoed(name: str, url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: url})
    message = str(caught.value)
    assert message.startswith(f"{name} must start with ")
    assert expected in message
    assert "-pw" not in message


def test_the_otlp_endpoint_is_read_specific_first_and_kept_out_of_repr() -> None:
    general = "http://otlp:otlp-pw@collector:4318"
    specific = "http://collector:4318/v1/traces"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": general}).otlp_endpoint == general
    both = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": general, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": specific})
    assert both.otlp_endpoint == specific
    assert "otlp-pw" not in repr(Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": general}))
