"""Hostile input: whatever a client with write rights puts into a namespace, the runtime
keeps running, runs nothing on a message's say-so, and answers nobody else's asks.

Every test writes the hostile bytes straight into a real Redis (with redis-py, as any
client allowed to XADD or PUBLISH could) against a live runtime hosting several agents,
and checks that the others keep answering. docs/security.md states the trust model these
tests hold the runtime to.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_helpers import Echo, child_runtime, ready

from ailf import (
    Agent,
    ConfigError,
    Message,
    RedisConfig,
    RedisServer,
    RemoteError,
    Runtime,
)
from ailf.runtime._keys import GROUP, Keys

NS = "hostile"
KEYS = Keys(NS)


class Pricing(Agent):
    """Answers with a price; holds each request until ``Pricing.release`` is set."""

    release: trio.Event | None = None

    async def on_message(self, message: Message) -> Any:
        if Pricing.release is not None:
            await Pricing.release.wait()
        return {"price": 10}


class Keeper(Agent):
    """Records every message it handles."""

    seen: list[Message] = []

    async def on_message(self, message: Message) -> Any:
        Keeper.seen.append(message)
        return message.body


class Fragile(Agent):
    """Fails every message with an exception whose text is hostile too."""

    max_deliveries = 1
    claim_idle = 0.3

    async def on_message(self, message: Message) -> Any:
        raise ValueError("cannot take \ud800 " + "x" * 100_000)


def raw(config: RedisConfig, *, decode: bool = True) -> redis.Redis:
    return redis.Redis(host=config.host, port=config.port, decode_responses=decode)


@pytest.fixture
async def runtime(redis_config: RedisConfig) -> AsyncIterator[Runtime]:
    Echo.heard = []
    Keeper.seen = []
    Pricing.release = None
    async with Runtime(redis_config, namespace=NS, grace_period=1) as runtime:
        await runtime.spawn(Echo, name="echo")
        await runtime.spawn(Pricing, name="pricing")
        await runtime.spawn(Keeper, name="keeper", topics=["news"])
        yield runtime


async def everyone_answers(runtime: Runtime) -> None:
    """Every agent of the fixture still answers, promptly."""
    with trio.fail_after(10):
        assert await runtime.ask("echo", "ping", timeout=5) == "ping"
        assert await runtime.ask("pricing", {}, timeout=5) == {"price": 10}
        assert await runtime.ask("keeper", "ping", timeout=5) == "ping"


async def until(predicate: Any, seconds: float = 10) -> None:
    """Poll a condition that lives in Redis or in an agent (no event to wait on)."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def problems(runtime: Runtime) -> dict[str, str]:
    return (await runtime.registry()).processes[0].problems


async def dead_letter_of(runtime: Runtime, agent: str, entry_id: str) -> Any:
    with trio.fail_after(10):
        while True:
            for letter in await runtime.dead_letters(agent):
                if letter.id == entry_id:
                    return letter
            await trio.sleep(0.02)


# -- 1. one entry must not stop every agent of a process --------------------------------

#: (what, envelope text, a fragment of the dead letter's reason)
POISON = [
    ("sent_at of 401 digits", '{"v":1,"body":1,"sent_at":1' + "0" * 400 + "}", "'sent_at'"),
    ("sent_at NaN", '{"v":1,"body":1,"sent_at":NaN}', "'sent_at'"),
    ("sent_at Infinity", '{"v":1,"body":1,"sent_at":-Infinity}', "'sent_at'"),
    ("reply_to without correlation", '{"v":1,"body":1,"reply_to":"x"}', "no 'correlation'"),
    (
        "reply_to of the namespace without correlation",
        json.dumps({"v": 1, "body": 1, "reply_to": KEYS.reply("someone")}),
        "no 'correlation'",
    ),
    ("a header that is a number", '{"v":1,"body":1,"headers":{"a":1}}', "'headers'"),
    ("a body of 5,000 digits", '{"v":1,"body":' + "9" * 5000 + "}", "not valid JSON"),
    ("version of 401 digits", '{"v":1' + "0" * 400 + ',"body":1}', "version"),
    (
        "a reply_to that is a topic channel",
        json.dumps(
            {
                "v": 1,
                "body": {"cmd": "ship-all"},
                "reply_to": KEYS.topic("news"),
                "correlation": "1",
            }
        ),
        "not a reply inbox",
    ),
    (
        "a reply_to in another namespace",
        json.dumps({"v": 1, "body": 1, "reply_to": "ailf:other:reply:x", "correlation": "1"}),
        "not a reply inbox",
    ),
    (
        "a reply_to that is not a channel name",
        json.dumps({"v": 1, "body": 1, "reply_to": KEYS.reply("a b"), "correlation": "1"}),
        "not a reply inbox",
    ),
    (
        "a reply_to holding a glob pattern",
        json.dumps({"v": 1, "body": 1, "reply_to": KEYS.reply("*"), "correlation": "1"}),
        "not a reply inbox",
    ),
    (
        "a reply_to holding a lone surrogate",
        '{"v":1,"body":1,"correlation":"1","reply_to":"' + KEYS.reply("\\ud800") + '"}',
        "not a reply inbox",
    ),
]


