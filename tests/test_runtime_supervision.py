"""Restart policies, the intensity limit, escalation, and graceful shutdown in one process."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import attrs
import pytest
import redis
import trio

from ailf import EscalationError, RedisConfig
from ailf.runtime import Agent, Message, Runtime
from ailf.runtime._keys import GROUP


@attrs.frozen
class Log:
    """Options handing agents a shared event list (passed as an instance, not structured)."""

    events: list = attrs.field(factory=list)
    fail_starts: int = 0


class StartFails(Agent):
    """Fails ``on_start`` as many times as asked, then answers."""

    Options = Log
    max_restarts = 5

    async def on_start(self) -> None:
        starts = self.options.events.count("start") + 1
        self.options.events.append("start")
        if starts <= self.options.fail_starts:
            raise OSError(f"start {starts} failed")

    async def on_message(self, message: Message) -> Any:
        return "up"

    async def on_stop(self) -> None:
        self.options.events.append("stop")


async def test_permanent_agent_is_restarted_after_failed_starts(
    redis_config: RedisConfig,
) -> None:
    log = Log(fail_starts=2)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(StartFails, name="phoenix", options=log)
            assert await runtime.ask("phoenix", 1, timeout=5) == "up"
    # a start that failed has no on_stop; the third one ran until shutdown
    assert log.events == ["start", "start", "start", "stop"]


async def test_intensity_limit_escalates_and_stops_the_runtime(
    redis_config: RedisConfig,
) -> None:
    class Hopeless(StartFails):
        max_restarts = 2
        restart_period = 30.0

    log = Log(fail_starts=100)
    other = Log()
    with trio.fail_after(20):
        with pytest.raises(EscalationError) as caught:
            async with Runtime(redis_config, namespace="s") as runtime:
                await runtime.spawn(StartFails, name="bystander", options=other)
                await runtime.spawn(Hopeless, name="hopeless", options=log)
                await trio.sleep_forever()
    error = caught.value
    assert error.agent == "hopeless" and error.replica == 0
    assert "max_restarts=2" in str(error) and "OSError: start 3 failed" in str(error)
    assert isinstance(error.__cause__, OSError)
    assert log.events == ["start"] * 3
    assert other.events == ["start", "stop"]  # the others were stopped gracefully


class Crashy(Agent):
    """Its background task fails when told to, in the middle of a slow handler."""

    Options = Log

    async def on_start(self) -> None:
        self.crash = trio.Event()
        self.options.events.append("start")
        self.start_task(self._watchdog)

    async def _watchdog(self) -> None:
        await self.crash.wait()
        raise RuntimeError("watchdog tripped")

    async def on_message(self, message: Message) -> Any:
        self.options.events.append(("handle", message.body, message.delivery_count))
        if message.body == "crash" and message.delivery_count == 1:
            self.crash.set()
            await trio.sleep_forever()
        return message.delivery_count


async def test_background_task_crash_restarts_and_redelivers(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    log = Log()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(Crashy, name="crashy", options=log)
            # the handler is cancelled by the crash; the restarted instance re-reads the
            # entry from its pending list, and Redis counts the second delivery
            assert await runtime.ask("crashy", "crash", timeout=5) == 2
    assert log.events == ["start", ("handle", "crash", 1), "start", ("handle", "crash", 2)]
    assert "crashed with RuntimeError: watchdog tripped; restarting" in caplog.text


class Group(Agent):
    """Records each instance's start and stop; "crash" crashes the instance that gets it."""

    Options = Log
    strategy = "one_for_all"
    max_restarts = 1
    restart_period = 30.0

    async def on_start(self) -> None:
        self.options.events.append(("start", self.replica))

    async def on_stop(self) -> None:
        self.options.events.append(("stop", self.replica))

    async def on_message(self, message: Message) -> Any:
        if message.body == "crash" and message.delivery_count == 1:
            self.start_task(self._fail)
            await trio.sleep_forever()
        return self.replica

    async def _fail(self) -> None:
        raise RuntimeError("group member failed")


async def crash_one(runtime: Runtime, log: Log, starts: int) -> None:
    """Crash the replica that gets the message; wait for ``starts`` starts in all and
    for the redelivered message to be handled."""
    await runtime.send("group", "crash")
    while sum(e[0] == "start" for e in log.events) < starts:  # noqa: ASYNC110
        await trio.sleep(0.01)
    await runtime.wait_idle(timeout=10)


async def test_one_for_one_restarts_only_the_failed_replica(redis_config: RedisConfig) -> None:
    agent_cls = type("Alone", (Group,), {"strategy": "one_for_one"})
    log = Log()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(agent_cls, name="group", replicas=3, options=log)
            await crash_one(runtime, log, starts=4)
    (crashed,) = [e[1] for e in log.events[3:] if e[0] == "stop"][:1]
    assert log.events[3:5] == [("stop", crashed), ("start", crashed)]


async def test_one_for_all_restarts_every_local_replica_and_counts_them_together(
    redis_config: RedisConfig,
) -> None:
    log = Log()
    with trio.fail_after(20):
        with pytest.raises(EscalationError) as caught:
            async with Runtime(redis_config, namespace="s") as runtime:
                await runtime.spawn(Group, name="group", replicas=3, options=log)
                await crash_one(runtime, log, starts=6)
                # every instance stopped (gracefully: on_stop ran) and started again
                replicas = [("stop", r) for r in range(3)] + [("start", r) for r in range(3)]
                assert sorted(log.events[3:9]) == sorted(replicas)
                # max_restarts=1 counts the group's restarts: the next crash escalates,
                # whichever replica it hits
                await runtime.send("group", "crash")
                await trio.sleep_forever()
    assert caught.value.agent == "group"
    assert isinstance(caught.value.__cause__, RuntimeError)


