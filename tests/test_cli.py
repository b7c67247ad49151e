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
from ailf.errors import DecodeError
from ailf.testing import wait_for_dead_letters

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["run", "check", "send", "publish", "status", "dlq", "reset", "server"]
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
            assert published.stdout == b"received by 1 process subscribed to 'room'\n"
            counted = await ailf("publish", "room", "{}", "--json", *target)
            assert json.loads(counted.stdout) == {
                "topic": "room",
                "namespace": "cli",
                "received": 1,
            }
            unheard = await ailf("publish", "hall", "{}", *target)
            assert unheard.returncode == 0
            assert unheard.stdout == (
                b"nobody heard it: no process in namespace 'cli' is subscribed to 'hall' right"
                b" now (broadcasts are not stored)\n"
            )

            await rt.wait_idle(timeout=10)  # also waits for the broadcast's handler here
            assert rt.statistics()["echo"].processed == 5
            assert rt.statistics()["count"].processed == 2


async def test_ask_timeout_is_exit_1(redis_server: RedisServer, redis_config: RedisConfig) -> None:
    with trio.fail_after(30):
        result = await ailf(
            "send", "nobody", "{}", "--ask", "--timeout", "0.2", "--redis", redis_server.url
        )
    assert result.returncode == 1
    warning, error = result.stderr.decode().splitlines()
    assert warning.startswith("ailf: warning: no agent named 'nobody' has ever run")
    assert error.startswith("ailf: error:")
    assert "nobody" in error


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
    assert b"namespace shop  (1 live process)" in text.stdout
    assert b"orders" in text.stdout