@pytest.mark.parametrize(("what", "text", "reason"), POISON, ids=[p[0] for p in POISON])
async def test_a_poison_entry_is_dead_lettered_and_every_agent_answers(
    runtime: Runtime, redis_config: RedisConfig, what: str, text: str, reason: str
) -> None:
    listener = raw(redis_config).pubsub()
    listener.subscribe(KEYS.topic("news"))
    entry_id = raw(redis_config).xadd(KEYS.mailbox("keeper"), {"envelope": text})
    letter = await dead_letter_of(runtime, "keeper", entry_id)
    assert reason in letter.reason, letter.reason
    assert letter.envelope == text
    assert Keeper.seen == []  # refused before the handler ran
    await everyone_answers(runtime)
    heard = [m for m in iter(listener.get_message, None) if m["type"] == "message"]
    assert heard == []  # nothing was published on the sender's behalf
    listener.close()
    pending = raw(redis_config).xpending(KEYS.mailbox("keeper"), GROUP)
    assert pending["pending"] == 0


@pytest.mark.parametrize(
    "payload",
    [text for _, text, _ in POISON]
    + [b"\xff\xfe", b"", "null", "[]", '{"v":1}', '{"v":1,"correlation":5,"ok":true}'],
)
async def test_a_poison_publish_is_dropped_and_every_agent_answers(
    runtime: Runtime, redis_config: RedisConfig, payload: str | bytes
) -> None:
    """On a topic channel and on the process's own reply channel."""
    await everyone_answers(runtime)  # the first ask subscribes the reply channel
    publisher = raw(redis_config)
    assert publisher.publish(KEYS.topic("news"), payload) == 1
    assert publisher.publish(KEYS.reply(runtime.process_id), payload) == 1
    await everyone_answers(runtime)
    await runtime.publish("news", {"after": True})
    await until(lambda: any(m.topic for m in Keeper.seen))
    assert [m.body for m in Keeper.seen if m.topic] == [{"after": True}]


# -- 2. a type tag never loads or runs anything ------------------------------------------

