"""The ``ailf`` command: help, usage errors, unreachable Redis, and every command against
a live runtime (the command runs as a real subprocess, the agents in this test)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import trio
from acl_helpers import documented_acl
from ailf.agents.counter import Counter
from ailf.agents.echo import Echo
from ailf.agents.flaky import Flaky
from messaging_helpers import wait_for
from process_helpers import answers, children_of, command_name, is_running, needs_proc

from ailf import RedisConfig, RedisServer, Runtime
from ailf.cli import build_parser, main
from ailf.testing import wait_for_dead_letters

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["run", "check", "send", "publish", "status", "dlq", "server"]
UNREACHABLE = "redis://127.0.0.1:1/0"


async def ailf(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "ailf", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


# -- help and usage -------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  ailf " + command in out


def test_top_level_help_lists_the_commands_but_not_the_internal_one(capsys) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out
    assert "_worker" not in out


def test_the_parser_knows_every_documented_command() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    for command in COMMANDS:
        assert f"## `ailf {command}" in doc
    assert build_parser().prog == "ailf"


def test_bad_json_is_a_usage_error(capsys) -> None:
    assert main(["send", "echo", "{nope", "--redis", UNREACHABLE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ailf: error: the body is not JSON")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "echo", "{}", "--count", "0"], "argument --count: expected an integer >= 1"),
        (["send", "echo", "{}", "--count", "x"], "argument --count: expected an integer, got 'x'"),
        (["send", "echo", "{}", "--ask", "--timeout", "-1"], "argument --timeout: expected a"),
        (["dlq", "list", "echo", "--count", "0"], "argument --count: expected an integer >= 1"),
        (["server", "--port", "99999"], "argument --port: expected a port number"),
    ],
    ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else None,
)
def test_numbers_out_of_range_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, *(["--redis", UNREACHABLE] if argv[0] != "server" else [])])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "echo", "{}", "--redis", "bogus://x"], "unsupported scheme 'bogus'"),
        (["send", "echo", "{}", "--redis", "redis://h:1/x"], "database 'x'"),
        (["send", "a b", "{}", "--redis", UNREACHABLE], "agent name: expected"),
        (["publish", "room", "{}", "-n", "", "--redis", UNREACHABLE], "namespace name"),
    ],
    ids=["scheme", "database", "agent", "namespace"],
)
def test_a_bad_url_or_name_is_a_usage_error(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ailf: error: ")
    assert message in err


def test_a_bad_log_level_is_a_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("AILF_LOG_LEVEL", "LOUD")
    assert main(["status", "--redis", UNREACHABLE]) == 2
    assert "AILF_LOG_LEVEL='LOUD' is not a log level" in capsys.readouterr().err


def test_run_only_with_an_unknown_agent_is_a_usage_error(capsys) -> None:
    assert main(["run", str(ROOT / "scenarios" / "quickstart.toml"), "--only", "nobody"]) == 2
    assert "--only: no agent named nobody" in capsys.readouterr().err


def test_check_says_what_the_scenario_is(capsys) -> None:
    assert main(["check", str(ROOT / "scenarios" / "work-queue.toml")]) == 0
    out = capsys.readouterr().out
    assert "2 agents (7 replicas in 3 processes), 300 messages, until 'idle'" in out


def test_check_json(capsys) -> None:
    assert main(["check", str(ROOT / "scenarios" / "ping-pong.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "echo", "{}"],
        ["send", "echo", "{}", "--ask"],
        ["publish", "room", "{}"],
        ["status"],
        ["dlq", "list", "echo"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_an_unreachable_redis_is_one_line_and_exit_1(argv: list[str], capsys) -> None:
    assert main([*argv, "--redis", UNREACHABLE]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()]
    assert err.startswith("ailf: error: cannot connect to Redis at 127.0.0.1:1")


def test_dlq_show_of_an_unknown_id_says_so(redis_config: RedisConfig, capsys) -> None:
    argv = ["dlq", "show", "worker", "123-0", "-n", "shop", "--redis", redis_config.url]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'worker' has no dead letter with id 123-0 in namespace 'shop'" in captured.err


def test_the_redis_url_comes_from_the_environment(monkeypatch, capsys) -> None:
    monkeypatch.setenv("AILF_REDIS_URL", UNREACHABLE)
    assert main(["status"]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


# -- against a live runtime -------------------------------------------------------------


async def test_send_ask_and_publish(redis_server: RedisServer, redis_config: RedisConfig) -> None:
    url = redis_server.url
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="cli") as rt:
            await rt.spawn(Echo, name="echo")
            await rt.spawn(Counter, name="count", topics=["room"])

            target = ("-n", "cli", "--redis", url)
            asked = await ailf("send", "echo", '{"a": [1, 2]}', "--ask", *target)
            assert asked.returncode == 0, asked.stderr
            assert json.loads(asked.stdout) == {"a": [1, 2]}

            piped = await ailf("send", "echo", "-", "--ask", *target, stdin=b"[1, 2]\n")
            assert json.loads(piped.stdout) == [1, 2]

            sent = await ailf("send", "echo", "7", "--count", "3", "--json", *target)
            assert sent.returncode == 0, sent.stderr
            assert len(json.loads(sent.stdout)["ids"]) == 3

            published = await ailf("publish", "room", '{"x": 1}', *target)
            assert published.returncode == 0, published.stderr
            assert published.stdout.strip() == b"1"  # one process subscribed

            await rt.wait_idle(timeout=10)  # also waits for the broadcast's handler here
            assert rt.statistics()["echo"].processed == 5
            assert rt.statistics()["count"].processed == 1


async def test_ask_timeout_is_exit_1(redis_server: RedisServer, redis_config: RedisConfig) -> None:
    with trio.fail_after(30):
        result = await ailf(
            "send", "nobody", "{}", "--ask", "--timeout", "0.2", "--redis", redis_server.url
        )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("ailf: error:")
    assert b"nobody" in result.stderr


async def test_status(redis_server: RedisServer, redis_config: RedisConfig) -> None:
    url = redis_server.url
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="shop") as rt:
            await rt.spawn(Echo, name="orders", replicas=2)
            await rt.send("nobody-reads-this", {"n": 1})
            await rt.registry()  # a fresh heartbeat; otherwise status sees it within 2 s
            result = await ailf("status", "--json", "--redis", url)
            text = await ailf("status", "-n", "shop", "--redis", url)
    assert result.returncode == 0, result.stderr
    [shop] = json.loads(result.stdout)["namespaces"]
    assert shop["namespace"] == "shop"
    assert len(shop["processes"]) == 1
    assert shop["agents"]["orders"]["replicas"] == 2
    assert shop["agents"]["nobody-reads-this"]["length"] == 1
    assert shop["agents"]["nobody-reads-this"]["replicas"] == 0
    assert text.returncode == 0
    assert b"namespace shop  (1 live processes)" in text.stdout
    assert b"orders" in text.stdout


async def test_status_of_an_empty_redis(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    result = await ailf("status", "--redis", redis_server.url)
    assert result.returncode == 0
    assert result.stdout.startswith(b"no ailf namespaces on redis://127.0.0.1:")


async def _poison(config: RedisConfig, *, send: bool = True) -> None:
    """Run the flaky agent until one poison message is dead-lettered."""
    async with Runtime(config, namespace="dlq", retry_backoff=0.01) as rt:
        await rt.spawn(Flaky, name="flaky")
        if send:
            await rt.send("flaky", {"poison": True, "n": 1})
        await wait_for_dead_letters(rt, "flaky")
        rt.stop()


async def test_dlq_list_show_redrive_purge(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    url = redis_server.url
    common = ("-n", "dlq", "--redis", url)
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    with trio.fail_after(60):
        await _poison(redis_config)

        listed = await ailf("dlq", "list", "flaky", *common, "--json")
        assert listed.returncode == 0, listed.stderr
        [letter] = json.loads(listed.stdout)
        assert letter["body"] == {"poison": True, "n": 1}
        assert letter["error_type"] == "InjectedFailure"

        text = await ailf("dlq", "list", "flaky", *common)
        assert b"InjectedFailure: poison message" in text.stdout

        shown = await ailf("dlq", "show", "flaky", letter["dead_letter_id"], *common)
        assert json.loads(shown.stdout)[0]["id"] == letter["id"]

        redriven = await ailf("dlq", "redrive", "flaky", *common)
        assert redriven.stdout.startswith(b"1 dead letters of 'flaky' sent back")
        assert raw.xlen("ailf:dlq:dead:flaky") == 0
        newest = raw.xrevrange("ailf:dlq:mailbox:flaky", count=1)[0][1]
        assert json.loads(newest["envelope"])["body"] == {"poison": True, "n": 1}

        await _poison(redis_config, send=False)  # the redriven message fails again
        untouched = await ailf("dlq", "purge", "flaky", "1-1", *common)
        assert untouched.stdout.startswith(b"0 dead letters of 'flaky' deleted")
        purged = await ailf("dlq", "purge", "flaky", *common)
        assert purged.stdout.startswith(b"1 dead letters of 'flaky' deleted")
        empty = await ailf("dlq", "list", "flaky", *common)
        assert empty.stdout.strip() == b"no dead letters for flaky"
    raw.close()


def test_server_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ailf", "server"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(url).ping()
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


WAITING_SCENARIO = """
[scenario]
name = "waits"
until = "stop"
timeout = 60

