"""The bad input matrix: whatever lands in a mailbox or on a topic, the agent keeps going.

Mailbox entries are written raw with redis-py, as a buggy or hostile program in another
language would: not JSON, not UTF-8 (a pickle), missing or mistyped envelope fields,
nested too deep, too large. Each becomes a dead letter with its reason, and a good
message sent after them all is still handled. Entries that are odd but readable are
handed to the agent as plain data — a type tag never makes the receiver run anything
but an attrs class's structuring. Malformed broadcasts and replies are dropped,
logged and counted. docs/reliability.md quotes the number of inputs tried.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import attrs
import pytest
import redis
import trio

from ailf import Agent, ConfigError, Message, RedisConfig, Runtime, message_type


@message_type
@attrs.frozen
class Point:
    x: int
    y: int


def envelope(**fields: Any) -> str:
    return json.dumps(fields)


TOO_DEEP = '{"v": 1, "body": ' + "[" * 50_000 + "]" * 50_000 + "}"

#: (what, stream entry fields, a fragment of the dead letter's reason)
REFUSED: list[tuple[str, dict[Any, Any], str]] = [
    ("no envelope field", {"foo": "bar"}, "no 'envelope' field"),
    ("empty envelope", {"envelope": ""}, "not valid JSON"),
    ("not JSON", {"envelope": "hello there"}, "not valid JSON"),
    ("truncated JSON", {"envelope": '{"v": 1, "body": '}, "not valid JSON"),
    ("trailing garbage", {"envelope": '{"v": 1, "body": 1} }'}, "not valid JSON"),
    ("a JSON array", {"envelope": "[1, 2]"}, "not a JSON object"),
    ("a JSON string", {"envelope": '"hello"'}, "not a JSON object"),
    ("JSON null", {"envelope": "null"}, "not a JSON object"),
    ("no version", {"envelope": envelope(body=1)}, "version None"),
    ("version 2", {"envelope": envelope(v=2, body=1)}, "version 2"),
    ("version as a string", {"envelope": envelope(v="1", body=1)}, "version '1'"),
    ("version true", {"envelope": envelope(v=True, body=1)}, "version True"),
    ("no body", {"envelope": envelope(v=1)}, "no 'body'"),
    ("sender a number", {"envelope": envelope(v=1, body=1, sender=5)}, "'sender'"),
    ("headers a string", {"envelope": envelope(v=1, body=1, headers="x")}, "'headers'"),
    ("sent_at a string", {"envelope": envelope(v=1, body=1, sent_at="now")}, "'sent_at'"),
    ("sent_at a boolean", {"envelope": envelope(v=1, body=1, sent_at=True)}, "'sent_at'"),
    ("reply_to a number", {"envelope": envelope(v=1, body=1, reply_to=5)}, "'reply_to'"),
    ("type a number", {"envelope": envelope(v=1, body=1, type=7)}, "'type'"),
    (
        "body that does not fit its class",
        {"envelope": envelope(v=1, body={"x": "a"}, type=f"{__name__}:Point")},
        "does not fit",
    ),
    ("nested 50,000 deep", {"envelope": TOO_DEEP}, "not valid JSON"),
    ("over max_message_size", {"envelope": envelope(v=1, body="x" * 300_000)}, "max_message_size"),
    ("a pickle", {"envelope": pickle.dumps({"rm": "-rf"})}, "not UTF-8"),
    ("a binary field name", {b"\xff\xfe": b"1"}, "not UTF-8"),
    ("invalid UTF-8 inside JSON", {"envelope": b'{"v": 1, "body": "\xff"}'}, "not UTF-8"),
]

#: (what, envelope text, the body the agent must see)
ACCEPTED: list[tuple[str, str, Any]] = [
    ("minimal", '{"v":1,"body":"minimal"}', "minimal"),
    ("unknown fields", envelope(v=1, body="unknown fields", colour="blue"), "unknown fields"),
    ("leading whitespace", '  \n{"v":1,"body":"leading"}', "leading"),
    ("duplicate keys: last wins", '{"v":1,"body":"first","body":"last"}', "last"),
    ("a tag naming no module", envelope(v=1, body={"a": 1}, type="no.such:Thing"), {"a": 1}),
    ("a relative tag", envelope(v=1, body={"a": 2}, type=".x:Y"), {"a": 2}),
    ("a tag naming a function", envelope(v=1, body="ls", type="os:system"), "ls"),
    ("a tag naming eval", envelope(v=1, body="1+1", type="builtins:eval"), "1+1"),
    ("a tag naming pickle.loads", envelope(v=1, body="x", type="pickle:loads"), "x"),
    ("a tag naming a non-attrs class", envelope(v=1, body=[1], type="builtins:list"), [1]),
    ("a typed body", envelope(v=1, body={"x": 1, "y": 2}, type=f"{__name__}:Point"), Point(1, 2)),
]


class Keeper(Agent):
    """Records what reaches it."""

    seen: list[Any] = []

    async def on_message(self, message: Message) -> Any:
        Keeper.seen.append(message.body)
        return message.body


async def test_every_bad_entry_is_dead_lettered_with_its_reason_and_the_agent_goes_on(
    redis_config: RedisConfig,
) -> None:
    Keeper.seen = []
    plain = redis.Redis(host="127.0.0.1", port=redis_config.port)
    stream = "ailf:bad:mailbox:keeper"
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="bad", max_message_size=200_000) as runtime:
            await runtime.spawn(Keeper, name="keeper")
            ids: dict[str, str] = {}
            for what, fields, _ in REFUSED:
                ids[plain.xadd(stream, fields).decode()] = what
            for _, text, _ in ACCEPTED:
                plain.xadd(stream, {"envelope": text})
            assert await runtime.ask("keeper", "still here", timeout=10) == "still here"
            await runtime.wait_idle(timeout=20)
            letters = await runtime.dead_letters("keeper", count=1000)
            statistics = runtime.statistics()["keeper"]
    plain.close()
    reasons = {ids[letter.id]: letter.reason for letter in letters}
    assert set(reasons) == {what for what, _, _ in REFUSED}, "every bad entry, once"
    for what, _, fragment in REFUSED:
        assert fragment in reasons[what], (what, reasons[what])
    assert Keeper.seen == [body for _, _, body in ACCEPTED] + ["still here"]
    assert statistics.dead_lettered == len(REFUSED)


async def test_a_pickle_is_dead_lettered_never_unpickled(
    redis_config: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However it is written, a pickled payload reaches nothing that unpickles."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something called pickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    payload = pickle.dumps(Point(1, 2), protocol=0)  # protocol 0 is ASCII: readable text
    Keeper.seen = []
    plain = redis.Redis(host="127.0.0.1", port=redis_config.port)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="bad") as runtime:
            await runtime.spawn(Keeper, name="keeper")
            plain.xadd("ailf:bad:mailbox:keeper", {"envelope": payload})
            plain.xadd("ailf:bad:mailbox:keeper", {"envelope": pickle.dumps(Point(3, 4))})
            await runtime.wait_idle(timeout=10)
            letters = await runtime.dead_letters("keeper")
    plain.close()
    assert Keeper.seen == []
    assert [letter.reason.split(":")[0] for letter in letters] == ["undecodable"] * 2


async def test_malformed_broadcasts_and_replies_are_dropped_and_counted(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    class Listener(Keeper):
        topics = ("news",)

    garbage: list[bytes | str] = [
        "not json",
        "[1, 2]",
        envelope(v=2, body=1),
        envelope(v=1),
        envelope(v=1, body=1, sender=[]),
        TOO_DEEP,
        envelope(v=1, body={"x": "a"}, type=f"{__name__}:Point"),
    ]
    binary = [pickle.dumps({"a": 1}), b"\xff\xfe"]
    Keeper.seen = []
    plain = redis.Redis(host="127.0.0.1", port=redis_config.port)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="bad") as runtime:
            await runtime.spawn(Listener, name="listener")
            await runtime.spawn(Keeper, name="keeper")
            # The reply inbox is subscribed on the first ask: make it listen first.
            assert await runtime.ask("keeper", "inbox open", timeout=5) == "inbox open"
            for data in [*garbage, *binary]:
                assert plain.publish("ailf:bad:topic:news", data) == 1
                plain.publish(runtime._inbox.channel, data)  # the reply channel too
            plain.publish(runtime._inbox.channel, json.dumps({"v": 1, "correlation": "nope"}))
            await runtime.publish("news", "good news")
            assert await runtime.ask("keeper", "asks still work", timeout=5) == "asks still work"
            while "good news" not in Keeper.seen:  # noqa: ASYNC110
                await trio.sleep(0.01)
            malformed = runtime.hub.malformed
    plain.close()
    assert malformed == len(garbage)
    assert caplog.text.count("dropped a malformed broadcast") == len(garbage)
    assert caplog.text.count("pub/sub: dropped a message") == 2 * len(binary)
    assert caplog.text.count("dropped a malformed reply") >= len(garbage)
    assert sorted(map(str, Keeper.seen)) == ["asks still work", "good news", "inbox open"]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"namespace": "two words"}, "namespace name"),
        ({"namespace": ""}, "namespace name"),
        ({"batch_size": 0}, "batch_size"),
        ({"mailbox_maxlen": 0}, "mailbox_maxlen"),
        ({"max_message_size": -1}, "max_message_size"),
        ({"grace_period": -1}, "grace_period"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"mailbox_limit": 0}, "mailbox_limit"),
        ({"mailbox_limit": 1.5}, "mailbox_limit"),
        ({"send_timeout": 0}, "send_timeout"),
    ],
)
def test_bad_runtime_settings_are_config_errors(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Runtime(RedisConfig(), **settings)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://user:secret@[::1", "not a valid URL"),
        ("redis://h:0", "1..65535"),
        ("redis://h?max_connections=0", "max_connections"),
        ("redis://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://h?socket_connect_timeout=-1", "socket_connect_timeout"),
        ("redis://:secret@h:abc", "bad port"),
    ],
)
def test_more_bad_urls_are_config_errors_without_the_password(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        RedisConfig.from_url(url)
    assert "secret" not in str(caught.value)


def test_unloadable_tls_files_are_a_config_error(tmp_path: Any) -> None:
    config = RedisConfig.from_url(f"rediss://h?ssl_ca_certs={tmp_path}/missing.crt")
    with pytest.raises(ConfigError, match=r"missing\.crt"):
        config.ssl_context()
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS files"):
        config.replace(ssl_ca_certs=str(tmp_path / "junk.crt")).ssl_context()


async def test_a_flood_of_bad_entries_does_not_block_the_good_one(
    redis_config: RedisConfig,
) -> None:
    """4,000 poison entries, half of them not even text, ahead of one good message."""
    Keeper.seen = []
    plain = redis.Redis(host="127.0.0.1", port=redis_config.port)
    pipe = plain.pipeline(transaction=False)
    for n in range(2000):
        pipe.xadd("ailf:bad:mailbox:keeper", {"envelope": pickle.dumps(n)})
        pipe.xadd("ailf:bad:mailbox:keeper", {"envelope": f"garbage {n}"})
    pipe.execute()
    with trio.fail_after(60):
        async with Runtime(redis_config, namespace="bad") as runtime:
            await runtime.spawn(Keeper, name="keeper")
            await runtime.send("keeper", "good")
            await runtime.wait_idle(timeout=50)
            dead = runtime.statistics()["keeper"].dead_lettered
    assert Keeper.seen == ["good"]
    assert dead == 4000 and plain.xlen("ailf:bad:dead:keeper") == 4000
    plain.close()