LIBRARY = r"""
#include <stdio.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("loaded", f); fclose(f); }
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a shared library")
async def test_a_type_tag_never_loads_a_shared_library(
    runtime: Runtime, redis_config: RedisConfig, tmp_path: Path
) -> None:
    """The probe's attack: ``ctypes:cdll./path/lib`` made the receiver dlopen the library
    (``ctypes`` is imported in every runtime process), running its constructor."""
    marker = tmp_path / "marker"
    source = tmp_path / "evil.c"
    source.write_text(LIBRARY)
    library = tmp_path / "evil"  # no dot in the name: the tag splits attributes on dots
    await trio.run_process(
        ["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library), str(source)]
    )
    assert "." not in str(library)
    for tag in (f"ctypes:cdll.{library}", f"ctypes:CDLL.{library}", "ctypes:cdll"):
        text = json.dumps({"v": 1, "body": {"x": 1}, "type": tag})
        raw(redis_config).xadd(KEYS.mailbox("keeper"), {"envelope": text})
    await until(lambda: len(Keeper.seen) >= 3)
    assert [m.body for m in Keeper.seen] == [{"x": 1}] * 3  # plain data, as it came
    assert not marker.exists()
    await everyone_answers(runtime)


# -- 3. a reply that cannot be encoded, a dead letter that cannot be written -------------


async def test_a_lone_surrogate_goes_there_and_back(runtime: Runtime) -> None:
    assert await runtime.ask("echo", "\ud800", timeout=5) == "\ud800"
    assert await runtime.ask("echo", {"k\udfff": ["\ud800"]}, timeout=5) == {"k\udfff": ["\ud800"]}


async def test_a_reply_that_cannot_be_encoded_answers_the_asker_with_the_error(
    runtime: Runtime,
) -> None:
    class Deep(Agent):
        async def on_message(self, message: Message) -> Any:
            value: list[Any] = []
            for _ in range(100_000):
                value = [value]
            return value

    await runtime.spawn(Deep, name="deep")
    with pytest.raises(RemoteError) as caught:
        await runtime.ask("deep", 1, timeout=5)
    assert caught.value.type_name == "DecodeError"
    assert "nested deeper than the recursion limit" in caught.value.message
    await everyone_answers(runtime)


async def test_requests_nested_deep_are_answered_or_dead_lettered(
    runtime: Runtime, redis_config: RedisConfig
) -> None:
    """Asked from another language (a raw XADD, a raw subscription), at depths around the
    interpreter's limits: each request is answered — with the body, or with the error
    if the body decoded but cannot be encoded again — or dead-lettered as undecodable."""
    inbox = KEYS.reply("other-language")
    listener = raw(redis_config).pubsub()
    listener.subscribe(inbox)
    depths = [100, *range(950, 1050, 10), 5000]
    ids = {}
    for depth in depths:
        body = "[" * depth + "]" * depth
        text = f'{{"v":1,"body":{body},"reply_to":"{inbox}","correlation":"c{depth}"}}'
        ids[f"c{depth}"] = raw(redis_config).xadd(KEYS.mailbox("echo"), {"envelope": text})
    await everyone_answers(runtime)  # after every request above
    replies = {}
    while message := listener.get_message(timeout=0.1):
        if message["type"] == "message":
            reply = json.loads(message["data"])
            replies[reply["correlation"]] = reply
    listener.close()
    dead = {letter.id: letter for letter in await runtime.dead_letters("echo")}
    assert replies["c100"]["ok"] is True and replies["c100"]["agent"] == "echo"
    for correlation, entry_id in ids.items():
        if correlation in replies:
            reply = replies[correlation]
            assert reply["ok"] or reply["error"]["type"] == "DecodeError", reply
        else:
            assert "undecodable" in dead[entry_id].reason


async def test_a_dead_letter_carries_the_real_exception_even_when_its_text_is_hostile(
    runtime: Runtime,
) -> None:
    await runtime.spawn(Fragile, name="fragile")
    entry_id = await runtime.send("fragile", "x")
    letter = await dead_letter_of(runtime, "fragile", entry_id)
    assert letter.reason == "handler failed on delivery 1 of 1"
    assert letter.error_type == "ValueError"
    assert letter.error_message.startswith("cannot take \\ud800 xxx")
    assert len(letter.error_message) < 4200
    assert letter.error_message.endswith("(100014 characters in all)")
    await everyone_answers(runtime)


async def test_a_dead_letter_that_cannot_be_written_stays_pending_and_keeps_its_reason(
    runtime: Runtime, redis_config: RedisConfig
) -> None:
    """The dead-letter key holds a string: the XADD fails, the entry stays pending (in a
    MULTI it would have been acknowledged all the same, and lost); once the key is
    repaired the dead letter is written with the handler's failure, not with "the
    process handling it died"."""
    client = raw(redis_config)
    client.set(KEYS.dead("fragile"), "in the way")
    await runtime.spawn(Fragile, name="fragile")
    entry_id = await runtime.send("fragile", "x")
    await until(lambda: client.xpending(KEYS.mailbox("fragile"), GROUP)["pending"])
    await trio.sleep(0.5)  # redelivered and refused again meanwhile
    assert client.xpending(KEYS.mailbox("fragile"), GROUP)["pending"] == 1
    await everyone_answers(runtime)
    client.delete(KEYS.dead("fragile"))
    letter = await dead_letter_of(runtime, "fragile", entry_id)
    assert letter.reason == "handler failed on delivery 1 of 1"
    assert letter.error_type == "ValueError"
    await until(lambda: not client.xpending(KEYS.mailbox("fragile"), GROUP)["pending"])


