"""Rate limiting settings: the names outside tooling relies on, their defaults, and start-up errors."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.config import ConfigError, Rate, Settings


def test_by_default_nothing_is_limited_and_no_redis_is_used() -> None:
    settings = Settings.from_env({})
    assert settings.rate_limit is None
    assert settings.global_rate_limit is None
    assert settings.rate_limit_on_error == "allow"
    assert settings.trusted_proxies == ()
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        ("100/second", Rate(count=100, window_seconds=1, burst=100)),
        ("5/minute", Rate(count=5, window_seconds=60, burst=5)),
        ("1/hour", Rate(count=1, window_seconds=3600, burst=1)),
        (" 100 / Second ", Rate(count=100, window_seconds=1, burst=100)),
    ],
)
def test_a_rate_is_count_per_period_and_its_burst_defaults_to_the_count(value: str, rate: Rate) -> None:
    assert Settings.from_env({"GATEWAY_RATE_LIMIT": value}).rate_limit == rate


def test_bursts_and_the_global_limit_are_read() -> None:
    settings = Settings.from_env(
        {
            "GATEWAY_RATE_LIMIT": "10/second",
            "GATEWAY_RATE_LIMIT_BURST": "50",
            "GATEWAY_RATE_LIMIT_GLOBAL": "1000/minute",
            "GATEWAY_RATE_LIMIT_GLOBAL_BURST": "200",
            "GATEWAY_RATE_LIMIT_ON_ERROR": "deny",
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7,2001:db8::/32",
            "REDIS_URL": "redis://127.0.0.1:6379/1",
            "GATEWAY_REDIS_KEY_PREFIX": "staging:",
        }
    )
    assert settings.rate_limit == Rate(count=10, window_seconds=1, burst=50)
    assert settings.global_rate_limit == Rate(count=1000, window_seconds=60, burst=200)
    assert settings.rate_limit_on_error == "deny"
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert settings.redis_url == "redis://127.0.0.1:6379/1"
    assert settings.redis_key_prefix == "staging:"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"GATEWAY_RATE_LIMIT": "100"}, "GATEWAY_RATE_LIMIT"),
        ({"GATEWAY_RATE_LIMIT": "100/day"}, "GATEWAY_RATE_LIMIT"),
        ({"GATEWAY_RATE_LIMIT": "lots/second"}, "GATEWAY_RATE_LIMIT"),
        ({"GATEWAY_RATE_LIMIT": "0/second"}, "GATEWAY_RATE_LIMIT"),
        ({"GATEWAY_RATE_LIMIT": "-5/second"}, "GATEWAY_RATE_LIMIT"),
        ({"GATEWAY_RATE_LIMIT": "2000000/second"}, "GATEWAY_RATE_LIMIT"),
        ({"GATEWAY_RATE_LIMIT": "10/second", "GATEWAY_RATE_LIMIT_BURST": "0"}, "GATEWAY_RATE_LIMIT_BURST"),
        ({"GATEWAY_RATE_LIMIT_BURST": "10"}, "GATEWAY_RATE_LIMIT_BURST"),
        ({"GATEWAY_RATE_LIMIT_GLOBAL": "10/fortnight"}, "GATEWAY_RATE_LIMIT_GLOBAL"),
        ({"GATEWAY_RATE_LIMIT_GLOBAL_BURST": "10"}, "GATEWAY_RATE_LIMIT_GLOBAL_BURST"),
        ({"GATEWAY_RATE_LIMIT_ON_ERROR": "maybe"}, "GATEWAY_RATE_LIMIT_ON_ERROR"),
        ({"GATEWAY_TRUSTED_PROXIES": "proxy.internal"}, "GATEWAY_TRUSTED_PROXIES"),
        ({"GATEWAY_TRUSTED_PROXIES": "10.0.0.1/8"}, "GATEWAY_TRUSTED_PROXIES"),  # host bits: a typo
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"),
    ],
)
def test_a_bad_rate_limit_setting_stops_start_up_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    assert named in str(caught.value)


@pytest.mark.parametrize("url", ["redis://:hunter2@cache:6379/0", "memcached://user:hunter2@cache", "hunter2@cache"])
def test_the_redis_password_is_never_echoed(url: str) -> None:
    try:
        text = repr(Settings.from_env({"REDIS_URL": url}))
    except ConfigError as error:
        text = str(error)
    assert "hunter2" not in text