def test_status_and_run_summaries_print_one_table_layout() -> None:
    """``ailf status`` and a run's summary share one table layout: names to the left,
    numbers to the right, two spaces apart."""
    from ailf._admin import format_status
    from ailf.runtime import AgentStatistics
    from ailf.scenario._report import RunReport

    agents = {
        "orders": {"replicas": 2, "processes": 1, "length": 1200, "pending": 3, "lag": 0},
        "nobody-reads-this": {"replicas": 0, "processes": 0, "length": 1, "pending": None},
    }
    for agent in agents.values():
        agent.setdefault("lag", None)
        agent.update(dead_letters=0, timers=0, problem=None, statistics=None)
    namespace = {"namespace": "shop", "processes": [], "agents": agents, "complete": True}
    assert format_status({"redis": "redis://r", "namespaces": [namespace]}).splitlines() == [
        "namespace shop  (0 live processes)",
        "  agent              replicas  processes  length  pending  lag  dead  timers",
        "  orders                    2          1    1200        3    0     0       0",
        "  nobody-reads-this         0          0       1        -    -     0       0",
    ]
    report = RunReport(
        scenario="s",
        namespace="s",
        redis="redis://r",
        until="idle",
        ok=True,
        outcome="idle",
        elapsed=1.0,
        agents=(AgentStatistics("worker", replicas=4, received=10, processed=10),),
        processes=1,
    )
    assert report.format().splitlines()[2:4] == [
        "agent   replicas  received  processed  failed  retried  dead  p50 ms  p99 ms  mean ms",
        "worker         4        10         10       0        0     0    0.00    0.00     0.00",
    ]


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
        # the id each line starts with is the one show, redrive and purge take
        assert text.stdout.startswith(
            f"{letter['dead_letter_id']}  (message {letter['message_id']}, ".encode()
        )
        assert b"5 deliveries) handler failed on delivery 5 of 5" in text.stdout
        assert b"InjectedFailure: poison message" in text.stdout

        shown = await ailf("dlq", "show", "flaky", letter["dead_letter_id"], *common)
        assert json.loads(shown.stdout) == [letter]

        redriven = await ailf("dlq", "redrive", "flaky", *common)
        assert redriven.stdout.startswith(b"1 dead letter of 'flaky' sent back")
        assert raw.xlen("ailf:dlq:dead:flaky") == 0
        newest = raw.xrevrange("ailf:dlq:mailbox:flaky", count=1)[0][1]
        assert json.loads(newest["envelope"])["body"] == {"poison": True, "n": 1}

        await _poison(redis_config, send=False)  # the redriven message fails again
        untouched = await ailf("dlq", "purge", "flaky", "1-1", *common)
        assert untouched.stdout.startswith(b"0 dead letters of 'flaky' deleted")
        purged = await ailf("dlq", "purge", "flaky", *common)
        assert purged.stdout.startswith(b"1 dead letter of 'flaky' deleted")
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
    another namespace is refused, its keys not even listed (no SCAN); the commands that
    need more say to pass -n, in one line."""
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_acl("shop", "pw"))
    admin.xadd("ailf:other:mailbox:secret", {"envelope": "{}"})
    admin.close()
    url = f"redis://shop:pw@127.0.0.1:{fresh_server.port}/0"
    shop = redis.Redis(port=fresh_server.port, username="shop", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        shop.scan(0)
    shop.close()
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
            text = await ailf("status", "-n", "shop", "--redis", url)
            listed = await ailf("dlq", "list", "flaky", "-n", "shop", "--json", "--redis", url)
            everything = await ailf("status", "--redis", url)
        refused = await ailf("send", "echo", "{}", "-n", "other", "--redis", url)
        defaulted = await ailf("send", "echo", "{}", "--redis", url)
        reset = await ailf("reset", "-n", "shop", "--yes", "--redis", url)
    assert status.returncode == 0, status.stderr
    [shop_status] = json.loads(status.stdout)["namespaces"]
    assert shop_status["agents"]["echo"]["replicas"] == 1
    assert shop_status["agents"]["flaky"]["dead_letters"] == 1
    assert shop_status["complete"] is False
    assert b"(this Redis user may not SCAN, so only the agents of live processes" in text.stdout
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    assert refused.returncode == 1
    assert b"NOPERM" in refused.stderr
    assert b"pass -n" not in refused.stderr  # the namespace was chosen: -n is no help
    for result, hint in (
        (
            everything,
            "listing every namespace needs SCAN, which this Redis user may not run:"
            " pass -n NAMESPACE",
        ),
        (
            defaulted,
            "this Redis user may not use namespace 'default', the default:"
            " pass -n NAMESPACE (or set AILF_NAMESPACE)",
        ),
        (reset, "reset lists the namespace's keys with SCAN, which this Redis user may not run"),
    ):
        err = result.stderr.decode()
        assert result.returncode == 1
        assert err.startswith("ailf: error: NOPERM") and err.endswith(f"; {hint}\n"), err
        assert len(err.splitlines()) == 1


# -- details a newcomer trips over ------------------------------------------------------


def test_a_stray_option_is_reported_with_the_commands_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "x.toml", "--verbose"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ailf run ")
    assert err.endswith("ailf run: error: unrecognized arguments: --verbose\n")


def test_dlq_ids_are_optional(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["dlq"])
    err = capsys.readouterr().err
    assert "ACTION AGENT [ID ...]" in err
    assert err.endswith("the following arguments are required: ACTION, AGENT\n")


def test_check_json_reports_a_failure_on_stdout_too(capsys) -> None:
    bad = ROOT / "tests" / "scenarios_bad" / "07-replicas-zero.toml"
    assert main(["check", str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "file": str(bad),
        "ok": False,
        "problems": ["agents[0].replicas: expected an integer >= 1, found 0"],
    }
    assert captured.err.startswith(f"ailf: error: {bad}: agents[0].replicas")


async def test_send_to_an_agent_that_never_ran_warns(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    target = ("-n", "warns", "--redis", redis_server.url)
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="warns") as rt:
            await rt.spawn(Echo, name="echo")
            await rt.spawn(Counter, name="counter")
            known = await ailf("send", "echo", "{}", *target)
            typo = await ailf("send", "ecko", "{}", *target)
            asked = await ailf("send", "ecko", "{}", "--ask", "--timeout", "0.1", *target)
        stopped = await ailf("send", "echo", "{}", *target)  # it ran: its mailbox waits
        elsewhere = await ailf("send", "echo", "{}", "-n", "empty", "--redis", redis_server.url)
    assert known.returncode == stopped.returncode == 0
    assert known.stderr == stopped.stderr == b""
    warning = (
        "ailf: warning: no agent named 'ecko' has ever run in namespace 'warns' (agents that"
        " have: counter, echo); the message waits in its mailbox until one does\n"
    )
    assert typo.returncode == 0
    assert typo.stderr.decode() == warning
    assert re.fullmatch(rb"\d+-\d+\n", typo.stdout)
    assert asked.returncode == 1
    assert asked.stderr.decode().startswith(warning + "ailf: error: ")
    assert elsewhere.stderr.decode().startswith(
        "ailf: warning: no agent named 'echo' has ever run in namespace 'empty' (no agent has)"
    )


async def test_a_malformed_dead_letter_is_listed_with_the_others(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    """Anyone who may write to the namespace can add to a dead-letter stream: one entry
    with a time or count that is not a number must not hide the rest."""
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    stream = "ailf:odd:dead:worker"
    raw.xadd(
        stream,
        {
            "id": "1-0",
            "reason": "fine",
            "failed_at": "1764120000.5",
            "delivery_count": "5",
            "envelope": '{"v": 1, "body": {"n": 1}}',
        },
    )
    raw.xadd(stream, {"failed_at": "yesterday", "delivery_count": "many", "envelope": "{"})
    raw.xadd(stream, {"failed_at": "nan", "delivery_count": "1e999"})
    raw.xadd(stream, {"failed_at": "1e300", "delivery_count": "-1"})
    raw.close()
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="odd") as rt:
            letters = await rt.dead_letters("worker")
        common = ("dlq", "list", "worker", "-n", "odd", "--redis", redis_server.url)
        text = await ailf(*common)
        listed = await ailf(*common, "--json")
    assert [(x.failed_at, x.delivery_count) for x in letters] == [
        (1764120000.5, 5),
        (0.0, 0),
        (0.0, 0),
        (1e300, -1),
    ]
    assert letters[0].body == {"n": 1}
    assert letters[1].body == "{"  # undecodable: the raw text
    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().splitlines()[::2]
    assert "(message 1-0, " in lines[0] and "5 deliveries) fine" in lines[0]
    assert "(message ?, unknown time, 0 deliveries) no reason given" in lines[1]
    assert "failed_at 1e+300" in lines[3]
    assert listed.returncode == 0, listed.stderr
    assert [x["failed_at"] for x in json.loads(listed.stdout)] == [1764120000.5, 0, 0, 1e300]


def _codec_error(value: object) -> Exception | None:
    """What ailf's codec raises encoding ``value`` for the wire, if anything."""
    from ailf.codec import dumps

    try:
        dumps(value)
    except Exception as exc:
        return exc
    return None