async def test_a_huge_entry_is_dead_lettered_as_a_capped_copy(
    runtime: Runtime, redis_config: RedisConfig
) -> None:
    text = json.dumps({"v": 1, "body": "x" * 5_000_000})
    entry_id = raw(redis_config).xadd(KEYS.mailbox("keeper"), {"envelope": text})
    letter = await dead_letter_of(runtime, "keeper", entry_id)
    assert "max_message_size" in letter.reason
    assert letter.envelope == text[:65_536]
    fields = raw(redis_config).xrange(KEYS.dead("keeper"))[0][1]
    assert fields["envelope_length"] == str(len(text))
    await everyone_answers(runtime)


# -- 4. forged replies ------------------------------------------------------------------


async def test_correlation_ids_are_unguessable(runtime: Runtime) -> None:
    for _ in range(3):
        await runtime.ask("keeper", 1, timeout=5)
    correlations = [m.correlation for m in Keeper.seen]
    assert len(set(correlations)) == 3
    for correlation in correlations:
        assert correlation is not None and len(correlation) >= 20
        assert not correlation.isdigit()


async def test_a_request_sent_on_to_another_agent_cannot_answer_the_ask(
    runtime: Runtime, redis_config: RedisConfig
) -> None:
    """A client that can read the pricing mailbox copies a pending request's reply_to and
    correlation into a message to echo: echo answers, but as "echo", and the asker of
    "pricing" drops that reply and waits for pricing's own."""
    Pricing.release = trio.Event()
    client = raw(redis_config)
    answer: list[Any] = []

    async def ask() -> None:
        answer.append(await runtime.ask("pricing", {"item": "tea"}, timeout=10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await until(lambda: client.xrange(KEYS.mailbox("pricing")))
        request = json.loads(client.xrange(KEYS.mailbox("pricing"))[-1][1]["envelope"])
        forged = {
            "v": 1,
            "body": {"price": 0, "forged": True},
            "reply_to": request["reply_to"],
            "correlation": request["correlation"],
        }
        client.xadd(KEYS.mailbox("echo"), {"envelope": json.dumps(forged)})
        echo = KEYS.mailbox("echo")
        await until(
            lambda: (
                not client.xpending(echo, GROUP)["pending"]
                and not client.xinfo_groups(echo)[0]["lag"]
            )
        )
        await trio.sleep(0.1)
        assert answer == []  # the forged reply did not end the ask
        Pricing.release.set()
    assert answer == [{"price": 10}]


# -- 5. one wrong-typed key stalls only its own agent ----------------------------------


async def test_a_mailbox_key_of_the_wrong_type_stalls_only_its_agent(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    client = raw(redis_config)
    async with Runtime(redis_config, namespace=NS, grace_period=1) as runtime:
        await runtime.spawn(Echo, name="a", claim_idle=0.3)
        await runtime.spawn(Echo, name="b", claim_idle=0.3)
        assert await runtime.ask("a", 1, timeout=5) == 1
        client.delete(KEYS.mailbox("a"))
        client.set(KEYS.mailbox("a"), "not a stream")
        with trio.fail_after(10):
            for n in range(20):  # b answers on, promptly, again and again
                assert await runtime.ask("b", n, timeout=2) == n
            while not await problems(runtime):  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert await problems(runtime) == {"a": "its key holds a string, not a stream"}
        assert "agent 'a' reads nothing from it" in caplog.text
        status = await trio.run_process(
            [sys.executable, "-m", "ailf", "status", "-n", NS, "--redis", redis_config.url],
            capture_stdout=True,
        )
        assert b"agent a: mailbox not read: its key holds something else" in status.stdout
        client.delete(KEYS.mailbox("a"))  # repaired: a reads again
        with trio.fail_after(10):
            assert await runtime.ask("a", 2, timeout=5) == 2
            while await problems(runtime):  # noqa: ASYNC110
                await trio.sleep(0.05)


async def test_a_spawn_onto_a_wrong_typed_mailbox_key_does_not_stop_the_runtime(
    redis_config: RedisConfig,
) -> None:
    client = raw(redis_config)
    client.set(KEYS.mailbox("a"), "not a stream")
    async with Runtime(redis_config, namespace=NS, grace_period=1) as runtime:
        await runtime.spawn(Echo, name="a", claim_idle=0.3)
        await runtime.spawn(Echo, name="b")
        assert await runtime.ask("b", 1, timeout=5) == 1
        client.delete(KEYS.mailbox("a"))
        with trio.fail_after(10):
            assert await runtime.ask("a", 2, timeout=5) == 2


# -- 6. a Redis stall does not hide a live process ---------------------------------------


async def test_heartbeats_keep_their_interval_through_a_redis_stall(
    redis_config: RedisConfig,
) -> None:
    """After CLIENT PAUSE, the next heartbeat follows at once: the old loop slept ten
    times the stalled heartbeat's duration and the process looked gone meanwhile."""
    client = raw(redis_config)
    async with Runtime(redis_config, namespace=NS, heartbeat_interval=0.2) as runtime:
        await runtime.spawn(Echo, name="a")
        await trio.sleep(0.3)
        client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        await trio.sleep(1.6)
        resumed = float(client.time()[0]) + client.time()[1] / 1e6
        with trio.fail_after(1.5):
            while True:
                beat = client.hget(KEYS.process(runtime.process_id), "heartbeat")
                if beat is not None and float(beat) > resumed:
                    break
                await trio.sleep(0.02)


# -- 7. a password being rotated does not stop the runtime -----------------------------


async def test_a_password_rotation_does_not_stop_the_runtime(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = raw(fresh_server.config)
    admin.execute_command("ACL", "SETUSER", "default", "resetpass", ">first")
    config = fresh_server.config.replace(password="first")
    Echo.heard = []
    with trio.fail_after(30):
        async with Runtime(config, namespace=NS, grace_period=1) as runtime:
            await runtime.spawn(Echo, name="echo", topics=["news"])
            assert await runtime.ask("echo", 1, timeout=5) == 1
            locked = redis.Redis(port=fresh_server.port, password="first", decode_responses=True)
            locked.execute_command("ACL", "SETUSER", "default", "resetpass", ">second")
            locked = redis.Redis(port=fresh_server.port, password="second", decode_responses=True)
            locked.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await trio.sleep(1.5)  # the session is refused: WRONGPASS, retried
            locked.execute_command("ACL", "SETUSER", "default", "resetpass", ">first")
            locked.close()
            while await runtime.publish("news", "x") == 0:  # noqa: ASYNC110
                await trio.sleep(0.05)
            await until(lambda: Echo.heard)
            assert await runtime.ask("echo", 2, timeout=5) == 2
    assert "WRONGPASS" in caplog.text or "refused the credentials" in caplog.text


# -- 9. what a sender passes is checked at the sender ------------------------------------


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), float("inf"), "1", None, True])
async def test_a_bad_ask_timeout_is_a_config_error(runtime: Runtime, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"ask\('echo'\): timeout must be seconds > 0"):
        await runtime.ask("echo", 1, timeout=bad)


@pytest.mark.parametrize("headers", [["x"], {"a": 1}, {1: "a"}, "x=1"])
async def test_bad_headers_are_refused_at_the_sender(runtime: Runtime, headers: Any) -> None:
    with pytest.raises(ConfigError, match="headers: expected a dict of strings to strings"):
        await runtime.send("echo", 1, headers=headers)
    with pytest.raises(ConfigError, match="headers"):
        await runtime.ask("echo", 1, headers=headers)


async def test_a_handler_error_reply_keeps_a_bounded_text(runtime: Runtime) -> None:
    class Loud(Agent):
        async def on_message(self, message: Message) -> Any:
            raise RuntimeError("y" * 1_000_000)

    await runtime.spawn(Loud, name="loud")
    with pytest.raises(RemoteError) as caught:
        await runtime.ask("loud", 1, timeout=5)
    assert caught.value.type_name == "RuntimeError"
    assert len(caught.value.message) < 4200


# -- random envelopes and bytes against a live runtime in its own process -------------

FUZZ_NS = "fuzz"
FUZZ_KEYS = Keys(FUZZ_NS)
FUZZ_INBOX = FUZZ_KEYS.reply("fuzzer")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=1, max_value=10**20).map(lambda n: n * 10**400)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
channels = st.sampled_from(
    [FUZZ_INBOX, FUZZ_KEYS.topic("news"), FUZZ_KEYS.reply("\ud800"), "elsewhere", ""]
) | st.text(max_size=30)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | json_values,
        "body": json_values,
        "type": st.sampled_from(["ctypes:cdll", "os:system", "builtins:eval", ""]) | json_values,
        "sender": st.text(max_size=10) | json_values,
        "sent_at": st.floats() | json_values,
        "headers": st.dictionaries(st.text(max_size=5), st.text(max_size=5)) | json_values,
        "reply_to": channels | json_values,
        "correlation": st.text(max_size=10) | json_values,
        "topic": st.text(max_size=10) | json_values,
        "id": st.text(max_size=10) | json_values,
        "ok": st.booleans() | json_values,
        "error": json_values,
        "agent": st.sampled_from(["a", "b"]) | json_values,
    },
).map(json.dumps)
payloads = envelopes | st.text(max_size=200) | st.binary(max_size=200)


