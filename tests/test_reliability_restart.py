"""Redis going away: an outage of seconds, and a restart that lost everything.

The runtime must recover by itself in both cases — readers back off and re-create lost
groups, pub/sub listeners re-subscribe, the registry fills again, agents keep running
and new messages are handled — in this process and in another one. What Redis itself
lost (a restart without persistence) stays lost; the test pins down exactly what, for
docs/reliability.md.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
from contextlib import AbstractContextManager
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
import trio
from runtime_helpers import Echo, child_runtime, ready

from ailf import (
    Agent,
    AskTimeout,
    MailboxFull,
    Message,
    RedisConfig,
    RedisConnectionError,
    RedisError,
    RedisServer,
    Runtime,
)
from ailf.clients._connection import open_connection
from ailf.observability import NO_OBSERVER
from ailf.runtime._host import HostContext
from ailf.runtime._keys import GROUP, Keys
from ailf.runtime._reader import MailboxReader
from ailf.runtime._settings import MailboxSettings


def child(server: RedisServer, **spec: Any) -> AbstractContextManager[subprocess.Popen[str]]:
    return child_runtime(server.url, "r", **spec)


async def ask_until_answered(runtime: Runtime, to: str, body: Any) -> Any:
    """Ask again until the agent answers: right after a restart, groups are still being
    re-created and the pub/sub session re-subscribed."""
    while True:
        try:
            return await runtime.ask(to, body, timeout=1)
        except (AskTimeout, RedisError):
            await trio.sleep(0.1)


class Flaky(Agent):
    """Fails the first delivery of every message; counts what it finally handled."""

    handled: list[Any] = []
    failed = trio.Event()

    async def on_message(self, message: Message) -> Any:
        if message.topic is not None:
            return None
        if message.delivery_count == 1:
            Flaky.failed.set()
            raise RuntimeError("first delivery fails")
        Flaky.handled.append(message.body)
        return None


async def test_an_outage_of_seconds_with_retries_and_claims_due_meanwhile() -> None:
    """Redis is down for 3 s while a retry and claims fall due: the runtime does not
    crash, and the retried message is handled once Redis is back (AOF keeps it)."""
    Flaky.handled, Flaky.failed = [], trio.Event()
    with RedisServer(persistent=True) as server, trio.fail_after(60):
        async with Runtime(server.config, namespace="r", retry_backoff=0.5) as runtime:
            await runtime.spawn(Flaky, name="flaky", claim_idle=2.0)
            await runtime.spawn(Echo, name="echo", claim_idle=0.2)  # claims every 0.1 s
            await runtime.send("flaky", "survivor")
            await Flaky.failed.wait()  # its retry is due in 0.5 s, while Redis is down
            await trio.to_thread.run_sync(server.kill)
            await trio.sleep(3)  # longer than the client's own reconnect attempts
            with pytest.raises(RedisError):
                await runtime.send("echo", "nobody home")
            await trio.to_thread.run_sync(server.start)
            assert await ask_until_answered(runtime, "echo", "back") == "back"
            while not Flaky.handled:  # noqa: ASYNC110 - the retry comes when it comes
                await trio.sleep(0.05)
            await runtime.wait_idle(timeout=20)
    assert Flaky.handled == ["survivor"]


async def test_a_restart_without_persistence_is_recovered_from_by_itself(
    fresh_server: RedisServer,
) -> None:
    key = "test:restart"
    spec = {"agent": "recorder", "options": {"key": key}, "topics": ["news"]}
    Echo.heard = []
    plain = redis.Redis(host="127.0.0.1", port=fresh_server.port, decode_responses=True)
    with trio.fail_after(90), child(fresh_server, **spec) as other:
        await ready(other)
        async with Runtime(fresh_server.config, namespace="r", heartbeat_interval=0.5) as runtime:
            await runtime.spawn(Echo, name="echo", replicas=2, claim_idle=0.5)
            assert await runtime.ask("recorder", "before", timeout=5)
            for n in range(5):  # a mailbox nobody reads yet, and a dead letter
                await runtime.send("parked", n)
            await runtime.client.xadd("ailf:r:mailbox:echo", {"not": "an envelope"})
            while not await runtime.dead_letters("echo"):  # noqa: ASYNC110
                await trio.sleep(0.05)

            await trio.to_thread.run_sync(lambda: fresh_server.restart(kill=True))

            # What Redis lost is lost: queued messages, dead letters, the registry.
            assert plain.xlen("ailf:r:mailbox:parked") == 0
            assert plain.xlen("ailf:r:dead:echo") == 0
            # ...and everything else comes back by itself, in both processes.
            assert await ask_until_answered(runtime, "echo", "after") == "after"
            answer = await ask_until_answered(runtime, "recorder", "after")
            assert answer["body"] == "after" and answer["pid"] == other.pid
            for name in ("echo", "recorder"):
                groups = plain.xinfo_groups(f"ailf:r:mailbox:{name}")
                assert [g["name"] for g in groups] == [GROUP]
            while True:  # subscriptions came back in both processes
                await runtime.publish("news", "hello again")
                heard_there = [
                    json.loads(line)["topic"] for line in plain.lrange(key, 0, -1)
                ].count("news")
                if len(Echo.heard) >= 2 and heard_there:
                    break
                await trio.sleep(0.1)
            while len((await runtime.registry()).processes) < 2:  # noqa: ASYNC110
                await trio.sleep(0.1)
            for n in range(50):
                await runtime.send("echo", n)
                await runtime.send("recorder", n)
            await runtime.wait_idle(["echo", "recorder"], timeout=30)
            handled_there = [json.loads(line)["body"] for line in plain.lrange(key, 0, -1)]
    assert set(range(50)) <= set(handled_there)
    plain.close()


async def test_a_server_still_loading_its_dataset_is_waited_for_not_fatal(
    nursery: trio.Nursery,
) -> None:
    """A restarted persistent Redis answers LOADING while it reads its AOF: connecting
    then is a RedisConnectionError (retried with backoff), whatever the handshake sent."""

    async def loading(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():  # one error per command received
                await stream.send_all(data.count(b"*") * b"-LOADING loading the dataset\r\n")

    serve = functools.partial(trio.serve_tcp, loading, 0, host="127.0.0.1")
    (listener,) = await nursery.start(serve)
    port = listener.socket.getsockname()[1]
    with trio.fail_after(10):
        for config in (RedisConfig(port=port), RedisConfig(port=port, password="pw", db=2)):
            with pytest.raises(RedisConnectionError, match="still loading its dataset"):
                await open_connection(config)


async def test_a_frozen_redis_times_asks_out_and_is_resumed_from(fresh_server: RedisServer) -> None:
    """SIGSTOP (a VM pause, a stalled fork): asks time out on time, nothing breaks, and
    everything carries on after SIGCONT — including what was asked during the freeze."""
    assert fresh_server.pid is not None
    answers: list[Any] = []

    class Recorder(Echo):
        async def on_message(self, message: Message) -> Any:
            answers.append(message.body)
            return message.body

    with trio.fail_after(30):
        async with (
            Runtime(fresh_server.config, namespace="r") as runtime,
            Runtime(
                fresh_server.config, namespace="r", mailbox_limit=10, send_timeout=0.5
            ) as bounded,
        ):
            await runtime.spawn(Recorder, name="echo", claim_idle=0.5)
            assert await runtime.ask("echo", "before", timeout=5) == "before"
            os.kill(fresh_server.pid, signal.SIGSTOP)
            try:
                started = trio.current_time()
                with pytest.raises(AskTimeout):
                    await runtime.ask("echo", "frozen", timeout=1)
                assert trio.current_time() - started < 2
                with pytest.raises(MailboxFull, match="no measurement yet") as caught:
                    await bounded.send("echo", "never sent")  # the gate cannot measure
                assert caught.value.backlog == -1
                await trio.sleep(2)
            finally:
                os.kill(fresh_server.pid, signal.SIGCONT)
            assert await ask_until_answered(runtime, "echo", "after") == "after"
            await runtime.wait_idle(timeout=10)
    assert answers == ["before", "frozen", "after"]


async def test_a_reader_failing_for_hours_keeps_waiting_max_block(autojump_clock: Any) -> None:
    """A reader that cannot read backs off by ``settings.read_retry`` up to
    ``max_block``, however long Redis stays away: RetryPolicy.delay(n) computes 2**n as
    a float, which overflowed after about a thousand failures (half an hour at the
    default max_block) and ended the runtime."""
    settings = MailboxSettings()
    # No Redis behind it: backing off sends nothing.
    client = SimpleNamespace(config=RedisConfig())
    host = SimpleNamespace(
        client=client,
        acker=None,
        hub=None,
        settings=settings,
        keys=Keys("r"),
        observer=NO_OBSERVER,
        timekeeper=None,
    )
    reader = MailboxReader(cast(HostContext, host), "host:1:ab/0")
    started = trio.current_time()
    for _ in range(1100):
        await reader._backoff("Redis unreachable")
    waited = trio.current_time() - started
    assert waited == pytest.approx(1100 * settings.max_block, rel=0.01)
