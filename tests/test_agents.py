"""The ready-made agents in ``ailf.agents``, each run on a real runtime and Redis."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from ailf.agents.counter import Collector, Counter
from ailf.agents.echo import Echo
from ailf.agents.flaky import Flaky
from ailf.agents.monitor import Monitor
from ailf.agents.pingpong import Player
from ailf.agents.router import Router
from ailf.agents.service import Calculator
from ailf.agents.text import Reducer, Splitter, WordCounter, words
from ailf.agents.ticker import Ticker
from ailf.agents.worker import Worker

from ailf import RedisConfig, RemoteError, Runtime
from ailf.scenario._load import structure_strict
from ailf.testing import wait_drained, wait_for_dead_letters


@asynccontextmanager
async def running(config: RedisConfig) -> AsyncIterator[Runtime]:
    async with Runtime(config, namespace="agents", retry_backoff=0.01) as runtime:
        yield runtime


async def test_echo_answers_and_forwards(redis_config: RedisConfig, capsys) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Echo, name="echo", options={"forward_to": "count", "print": True})
            await rt.spawn(Counter, name="count")
            assert await rt.ask("echo", {"hi": 1}) == {"hi": 1}
            await wait_drained(rt)
            assert rt.statistics()["count"].processed == 1
    assert 'echo: {"hi": 1}' in capsys.readouterr().out


async def test_counter_counts_by_field_and_stops_the_runtime(redis_config: RedisConfig) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Counter, name="count", options={"by": "color", "stop_at": 4})
            for color in ("red", "red", "blue"):
                await rt.send("count", {"color": color})
            await wait_drained(rt)
            assert await rt.ask("count", {}) == {"total": 4, "by": {"red": 2, "blue": 1}}
            await trio.sleep_forever()  # the fourth message stopped the runtime


async def test_collector_counts_each_key_once(redis_config: RedisConfig) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Collector, name="results", options={"key": "job"})
            for job in ("a", "b", "a"):
                await rt.send("results", {"job": job})
            await wait_drained(rt)
            assert await rt.ask("results", {"job": "c"}) == {"distinct": 3, "received": 4}


async def test_router_routes_by_content_and_dead_letters_the_unroutable(
    redis_config: RedisConfig,
) -> None:
    with trio.fail_after(20):
        async with running(redis_config) as rt:
            await rt.spawn(
                Router, name="router", options={"field": "level", "routes": {"error": "alerts"}}
            )
            await rt.spawn(Counter, name="alerts")
            assert await rt.ask("router", {"level": "error"}) == "alerts"
            await rt.send("router", {"level": "debug"})
            [letter] = await wait_for_dead_letters(rt, "router")
            assert letter.error_type == "UnroutableMessage"
            assert "no route for level='debug'" in letter.error_message


async def test_worker_pool_shares_one_mailbox(redis_config: RedisConfig) -> None:
    with trio.fail_after(20):
        async with running(redis_config) as rt:
            await rt.spawn(Worker, name="pool", replicas=3, options={"results_to": "results"})
            await rt.spawn(Collector, name="results")
            for n in range(30):
                await rt.send("pool", {"n": n})
            await wait_drained(rt)
            assert rt.statistics()["pool"].processed == 30
            assert (await rt.ask("results", {"job": "x"}))["distinct"] == 31
            result = await rt.ask("pool", {"n": 99})
            assert result["body"] == {"n": 99}
            assert result["worker"].startswith("pool/")


async def test_ticker_sends_on_a_schedule(redis_config: RedisConfig) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Counter, name="count", options={"stop_at": 3})
            await rt.spawn(
                Ticker, name="tick", options={"interval": 0.01, "count": 3, "to": "count"}
            )
            await trio.sleep_forever()  # the counter stops the runtime after 3 ticks
    assert rt.statistics()["count"].processed == 3


def test_ticker_needs_exactly_one_target() -> None:
    for options in ({"to": "a", "topic": "b"}, {}):
        _, problems = structure_strict(options, Ticker.Options, "options")
        assert problems == ['options: expected exactly one of to = "agent" and topic = "topic"']


async def test_monitor_prints_broadcasts(redis_config: RedisConfig, capsys) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Monitor, name="log", topics=["room"], options={"field": "text"})
            await rt.spawn(Counter, name="count", topics=["room"], options={"stop_at": 1})
            await rt.publish("room", {"text": "hello"})
            await trio.sleep_forever()
    assert "log [room] hello" in capsys.readouterr().out


async def test_calculator_answers_and_raises_remotely(redis_config: RedisConfig) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Calculator, name="calc", options={"digits": 2})
            assert await rt.ask("calc", {"op": "add", "args": [1, 2, 3]}) == {"result": 6}
            assert await rt.ask("calc", {"op": "div", "args": [2, 3]}) == {"result": 0.67}
            with pytest.raises(RemoteError, match="ZeroDivisionError"):
                await rt.ask("calc", {"op": "div", "args": [1, 0]})
            with pytest.raises(RemoteError, match="ValueError"):
                await rt.ask("calc", {"op": "pow", "args": [2]})


async def test_flaky_retries_then_succeeds_and_dead_letters_poison(
    redis_config: RedisConfig,
) -> None:
    with trio.fail_after(20):
        async with running(redis_config) as rt:
            await rt.spawn(Flaky, name="flaky", options={"fail_deliveries": 2})
            await rt.send("flaky", {"n": 1})
            await rt.send("flaky", {"poison": True})
            [letter] = await wait_for_dead_letters(rt, "flaky")
            await wait_drained(rt)
            stats = rt.statistics()["flaky"]
    assert letter.body == {"poison": True}
    assert letter.delivery_count == Flaky.max_deliveries
    assert stats.processed == 1
    assert stats.failed == 2 + Flaky.max_deliveries
    assert stats.dead_lettered == 1


async def test_players_play_until_the_last_round(redis_config: RedisConfig, capsys) -> None:
    with trio.fail_after(10):
        async with running(redis_config) as rt:
            await rt.spawn(Player, name="ping", options={"peer": "pong", "rounds": 5})
            await rt.spawn(Player, name="pong", options={"peer": "ping", "rounds": 5})
            await rt.send("ping", {"n": 0})
            await trio.sleep_forever()
    assert "pong: ball 5 reached" in capsys.readouterr().out


async def test_word_count_pipeline(redis_config: RedisConfig, capsys) -> None:
    text = "the cat\nthe dog\nit's the cat's toy\n" * 5
    with trio.fail_after(20):
        async with running(redis_config) as rt:
            await rt.spawn(Splitter, name="split", options={"chunk_size": 2, "to": "wc"})
            await rt.spawn(WordCounter, name="wc", replicas=2, options={"to": "reduce"})
            await rt.spawn(Reducer, name="reduce", options={"top": 3, "stop_when_done": True})
            assert await rt.ask("split", {"text": text}) == 8
            await trio.sleep_forever()  # the reducer stops the runtime when done
    counts = collections.Counter(words(text))
    out = capsys.readouterr().out
    assert f"reduce: {sum(counts.values())} words, {len(counts)} distinct" in out
    assert f"reduce: {counts['the']:6d} the" in out


def test_words_keeps_inner_apostrophes() -> None:
    assert words("It's the keeper's LEDGER -- 'quoted'") == [
        "it's",
        "the",
        "keeper's",
        "ledger",
        "quoted",
    ]