async def test_a_body_too_deep_to_read_is_one_line_and_exit_2() -> None:
    deeper = "[" * 100_000 + "]" * 100_000
    result = await ailf("send", "echo", "-", "--redis", UNREACHABLE, stdin=deeper.encode())
    assert result.returncode == 2
    assert result.stderr == b"ailf: error: the body is nested too deeply to be read as JSON\n"


async def test_a_body_the_codec_refuses_is_one_line_and_exit_2(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    deep = "[" * 985 + "]" * 985
    nested: list = []
    for _ in range(984):
        nested = [nested]
    if not isinstance(_codec_error(nested), DecodeError):  # it depends on the stack's depth
        pytest.skip("this interpreter encodes a body nested 985 deep: nothing to refuse")
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="bodies") as rt:
            await rt.spawn(Echo, name="echo")
            result = await ailf(
                "send",
                "echo",
                "-",
                "-n",
                "bodies",
                "--redis",
                redis_server.url,
                stdin=deep.encode(),
            )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("ailf: error: the body cannot be sent: "), err
    assert len(err.splitlines()) == 1


async def test_a_lone_surrogate_travels(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="bodies") as rt:
            await rt.spawn(Echo, name="echo")
            target = ("-n", "bodies", "--redis", redis_server.url)
            result = await ailf("send", "echo", '"\\ud800"', "--ask", *target)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == "\ud800"


async def test_reset_asks_then_empties_a_namespace(
    redis_server: RedisServer, redis_config: RedisConfig
) -> None:
    target = ("-n", "tidy", "--redis", redis_server.url)
    with trio.fail_after(60):
        async with Runtime(redis_config, namespace="tidy", retry_backoff=0.01) as rt:
            await rt.spawn(Flaky, name="flaky")
            await rt.send("flaky", {"poison": True})
            await wait_for_dead_letters(rt, "flaky")
            await rt.send("nobody", {"n": 1})
            await rt.send("nobody", {"n": 2})
            busy = await ailf("reset", *target, "--yes")
        async with Runtime(redis_config, namespace="kept") as rt:
            await rt.send("echo", {"n": 1})
        declined = await ailf("reset", *target, stdin=b"n\n")
        confirmed = await ailf("reset", *target, stdin=b"y\n")
        again = await ailf("reset", *target, "--yes")
    assert busy.returncode == 1
    assert b"has 1 live process (see ailf status -n tidy); stop them first" in busy.stderr
    question = (
        "delete 3 keys: 2 mailboxes (2 messages), 1 dead-letter stream (1 dead letter)"
        " of namespace 'tidy' on "
    )
    assert declined.returncode == 1
    assert declined.stderr.decode().startswith(question)
    assert declined.stderr.decode().endswith("? [y/N] ailf: nothing deleted\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout.startswith(b"deleted 3 keys of namespace 'tidy' on ")
    assert again.stdout.startswith(b"namespace 'tidy' on ")
    assert again.stdout.endswith(b" is empty already\n")
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    assert raw.keys("ailf:tidy:*") == []
    assert raw.keys("ailf:kept:*") == ["ailf:kept:mailbox:echo"]
    raw.close()


async def test_a_user_that_may_only_send_sends_without_the_check(
    fresh_server: RedisServer,
) -> None:
    """The never-ran warning is advice: a user allowed XADD alone sends all the same."""
    admin = redis.Redis(port=fresh_server.port)
    admin.execute_command(
        "ACL", "SETUSER", "sender", "on", ">pw", "resetkeys", "~ailf:shop:mailbox:*",
        "resetchannels", "-@all", "+xadd", "+ping", "+hello", "+client|setname", "+select",
    )  # fmt: skip
    url = f"redis://sender:pw@127.0.0.1:{fresh_server.port}/0"
    result = await ailf("send", "echo", "{}", "-n", "shop", "--redis", url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert admin.xlen("ailf:shop:mailbox:echo") == 1
    admin.close()