async def test_temporary_agent_is_not_restarted(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    class OneShot(StartFails):
        restart = "temporary"

    log = Log(fail_starts=1)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(OneShot, name="oneshot", options=log)
            await runtime.spawn(StartFails, name="steady", options=Log())
            assert await runtime.ask("steady", 1, timeout=5) == "up"
            assert runtime.statistics()["oneshot"].replicas == 0
    assert log.events == ["start"]
    assert "not restarted (restart='temporary')" in caplog.text


class Quitter(Agent):
    Options = Log

    async def on_start(self) -> None:
        self.options.events.append("start")

    async def on_message(self, message: Message) -> Any:
        self.stop()
        return "bye"


@pytest.mark.parametrize(("policy", "starts"), [("permanent", 2), ("transient", 1)])
async def test_normal_stop_restarts_only_permanent_agents(
    redis_config: RedisConfig, policy: str, starts: int
) -> None:
    agent_cls = type(f"Quitter_{policy}", (Quitter,), {"restart": policy})
    log = Log()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(agent_cls, name="quitter", options=log)
            assert await runtime.ask("quitter", 1, timeout=5) == "bye"
            if policy == "permanent":  # the restarted instance answers the next one
                assert await runtime.ask("quitter", 1, timeout=5) == "bye"
            else:
                await trio.sleep(0.3)
    assert log.events.count("start") == starts


async def test_agent_can_stop_the_runtime(redis_config: RedisConfig) -> None:
    class Stopper(Agent):
        async def on_message(self, message: Message) -> None:
            self.runtime.stop()

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(Stopper, name="stopper")
            await runtime.send("stopper", "stop")
            await trio.sleep_forever()  # cancelled by stop()
    assert runtime.stopping


async def test_graceful_shutdown_finishes_in_flight_and_leaves_the_rest_pending(
    redis_config: RedisConfig,
) -> None:
    started = trio.Event()
    finished: list[int] = []

    class Slow(Agent):
        async def on_message(self, message: Message) -> None:
            started.set()
            await trio.sleep(0.3)
            finished.append(message.body)

    stream = "ailf:s:mailbox:slow"
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s", grace_period=5) as runtime:
            await runtime.spawn(Slow, name="slow")
            for n in range(5):
                await runtime.send("slow", n)
            await started.wait()
        # the message in flight finished and was acked; the others stay in the mailbox,
        # pending (read ahead) or not yet read (their bell came after the last read)
        assert finished == [0]
        client = redis.Redis(port=redis_config.port, decode_responses=True)
        group = next(g for g in client.xinfo_groups(stream) if g["name"] == GROUP)
        assert group["pending"] + group["lag"] == 4
        pending = {row["message_id"] for row in client.xpending_range(stream, GROUP, "-", "+", 9)}
        left = [
            (entry_id, json.loads(fields["envelope"])["body"])
            for entry_id, fields in client.xrange(stream)
        ]
        read_ahead = [body for entry_id, body in left if entry_id in pending]
        unread = [body for entry_id, body in left if entry_id not in pending and body != 0]
        # another replica reads the unread ones and claims the others once they are idle
        # long enough: nothing is lost, and each kind comes in stream order (a redelivered
        # message comes after whatever was read meanwhile: docs/reliability.md, Ordering);
        # which kind each is depends on when its bell was heard before the stop
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(Slow, name="slow", claim_idle=0.2)
            await runtime.wait_idle(timeout=10)
    assert finished[0] == 0 and sorted(finished) == [0, 1, 2, 3, 4]
    assert [body for body in finished if body in read_ahead] == read_ahead
    assert [body for body in finished if body in unread] == unread


async def test_grace_period_cancels_overlong_handlers(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    started = trio.Event()

    class Stuck(Agent):
        async def on_message(self, message: Message) -> None:
            started.set()
            await trio.sleep_forever()

        async def on_stop(self) -> None:
            raise OSError("could not close")

    caplog.set_level(logging.ERROR)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s", grace_period=0.2) as runtime:
            await runtime.spawn(Stuck, name="stuck")
            await runtime.send("stuck", 1)
            await started.wait()
    client = redis.Redis(port=redis_config.port, decode_responses=True)
    assert client.xpending("ailf:s:mailbox:stuck", GROUP)["pending"] == 1
    assert "on_stop raised OSError: could not close" in caplog.text


async def test_an_error_in_the_block_propagates_unchanged_after_a_graceful_stop(
    redis_config: RedisConfig,
) -> None:
    log = Log()
    with trio.fail_after(20), pytest.raises(KeyError, match="from the body"):
        async with Runtime(redis_config, namespace="s") as runtime:
            await runtime.spawn(StartFails, name="calm", options=log)
            raise KeyError("from the body")
    assert log.events == ["start", "stop"]


async def test_shutdown_does_not_wait_past_the_grace_period_for_a_sync_handler(
    redis_config: RedisConfig,
) -> None:
    entered = threading.Event()

    class Blocking(Agent):
        def on_message(self, message: Message) -> None:
            entered.set()
            time.sleep(2)

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="s", grace_period=0.2) as runtime:
            await runtime.spawn(Blocking, name="blocking")
            await runtime.send("blocking", 1)
            await trio.to_thread.run_sync(entered.wait)
            stopping = trio.current_time()
        assert trio.current_time() - stopping < 1.5
    client = redis.Redis(port=redis_config.port, decode_responses=True)
    assert client.xpending("ailf:s:mailbox:blocking", GROUP)["pending"] == 1