[[agents]]
name = "echo"
class = "ailf.agents.echo:Echo"
"""


def _killed_owner_leaves_no_server(owner: subprocess.Popen[str], port: int) -> None:
    """SIGKILL ``owner`` (no cleanup of its own can run) and check that its embedded
    server is gone all the same: the process, and anything on its port."""
    servers = [
        pid
        for pid in children_of(owner.pid)
        if command_name(pid) in ("redis-server", "valkey-server")
    ]
    assert len(servers) == 1, [command_name(pid) for pid in children_of(owner.pid)]
    others = [pid for pid in children_of(owner.pid) if pid not in servers]
    try:
        owner.kill()
        owner.wait()
        wait_for(lambda: not is_running(servers[0]), timeout=5)
        wait_for(lambda: not answers(port), timeout=5)
    finally:
        for pid in servers + others:  # whatever a failure left behind
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


@needs_proc
def test_a_killed_server_command_leaves_no_server() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-m", "ailf", "server"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = owner.stdout.readline().strip()
        assert redis.Redis.from_url(url).ping()
        _killed_owner_leaves_no_server(owner, int(url.rsplit(":", 1)[1].split("/")[0]))
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()


@needs_proc
def test_a_killed_run_leaves_no_embedded_server(tmp_path: Path) -> None:
    scenario = tmp_path / "waits.toml"
    scenario.write_text(WAITING_SCENARIO)
    owner = subprocess.Popen(
        [sys.executable, "-m", "ailf", "run", str(scenario)], stderr=subprocess.PIPE, text=True
    )
    try:
        port = None
        for line in owner.stderr:
            found = re.search(r"embedded Redis server started at redis://127.0.0.1:(\d+)/", line)
            port = int(found.group(1)) if found else port
            if "processes 1/1" in line:  # the run is under way: its worker is up
                break
        assert port is not None and redis.Redis(port=port).ping()
        _killed_owner_leaves_no_server(owner, port)
    finally:
        owner.kill()
        owner.wait()
        owner.stderr.close()


def test_check_as_a_real_command() -> None:
    bad = ROOT / "tests" / "scenarios_bad" / "07-replicas-zero.toml"
    result = subprocess.run(
        [sys.executable, "-m", "ailf", "check", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"ailf: error: {bad}: agents[0].replicas: expected an integer >= 1, found 0\n"
    )


async def test_the_acl_rule_in_operating_md_is_enough_and_confines(
    fresh_server: RedisServer,
) -> None:
    """docs/operating.md's one-namespace ACL: agents run, status and dlq work, and
    another namespace is refused."""
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_acl("shop", "pw"))
    admin.close()
    url = f"redis://shop:pw@127.0.0.1:{fresh_server.port}/0"
    config = RedisConfig.from_url(url)
    with trio.fail_after(30):
        async with Runtime(config, namespace="shop", retry_backoff=0.01) as rt:
            await rt.spawn(Echo, name="echo")
            await rt.spawn(Flaky, name="flaky")
            assert await rt.ask("echo", {"n": 1}) == {"n": 1}
            await rt.send("flaky", {"poison": True})
            await wait_for_dead_letters(rt, "flaky")
            await rt.registry()  # a fresh heartbeat with the agents in it
            status = await ailf("status", "-n", "shop", "--json", "--redis", url)
            listed = await ailf("dlq", "list", "flaky", "-n", "shop", "--json", "--redis", url)
        refused = await ailf("send", "echo", "{}", "-n", "other", "--redis", url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["namespaces"][0]["agents"]["echo"]["replicas"] == 1
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    assert refused.returncode == 1
    assert b"NOPERM" in refused.stderr
