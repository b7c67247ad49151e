"""RedisConfig: defaults, validation that names the field, URLs, the environment."""

from __future__ import annotations

import pytest

from ailf import (
    AsyncRedisClient,
    AuthenticationError,
    ConfigError,
    RedisClient,
    RedisConfig,
    RedisServer,
    RetryPolicy,
    Runtime,
)
from ailf.config import redact_url


def test_defaults_match_a_local_redis() -> None:
    config = RedisConfig()
    assert (config.host, config.port, config.db) == ("localhost", 6379, 0)
    assert config.decode_responses is True
    assert config.address == "localhost:6379"
    # No reply timeout unless asked for (upstream had 5 s): docs/migrating.md says why.
    assert (config.socket_timeout, config.socket_connect_timeout) == (None, 5.0)


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


# -- secrets never reach a message ------------------------------------------------------

SECRET_URL = "redis://alice:s3cret-pw@cache.internal:6380/2"


@pytest.mark.parametrize("owner", [RedisClient, AsyncRedisClient, Runtime])
def test_a_url_in_place_of_a_config_is_refused_with_its_password_masked(owner: type) -> None:
    with pytest.raises(ConfigError) as info:
        owner(SECRET_URL)
    message = str(info.value)
    assert "s3cret" not in message
    assert f"{owner.__name__}: expected a RedisConfig or None" in message
    assert "'redis://alice:***@cache.internal:6380/2'" in message
    assert "use RedisConfig.from_url(url)" in message


def test_other_wrong_things_in_place_of_a_config_are_named_by_type_alone() -> None:
    with pytest.raises(ConfigError, match=r"got a dict$") as info:
        RedisClient({"password": "s3cret-pw"})  # type: ignore[arg-type]
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("password", [12345678, b"s3cret-pw", ["s3cret-pw"]])
def test_a_password_of_the_wrong_type_is_not_echoed(password: object) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(password=password)
    message = str(info.value)
    assert "12345678" not in message and "s3cret" not in message
    assert message.startswith("RedisConfig.password: expected a string or None, got a value")


def test_a_url_given_as_the_host_is_refused_masked() -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(host=SECRET_URL)
    assert "s3cret" not in str(info.value)
    assert "use RedisConfig.from_url(url)" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:topsecret@h",
        "redis://:topsecret@h/notanumber",
        "redis://:topsecret@h:99999",
        "unix://:topsecret@",
        "http://h?password=topsecret",
        b"redis://:topsecret@h",
    ],
)
def test_url_errors_never_show_the_password(url: object) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_url(url)  # type: ignore[arg-type]
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://alice:pw@h:1/0", "redis://alice:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        ("redis://token@h", "redis://***@h"),
        ("redis://a:p@ss/w?rd@h/0", "redis://a:***@h/0"),  # not even a valid URL
        ("unix://:pw@/run/redis.sock", "unix://:***@/run/redis.sock"),
        ("redis://h?db=1&auth_token=pw", "redis://h?db=1&auth_token=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_sync_client_on_a_wrong_password_names_no_password() -> None:
    with RedisServer(args=["--requirepass", "right-pw"]) as server:
        config = RedisConfig.from_url(f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
        with pytest.raises(AuthenticationError) as info:
            RedisClient(config).get("k")
        assert "wrong-pw" not in str(info.value) and "right-pw" not in str(info.value)
