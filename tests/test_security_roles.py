"""The ACL line of each role in docs/security.md gives that role what it needs, and
nothing a sender could use to stop, impersonate or eavesdrop on the agents."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio
from runtime_helpers import Echo

from ailf import RedisConfig, RedisServer, ResponseError, Runtime

SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"
PASSWORD = "sender-password"


def documented_role(user: str) -> list[str]:
    """The words after ``ACL SETUSER`` of security.md's line for ``user``, with the
    password replaced by :data:`PASSWORD`."""
    line = next(
        line.strip()
        for line in SECURITY.read_text().splitlines()
        if line.strip().startswith(f"ACL SETUSER {user} ")
    )
    words = line.split()[2:]
    return [f">{PASSWORD}" if word.startswith(">") else word for word in words]


@pytest.fixture
def sender(fresh_server: RedisServer) -> Iterator[RedisConfig]:
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_role("shop-sender"))
    admin.close()
    yield fresh_server.config.replace(username="shop-sender", password=PASSWORD)


async def test_a_sender_sends_and_asks(fresh_server: RedisServer, sender: RedisConfig) -> None:
    with trio.fail_after(20):
        async with Runtime(fresh_server.config, namespace="shop") as host:
            await host.spawn(Echo, name="echo")
            async with Runtime(sender, namespace="shop") as client:
                await client.send("echo", 1)
                assert await client.ask("echo", 2, timeout=5) == 2
                assert {p.id for p in (await host.registry()).processes} == {
                    host.process_id,
                    client.process_id,
                }
            assert [p.id for p in (await host.registry()).processes] == [host.process_id]


def test_a_sender_cannot_read_delete_or_publish(
    fresh_server: RedisServer, sender: RedisConfig
) -> None:
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.xadd("ailf:shop:mailbox:echo", {"envelope": '{"v":1,"body":1}'})
    user = redis.Redis(
        port=fresh_server.port,
        username="shop-sender",
        password=PASSWORD,
        decode_responses=True,
    )
    refused = [
        ("XRANGE", "ailf:shop:mailbox:echo", "-", "+"),
        ("XREADGROUP", "GROUP", "ailf", "me", "STREAMS", "ailf:shop:mailbox:echo", ">"),
        ("XREAD", "STREAMS", "ailf:shop:mailbox:echo", "0"),
        ("XACK", "ailf:shop:mailbox:echo", "ailf", "1-0"),
        ("XTRIM", "ailf:shop:mailbox:echo", "MAXLEN", "0"),
        ("XDEL", "ailf:shop:mailbox:echo", "1-0"),
        ("DEL", "ailf:shop:mailbox:echo"),
        ("SET", "ailf:shop:mailbox:echo", "x"),
        ("XADD", "ailf:shop:dead:echo", "*", "envelope", "{}"),
        ("XADD", "ailf:other:mailbox:echo", "*", "envelope", "{}"),
        ("PUBLISH", "ailf:shop:topic:news", "{}"),
        ("PUBLISH", "ailf:shop:reply:somebody", "{}"),
        ("SUBSCRIBE", "ailf:shop:topic:news"),
        ("HSET", "ailf:shop:mailbox:echo", "a", "b"),
        ("SCAN", "0"),
        ("KEYS", "*"),
    ]
    try:
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*command)
        envelope = json.dumps({"v": 1, "body": 2})
        assert user.xadd("ailf:shop:mailbox:echo", {"envelope": envelope})
    finally:
        user.close()
        admin.close()


async def test_the_operator_lists_resets_and_reads_dead_letters(fresh_server: RedisServer) -> None:
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_role("ailf-operator"))
    admin.xadd("ailf:shop:mailbox:echo", {"envelope": '{"v":1,"body":1}'})
    admin.xadd("ailf:shop:dead:echo", {"id": "1-0", "reason": "r", "envelope": "{}"})
    admin.set("other:secret", "s")
    url = f"redis://ailf-operator:{PASSWORD}@127.0.0.1:{fresh_server.port}/0"

    async def ailf(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            [sys.executable, "-m", "ailf", *args, "--redis", url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    status = await ailf("status")
    assert status.returncode == 0, status.stderr
    assert b"namespace shop" in status.stdout
    listed = await ailf("dlq", "list", "echo", "-n", "shop")
    assert listed.returncode == 0, listed.stderr
    reset = await ailf("reset", "-n", "shop", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert admin.keys("ailf:shop:*") == []
    user = redis.Redis(
        port=fresh_server.port, username="ailf-operator", password=PASSWORD, decode_responses=True
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get("other:secret")
    user.close()
    admin.close()


async def test_a_scheduler_schedules_and_cancels_but_reads_no_timer(
    fresh_server: RedisServer,
) -> None:
    """security.md's line for a sender that schedules: its timers arrive (found at the
    host's next look, since it rings no bell), it may cancel them, and it may not read
    the bodies waiting in the timers."""
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_role("shop-scheduler"))
    scheduler = fresh_server.config.replace(username="shop-scheduler", password=PASSWORD)
    with trio.fail_after(30):
        async with Runtime(fresh_server.config, namespace="shop") as host:
            await host.spawn(Echo, name="echo")
            async with Runtime(scheduler, namespace="shop") as client:
                kept = await client.send("echo", "timed", delay=0.1)
                dropped = await client.send("echo", "dropped", delay=60)
                assert await client.cancel_scheduled(dropped) is True
                timed = host.keys.address("echo").timed
                with pytest.raises(ResponseError, match="NOPERM"):
                    await client.client.execute_command("HGETALL", timed)
            assert kept.startswith("echo/")
            while not host.statistics()["echo"].processed:  # noqa: ASYNC110
                await trio.sleep(0.1)
    assert admin.zcard(host.keys.address("echo").timers) == 0