@pytest.fixture(scope="module")
def live_runtime(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, str]]:
    """A runtime hosting agents a, b and c (news listeners) in a process of its own."""
    config = redis_server.config
    client = raw(config)
    for key in client.scan_iter(f"ailf:{FUZZ_NS}:*"):
        client.delete(key)
    spec = {"agent": "a", "others": ["b", "c"], "options": {"key": "fuzz:seen"}}
    with child_runtime(config.url, FUZZ_NS, topics=["news"], claim_idle=1.0, **spec) as child:
        trio.run(ready, child)
        process = client.zrange(FUZZ_KEYS.processes, 0, -1)[0]
        yield client, process
        assert child.poll() is None, "the runtime process died"
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0  # it stops gracefully, as it started


def ask_raw(client: redis.Redis, listener: Any, agent: str, body: Any) -> Any:
    """Ask as another language would: XADD a request and ring the mailbox's doorbell,
    then wait for the reply on an inbox."""
    correlation = secrets.token_hex(8)
    envelope = {"v": 1, "body": body, "reply_to": FUZZ_INBOX, "correlation": correlation}
    client.xadd(FUZZ_KEYS.mailbox(agent), {"envelope": json.dumps(envelope)})
    client.publish(FUZZ_KEYS.bell(agent), "")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message and message["type"] == "message":
            reply = json.loads(message["data"])
            if reply.get("correlation") == correlation and reply.get("agent") == agent:
                return reply["body"]
    raise AssertionError(f"agent {agent!r} did not answer within 10 s")


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(where=st.sampled_from(["a", "b", "topic", "reply"]), payload=payloads, field=st.booleans())
def test_random_envelopes_and_bytes_never_stop_a_live_runtime(
    live_runtime: tuple[redis.Redis, str], where: str, payload: str | bytes, field: bool
) -> None:
    client, process = live_runtime
    if where in ("a", "b"):
        fields = {"envelope": payload} if field else {payload or "x": payload}
        client.xadd(FUZZ_KEYS.mailbox(where), fields)
        client.publish(FUZZ_KEYS.bell(where), "")
    else:
        channel = FUZZ_KEYS.topic("news") if where == "topic" else FUZZ_KEYS.reply(process)
        client.publish(channel, payload)
    listener = client.pubsub()
    listener.subscribe(FUZZ_INBOX)
    try:
        assert ask_raw(client, listener, "c", "ping")["body"] == "ping"
    finally:
        listener.close()
