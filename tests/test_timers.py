"""Durable time in one process: delayed sends, cancel, reminders one-shot and recurring,
keyed agents, catch-up, bad input (docs/time.md)."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import time
from typing import Any

import attrs
import pytest
import redis
import trio

from ailf import Agent, ConfigError, Message, RedisConfig, Runtime
from ailf._admin import namespace_status
from ailf.runtime._timekeeper import Timekeeper
from ailf.runtime._timers import LEASE_MS, MOVE

UTC = dt.UTC


class Recorder(Agent):
    """Records (body, reminder, when handled) of every message."""

    seen: list[tuple[Any, str | None, float]] = []

    async def on_message(self, message: Message[Any]) -> None:
        Recorder.seen.append((message.body, message.reminder, time.time()))


def raw(config: RedisConfig) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=config.port, decode_responses=True)


async def wait_for(condition: Any, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - agents record into a plain list
            await trio.sleep(0.005)


@pytest.fixture(autouse=True)
def _clear() -> None:
    Recorder.seen = []


async def test_a_delayed_message_arrives_when_due_and_not_before(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        started = time.time()
        timer = await runtime.send("rec", "later", delay=0.3)
        await runtime.send("rec", "now")
        assert timer.startswith("rec/")
        await wait_for(lambda: len(Recorder.seen) == 2)
        (first, _, _), (second, reminder, handled) = Recorder.seen
        assert (first, second, reminder) == ("now", "later", None)
        assert 0.3 <= handled - started < 1.0
        client = raw(redis_config)
        address = runtime.keys.address("rec")
        assert client.zcard(address.timers) == 0 and client.hlen(address.timed) == 0


async def test_at_takes_an_aware_datetime_or_epoch_seconds_and_the_past_is_now(
    redis_config: RedisConfig,
) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        soon = dt.datetime.now(UTC) + dt.timedelta(seconds=0.2)
        await runtime.send("rec", "aware", at=soon)
        await runtime.send("rec", "epoch", at=time.time() + 0.1)
        await runtime.send("rec", "past", at=time.time() - 3600)
        await wait_for(lambda: len(Recorder.seen) == 3)
        assert [body for body, _, _ in Recorder.seen] == ["past", "epoch", "aware"]
        assert Recorder.seen[2][2] >= soon.timestamp()


async def test_cancel_scheduled(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        keep = await runtime.send("rec", "keep", delay=0.2)
        drop = await runtime.send("rec", "drop", delay=0.2)
        assert (await namespace_status(runtime.client, "t"))["agents"]["rec"]["timers"] == 2
        assert await runtime.cancel_scheduled(drop) is True
        assert await runtime.cancel_scheduled(drop) is False
        await wait_for(lambda: len(Recorder.seen) == 1)
        await trio.sleep(0.3)
        assert [body for body, _, _ in Recorder.seen] == ["keep"]
        assert await runtime.cancel_scheduled(keep) is False  # it fired


async def test_timers_wait_for_an_agent_that_is_not_running(redis_config: RedisConfig) -> None:
    """Nothing moves a timer of a mailbox nobody reads; the first reader moves it."""
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.send("rec", "early", delay=0.05)
        await trio.sleep(0.3)
        assert raw(redis_config).zcard(runtime.keys.address("rec").timers) == 1
        await runtime.spawn(Recorder, "rec")
        await wait_for(lambda: len(Recorder.seen) == 1)


class Sender(Agent):
    async def on_message(self, message: Message[Any]) -> None:
        await self.send("rec", {"from": self.name}, delay=0.1)


async def test_an_agent_sends_with_a_delay(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        await runtime.spawn(Sender, "sender")
        await runtime.send("sender", "go")
        await wait_for(lambda: len(Recorder.seen) == 1)
        assert Recorder.seen[0][0] == {"from": "sender"}


class Nagger(Agent):
    """Sets reminders when asked; records each firing."""

    async def on_message(self, message: Message[Any]) -> Any:
        if message.reminder is not None:
            Recorder.seen.append((message.body, message.reminder, time.time()))
            return None
        command = message.body
        if command["do"] == "set":
            how = command["how"]
            reminder = await self.set_reminder(command["name"], command.get("body"), **how)
            return reminder.name
        if command["do"] == "cancel":
            return await self.cancel_reminder(command["name"])
        return [(r.name, r.every, r.cron, r.body) for r in await self.reminders()]


async def test_reminders_one_shot_recurring_listed_and_cancelled(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Nagger, "nag")
        set_ = {"do": "set"}
        await runtime.ask("nag", {**set_, "name": "once", "body": 1, "how": {"delay": 0.1}})
        await runtime.ask("nag", {**set_, "name": "tick", "body": 2, "how": {"every": 0.15}})
        paris = {"cron": "0 9 * * *", "timezone": "Europe/Paris"}
        await runtime.ask("nag", {**set_, "name": "daily", "how": paris})
        listed = await runtime.ask("nag", {"do": "list"})
        assert [name for name, *_ in listed] == ["once", "tick", "daily"]
        assert listed[2] == ["daily", None, "0 9 * * *", None]
        await wait_for(lambda: sum(1 for _, name, _ in Recorder.seen if name == "tick") >= 3)
        assert await runtime.ask("nag", {"do": "cancel", "name": "tick"}) is True
        fired = len(Recorder.seen)
        await trio.sleep(0.4)
        assert len(Recorder.seen) <= fired + 1  # one may have been moved already
        assert [(body, name) for body, name, _ in Recorder.seen if name == "once"] == [(1, "once")]
        assert [name for name, *_ in await runtime.ask("nag", {"do": "list"})] == ["daily"]
        daily = (await runtime.reminders("nag"))[0]
        assert daily.due.astimezone(dt.timezone(dt.timedelta(hours=1))).hour in (9, 10)


async def test_a_reminder_set_again_replaces_the_old_one(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        await runtime.set_reminder("rec", "r", "old", delay=0.2)
        await runtime.set_reminder("rec", "r", "new", delay=0.1)
        await wait_for(lambda: len(Recorder.seen) == 1)
        await trio.sleep(0.3)
        assert [(body, name) for body, name, _ in Recorder.seen] == [("new", "r")]


async def test_catch_up_fires_once_for_every_missed_period(redis_config: RedisConfig) -> None:
    """A recurring reminder whose process was down for many periods fires once, then
    keeps its rhythm; an overdue one-shot fires once."""
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.set_reminder("rec", "tick", "t", every=0.5)
        await runtime.send("rec", "overdue", delay=0)
        await trio.sleep(1.6)  # three periods with nobody reading; the next due at 2.0
        started = time.time()
        await runtime.spawn(Recorder, "rec")
        await wait_for(lambda: len(Recorder.seen) >= 2)
        await trio.sleep(0.2)
        caught_up = [when for body, _, when in Recorder.seen if body == "t"]
        assert len(caught_up) == 1 and caught_up[0] - started < 0.2
        assert [body for body, _, _ in Recorder.seen].count("overdue") == 1
        await wait_for(lambda: len(Recorder.seen) >= 3)  # then on its rhythm again
        assert Recorder.seen[-1][2] - caught_up[0] > 0.15


@attrs.define
class Count:
    reminded: int = 0


class Account(Agent):
    state_type = Count

    async def on_message(self, message: Message[Any]) -> Any:
        if message.reminder == "statement":
            self.state.reminded += 1
            Recorder.seen.append((self.key, message.reminder, time.time()))
            return None
        await self.set_reminder("statement", every=0.1)
        return [r.key for r in await self.reminders()]


async def test_keyed_agents_delay_and_remind_per_key(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Account, "account", keyed=True, partitions=4)
        timer = await runtime.send("account", "later", key="alice", delay=0.05)
        assert timer.startswith("account/") and timer.count("/") == 2
        assert await runtime.ask("account", "start", key="bob") == ["bob"]
        assert await runtime.ask("account", "start", key="carol") == ["carol"]
        await wait_for(lambda: {k for k, _, _ in Recorder.seen} >= {"bob", "carol"})
        assert [r.key for r in await runtime.reminders("account", key="bob")] == ["bob"]
        assert await runtime.cancel_reminder("account", "statement", key="bob") is True
        assert await runtime.cancel_reminder("account", "statement", key="carol") is True
        await runtime.wait_idle(["account"], timeout=5)
        state = await runtime.state("account", "carol")
        assert state["reminded"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"delay": -1}, "delay: expected finite seconds >= 0, got -1"),
        ({"delay": math.nan}, "got nan"),
        ({"delay": "30s"}, "expected a number of seconds, got '30s'"),
        ({"at": dt.datetime(2030, 1, 1)}, "naive datetime"),
        ({"at": "tomorrow"}, "expected an aware datetime or epoch seconds, got 'tomorrow'"),
        ({"delay": 1, "at": time.time()}, "not both"),
    ],
)
async def test_bad_times_are_refused_naming_the_value(
    redis_config: RedisConfig, kwargs: dict[str, Any], says: str
) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        with pytest.raises(ConfigError, match=rf"send\('rec'\).*{_escape(says)}"):
            await runtime.send("rec", "x", **kwargs)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"cron": "61 * * * *"}, "'61 * * * *' is not a cron expression"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "'Mars/Olympus' is not an IANA"),
        ({"every": 0}, "every must be seconds > 0"),
        ({"every": 1, "cron": "* * * * *"}, "every= or cron=, not both"),
        ({"cron": "* * * * *", "delay": 1}, "no delay= or at="),
        ({}, "give delay= (seconds) or at= (a time)"),
    ],
)
async def test_bad_reminders_are_refused(
    redis_config: RedisConfig, kwargs: dict[str, Any], says: str
) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        with pytest.raises(ConfigError, match=_escape(says)):
            await runtime.set_reminder("rec", "r", **kwargs)


async def test_bad_names_and_ids(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="t") as runtime:
        with pytest.raises(ConfigError, match="agent name"):
            await runtime.send("no such agent", "x", delay=1)
        with pytest.raises(ConfigError, match="reminder name"):
            await runtime.set_reminder("rec", "a/b", delay=1)
        with pytest.raises(ConfigError, match="'nope' is not an id returned by send"):
            await runtime.cancel_scheduled("nope")


async def test_idle_cost_does_not_grow_with_pending_timers(redis_config: RedisConfig) -> None:
    """10,000 timers due in an hour: the timekeeper sleeps (a look every RESYNC)."""
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        for n in range(100):
            async with trio.open_nursery() as nursery:
                for m in range(100):
                    nursery.start_soon(lambda b: runtime.send("rec", b, delay=3600), n * 100 + m)
        client = raw(redis_config)
        before = client.info("commandstats")
        await trio.sleep(1.0)
        after = client.info("commandstats")
        calls = sum(
            after[name]["calls"] - before.get(name, {"calls": 0})["calls"] for name in after
        )
        assert calls < 30  # heartbeats, sweeps, claims: none per timer
        assert isinstance(runtime._host_context.timekeeper, Timekeeper)


async def test_hostile_timer_keys_stop_nothing(redis_config: RedisConfig) -> None:
    """What anyone with write access may put in timer keys: a value that is not an
    envelope (dead-lettered when due, saying why), a timer with no value (dropped), a
    garbled recurring reminder (fired once, then dropped), a timers key of the wrong
    type (that mailbox's timers wait; the others move), garbage on a doorbell."""
    client = raw(redis_config)
    async with Runtime(redis_config, namespace="t") as runtime:
        rec = runtime.keys.address("rec")
        garbled = {
            "r/bad/": "Rnot json\n{}",
            "r/list/": "R[1, 2]\n{}",
            "r/every/": 'R{"every": "x", "timezone": "UTC"}\n{}',
        }
        client.hset(rec.timed, mapping={"junk": "not an envelope", **garbled})
        client.zadd(rec.timers, {"junk": 0, "orphan": 0, **dict.fromkeys(garbled, 0)})
        client.zadd(rec.timers, {"forever": math.inf})
        client.set(runtime.keys.address("broken").timers, "a string")
        # Written before the agents run: found when their mailboxes are bound (a hostile
        # writer rings no bell; timers written later are found at the next look).
        for name in ("rec", "other", "broken"):
            await runtime.spawn(Recorder, name)
        for data in ("t", "tNaN", "t-5", "t" + "9" * 40, "\x00\xff"):
            client.publish(rec.bell, data)
        await runtime.send("rec", "fine", delay=0.05)
        await runtime.send("other", "also fine", delay=0.05)
        await wait_for(lambda: len(Recorder.seen) == 2)
        letters = await runtime.dead_letters("rec")
        with trio.fail_after(10):
            while len(letters) < 4:
                await trio.sleep(0.05)
                letters = await runtime.dead_letters("rec")
        assert all("envelope" in letter.reason for letter in letters), letters
        assert client.zrange(rec.timers, 0, -1) == ["forever"] and client.hlen(rec.timed) == 0
        assert await runtime.ask("rec", "still answering") is None
        assert sorted(body for body, _, _ in Recorder.seen)[:2] == ["also fine", "fine"]


async def test_the_command_lists_and_cancels_reminders_and_timers(
    redis_config: RedisConfig,
) -> None:
    url = ["-n", "t", "--redis", redis_config.url]

    def ailf(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ailf", *args, *url], capture_output=True, text=True, timeout=60
        )

    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.set_reminder("rec", "invoice", {"a": 1}, cron="0 6 1 * *")
        await runtime.set_reminder("rec", "tick", every=90)
    listed = await trio.to_thread.run_sync(ailf, "reminders", "rec")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["reminder", "key", "next"]
    assert lines[1].startswith("tick ") and "every 90 s" in lines[1]
    assert lines[2].startswith("invoice ") and "cron 0 6 1 * * (UTC)" in lines[2]
    as_json = json.loads((await trio.to_thread.run_sync(ailf, "reminders", "rec", "--json")).stdout)
    assert [r["name"] for r in as_json] == ["tick", "invoice"] and as_json[1]["body"] == {"a": 1}
    cancelled = await trio.to_thread.run_sync(ailf, "reminders", "rec", "--cancel", "tick")
    assert cancelled.returncode == 0 and "cancelled reminder 'tick'" in cancelled.stdout
    again = await trio.to_thread.run_sync(ailf, "reminders", "rec", "--cancel", "tick")
    assert again.returncode == 1
    sent = await trio.to_thread.run_sync(ailf, "send", "rec", "1", "--delay", "1h")
    timer = sent.stdout.strip()
    assert (await trio.to_thread.run_sync(ailf, "cancel", timer)).returncode == 0
    assert (await trio.to_thread.run_sync(ailf, "cancel", timer)).returncode == 1
    bad = await trio.to_thread.run_sync(ailf, "cancel", "nonsense")
    assert bad.returncode == 2 and "is not an id returned by send" in bad.stderr
    late = await trio.to_thread.run_sync(ailf, "send", "rec", "1", "--delay", "3y")
    assert late.returncode == 2 and "'3y' is not a duration" in late.stderr
    naive = await trio.to_thread.run_sync(ailf, "send", "rec", "1", "--at", "2030-01-01T09:00")
    assert naive.returncode == 2 and "ISO 8601 time with its offset" in naive.stderr
    asked = await trio.to_thread.run_sync(ailf, "send", "rec", "1", "--ask", "--delay", "1")
    assert asked.returncode == 2 and "takes no --delay or --at" in asked.stderr


async def test_a_mailbox_that_cannot_take_its_timers_is_retried_backing_off(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A mailbox key of the wrong type fails every move into it: the timekeeper tries
    again later, backing off (not in a loop), and moves the timers once it is repaired."""
    client = raw(redis_config)
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Recorder, "rec")
        await runtime.send("rec", "patient", delay=0.3)
        address = runtime.keys.address("rec")
        client.delete(address.mailbox)
        client.set(address.mailbox, "not a stream")
        await trio.sleep(1.5)
        failures = caplog.text.count("moving the due timers of")
        assert 1 <= failures <= 8, failures
        client.delete(address.mailbox)
        await wait_for(lambda: [body for body, _, _ in Recorder.seen] == ["patient"], 30)


class Quitter(Agent):
    """Replica 1 stops itself at start, for good."""

    restart = "temporary"

    async def on_start(self) -> None:
        if self.replica == 1:
            self.stop()

    async def on_message(self, message: Message[Any]) -> int:
        return self.replica


async def test_a_replica_leaving_keeps_its_siblings_bell(redis_config: RedisConfig) -> None:
    """Two local replicas' readers and the timekeeper share the mailbox's doorbell: one
    replica leaving must leave the others listening (it used to unsubscribe the bell
    for all, leaving the survivor to find messages at its sweeps only)."""
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.spawn(Quitter, "quit", replicas=2)
        await runtime.wait_idle(timeout=5)
        with trio.fail_after(5):
            while runtime.statistics()["quit"].replicas != 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
        bell = runtime.keys.address("quit").bell
        assert len(runtime.hub._bells[bell]) == 2  # the survivor's reader, the timekeeper
        for _ in range(5):
            with trio.fail_after(1):
                assert await runtime.ask("quit", "hi") == 0


async def test_a_reminder_leased_by_a_process_that_died_fires_once_after_the_lease(
    redis_config: RedisConfig,
) -> None:
    """A process leased a due recurring reminder (MOVE) and died before firing it: once
    the lease runs out another process fires it, once, and schedules its next time."""
    async with Runtime(redis_config, namespace="t") as runtime:
        await runtime.set_reminder("rec", "tick", "t", every=60, delay=0)
        address = runtime.keys.address("rec")
        keys = [address.timers, address.timed, address.mailbox]
        await trio.sleep(0.01)  # due "now", rounded up to the next millisecond
        reply = await MOVE(runtime.client, keys, [1000, "", LEASE_MS])  # the dead process's
        assert len(reply) == 7 and reply[3] == "r/tick/"  # one lease handed out, not fired
        leased = time.time()
        await runtime.spawn(Recorder, "rec")
        await wait_for(lambda: len(Recorder.seen) == 1, 10)
        assert Recorder.seen[0][2] - leased >= LEASE_MS / 1000 - 0.1
        await trio.sleep(0.3)
        assert len(Recorder.seen) == 1
        (reminder,) = await runtime.reminders("rec")
        assert reminder.due.timestamp() > time.time() + 50


async def test_bytes_that_are_not_text_in_timer_keys_stop_nothing(
    redis_config: RedisConfig,
) -> None:
    """Timer keys are written by anyone who may schedule, so they may hold any bytes: an
    envelope that is not text (moved, then dead-lettered by the reader), a timer id that
    is not text (peeked and moved all the same), a recurring reminder whose name is not
    text (leased, then tried again later). Other timers still move; the runtime answers."""
    client = redis.Redis(host="127.0.0.1", port=redis_config.port)
    async with Runtime(redis_config, namespace="t") as runtime:
        rec = runtime.keys.address("rec")
        every = b'R{"every": 60, "timezone": "UTC"}\n{"v": 1, "body": 1}'
        client.hset(rec.timed, mapping={b"\xff\xfe": b"\x80 not text", b"r/\xff/": every})
        client.zadd(rec.timers, {b"\xff\xfe": 0, b"r/\xff/": 0, b"\xc3": 0})
        # Written before the agent runs: its process finds them when it binds the mailbox
        # (a hostile writer rings no bell; such timers are found at the next look).
        await runtime.spawn(Recorder, "rec")
        await runtime.send("rec", "fine", delay=0.05)
        await wait_for(lambda: "fine" in [body for body, _, _ in Recorder.seen])
        assert [body for body, _, _ in Recorder.seen] == ["fine"], Recorder.seen
        with trio.fail_after(10):
            while not await runtime.dead_letters("rec"):  # noqa: ASYNC110 - in Redis
                await trio.sleep(0.05)
        (letter,) = await runtime.dead_letters("rec")
        assert "not UTF-8" in letter.reason
        assert await runtime.ask("rec", "still answering") is None
