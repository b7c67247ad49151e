"""RedisConfig: defaults, validation that names the field, URLs, the environment."""

from __future__ import annotations

import pytest

from ailf import ConfigError, RedisConfig, RetryPolicy


def test_defaults_match_a_local_redis() -> None:
    config = RedisConfig()
    assert (config.host, config.port, config.db) == ("localhost", 6379, 0)
    assert config.decode_responses is True
    assert config.address == "localhost:6379"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("port", 0, "1..65535"),
        ("port", 70000, "1..65535"),
        ("port", "6379", "1..65535"),
        ("db", -1, ">= 0"),
        ("socket_timeout", 0, "> 0"),
        ("socket_connect_timeout", -1.5, "> 0"),
        ("max_connections", 0, ">= 1"),
        ("ssl", "yes", "True or False"),
        ("ssl_cert_reqs", "sometimes", "'required'"),
        ("host", "", "non-empty"),
        ("host", 5, "non-empty"),
        ("socket_timeout", float("nan"), "> 0"),
        ("client_name", "my worker", "without spaces"),
        ("retry", 3, "a RetryPolicy"),
    ],
)
def test_bad_values_name_the_field_and_the_value(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(**{field: value})
    message = str(info.value)
    assert f"RedisConfig.{field}" in message
    assert repr(value) in message
    assert expected in message


def test_float_timeouts_are_allowed() -> None:
    config = RedisConfig(socket_timeout=0.25, socket_connect_timeout=1.5)
    assert config.socket_timeout == 0.25


def test_repr_never_shows_the_password() -> None:
    config = RedisConfig(password="hunter2")
    assert "hunter2" not in repr(config)
    assert "***" in repr(config)
    assert "hunter2" not in config.url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", {"host": "localhost", "port": 6379, "db": 0}),
        ("redis://h.example:6380/3", {"host": "h.example", "port": 6380, "db": 3}),
        ("redis://:s3cret@h/1", {"password": "s3cret", "db": 1, "port": 6379}),
        ("redis://alice:p%40ss@h", {"username": "alice", "password": "p@ss"}),
        ("rediss://h:6390", {"ssl": True, "port": 6390}),
        ("unix:///tmp/r.sock?db=2", {"unix_socket_path": "/tmp/r.sock", "db": 2}),
        (
            "redis://h?socket_timeout=0.5&client_name=w1",
            {"socket_timeout": 0.5, "client_name": "w1"},
        ),
        ("rediss://h?ssl_cert_reqs=none", {"ssl_cert_reqs": "none"}),
        ("redis://h?decode_responses=false", {"decode_responses": False}),
        ("embedded://", {"embedded": True}),
        ("embedded", {"embedded": True}),
    ],
)
def test_from_url(url: str, expected: dict[str, object]) -> None:
    config = RedisConfig.from_url(url)
    for key, value in expected.items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://localhost", "unsupported scheme"),
        ("redis://h:99999", "bad port"),
        ("redis://h/abc", "is not a number"),
        ("redis://h?colour=blue", "unknown option 'colour'"),
        ("redis://h?password=x", "unknown option 'password'"),
        ("redis://h?socket_timeout=soon", "RedisConfig.socket_timeout"),
        ("unix://", "no socket path"),
        ("", "expected a Redis URL"),
    ],
)
def test_bad_urls(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RedisConfig.from_url(url)


def test_bad_url_message_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_url("http://user:topsecret@h")
    assert "topsecret" not in str(info.value)


def test_from_env_prefers_ailf_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://other:1/1")
    monkeypatch.setenv("AILF_REDIS_URL", "redis://mine:2/2")
    assert RedisConfig.from_env().host == "mine"
    monkeypatch.delenv("AILF_REDIS_URL")
    assert RedisConfig.from_env().host == "other"
    monkeypatch.delenv("REDIS_URL")
    assert RedisConfig.from_env() == RedisConfig()


def test_retry_policy_backoff_is_capped() -> None:
    policy = RetryPolicy(backoff_initial=0.1, backoff_max=0.5, jitter=False)
    assert [policy.delay(n) for n in range(4)] == [0.1, 0.2, 0.4, 0.5]
    with pytest.raises(ConfigError, match=r"RetryPolicy\.attempts"):
        RetryPolicy(attempts=-1)


def test_ssl_context_from_fields() -> None:
    import ssl

    assert RedisConfig().ssl_context() is None
    context = RedisConfig(ssl=True, ssl_cert_reqs="none").ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE
