"""Every shipped scenario, run for real: ``ailf run FILE`` in a subprocess, with its worker
processes, against a throwaway Redis; checked by exit code and by the JSON summary."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
import trio
from ailf.agents.text import words
from messaging_helpers import wait_for
from process_helpers import children_of, is_running, needs_proc

from ailf import Agent, RedisConfig, RedisServer, Runtime
from ailf.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"


def ailf(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ailf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def run_json(
    name: str, redis: RedisServer, *extra: str, file: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """``ailf run --json`` of a shipped scenario (or of ``file``)."""
    file = file or SCENARIOS / f"{name}.toml"
    result = ailf("run", str(file), "--redis", redis.url, "--json", *extra)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


@pytest.fixture
def redis(redis_server: RedisServer, redis_config: RedisConfig) -> RedisServer:
    return redis_server  # redis_config flushed it


def write_scenario(folder: Path, name: str, toml: str, **modules: str) -> Path:
    """``folder/name.toml`` holding ``toml``, with ``modules`` (file stem: source) beside it."""
    for stem, source in modules.items():
        (folder / f"{stem}.py").write_text(source)
    file = folder / f"{name}.toml"
    file.write_text(toml)
    return file


def counters(summary: dict[str, Any], agent: str) -> dict[str, Any]:
    return summary["agents"][agent]


def test_quickstart_with_an_embedded_server() -> None:
    """The README's first command: no Redis given, none needed."""
    result = ailf("run", "scenarios/quickstart.toml")
    assert result.returncode == 0, result.stderr
    assert "scenario quickstart: ok" in result.stdout
    assert "(namespace quickstart, 1 process, 0 process restarts, redis " in result.stdout
    assert 'echo: {"lang": "fr", "text": "bonjour"}' in result.stdout
    assert "embedded Redis server started" in result.stderr
    assert "in flight" not in result.stderr  # what a stop waits for: said when it waits
    table = result.stdout.split("\n\n")[1].splitlines()
    assert table[0].split()[:4] == ["agent", "replicas", "received", "processed"]
    assert table[1].split()[:4] == ["echo", "2", "3", "3"]


def test_ping_pong(redis: RedisServer) -> None:
    code, summary, _ = run_json("ping-pong", redis)
    assert code == 0, summary["problems"]
    assert summary["outcome"] == "stopped by an agent"
    assert counters(summary, "ping")["processed"] == 11
    assert counters(summary, "pong")["processed"] == 10


def test_work_queue_spreads_over_processes(redis: RedisServer) -> None:
    code, summary, _ = run_json("work-queue", redis)
    assert code == 0, summary["problems"]
    assert summary["processes"] == 3
    assert counters(summary, "worker")["processed"] == 300
    assert counters(summary, "worker")["replicas"] == 6
    assert counters(summary, "collector")["processed"] == 300


def test_keyed_assistants_remember_each_user(redis: RedisServer) -> None:
    code, summary, _ = run_json("assistants", redis)
    assert code == 0, summary["problems"]
    assert summary["processes"] == 2
    replies = {entry["body"]["text"]: entry["reply"] for entry in summary["replies"]}
    assert replies["what did I say?"] == {
        "user": "ada",
        "turns": 2,
        "said": ["hello", "what did I say?"],
    }
    assert replies["how many times?"]["turns"] == 6
    state = ailf("state", "assistant", "grace", "-n", "assistants", "--redis", redis.url)
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout) == {"turns": 1, "history": ["bonjour"]}
    missing = ailf("state", "assistant", "nobody", "-n", "assistants", "--redis", redis.url)
    assert missing.returncode == 1
    assert "saved no state for key 'nobody'" in missing.stderr
    where = ["-n", "assistants", "--redis", redis.url]
    one = ailf("status", *where, "--agent", "assistant", "--key", "ada", "--json")
    assert one.returncode == 0, one.stderr
    report = json.loads(one.stdout)
    assert (report["unread"], report["pending"], report["has_state"]) == (0, 0, True)
    assert report["held_by"] is None  # the run ended: its hosts gave the partitions back
    assert 0 <= report["partition"] < 16 and report["dead_letters"] == 0
    no_key = ailf("state", "assistant", *where)
    assert no_key.returncode == 2 and "a keyed agent: say which key" in no_key.stderr
    half = ailf("status", *where, "--key", "ada")
    assert half.returncode == 2 and "also give -n NAMESPACE and --agent AGENT" in half.stderr
    status = json.loads(ailf("status", *where, "--json").stdout)
    (namespace,) = status["namespaces"]
    assert namespace["agents"]["assistant"]["length"] == 9  # all partitions added up


def test_word_count_matches_a_direct_count(redis: RedisServer) -> None:
    result = ailf("run", str(SCENARIOS / "word-count.toml"), "--redis", redis.url)
    assert result.returncode == 0, result.stderr
    text = (SCENARIOS / "data" / "lighthouse.txt").read_text()
    all_words = words(text)
    assert f"reducer: {len(all_words)} words, {len(set(all_words))} distinct" in result.stdout
    assert f"reducer: {all_words.count('keeper'):6d} keeper" in result.stdout


def test_word_count_split_over_two_runs_with_only(redis: RedisServer) -> None:
    """--only: one run hosts the reducer, another the rest, as two hosts would."""
    file = str(SCENARIOS / "word-count.toml")
    argv = [sys.executable, "-m", "ailf", "run", file, "--redis", redis.url, "--json"]
    reducer = subprocess.Popen(
        [*argv, "--only", "reducer"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        rest = ailf("run", file, "--redis", redis.url, "--json", "--only", "splitter", "counter")
        out, err = reducer.communicate(timeout=60)
    finally:
        reducer.kill()
    assert rest.returncode == 0, rest.stderr
    assert reducer.returncode == 0, err
    assert set(json.loads(rest.stdout)["agents"]) == {"splitter", "counter"}
    assert json.loads(out)["agents"]["reducer"]["processed"] == 9


def test_broadcast_chat_reaches_every_member(redis: RedisServer) -> None:
    code, summary, stderr = run_json("broadcast-chat", redis)
    assert code == 0, summary["problems"]
    for member in ("alice", "bob", "carol", "moderator"):
        assert counters(summary, member)["processed"] == 4, member
    # agents' own output goes to stderr when --json owns stdout
    assert "carol [room] good morning both" in stderr


def test_crash_recovery_loses_nothing(redis: RedisServer) -> None:
    code, summary, stderr = run_json("crash-recovery", redis)
    assert code == 0, summary["problems"]
    assert summary["restarts"] >= 1
    assert any("SIGKILL to process 1" in event for event in summary["events"])
    assert "collector: all 120 results collected" in stderr
    assert counters(summary, "collector")["processed"] >= 120
    [check] = summary["checks"]
    assert check["counter"] == "processed_at_least"
    assert check["ok"]


def test_poison_message_ends_in_the_dead_letter_stream(redis: RedisServer) -> None:
    code, summary, _ = run_json("poison-message", redis)
    assert code == 0, summary["problems"]
    payments = counters(summary, "payments")
    assert payments["processed"] == 20
    assert payments["dead_lettered"] == 1
    assert payments["failed"] == 20 + 5
    [letter] = summary["dead_letters"]["payments"]
    assert '"poison": true' in letter
    assert "InjectedFailure" in letter
    # the summary names a dead letter as ailf dlq does: by the id dlq show/redrive/purge take
    dlq = ("dlq", "list", "payments", "-n", "poison-message", "--redis", redis.url)
    [listed] = json.loads(ailf(*dlq, "--json").stdout)
    line = ailf(*dlq).stdout.splitlines()[0]
    assert line.startswith(f"{listed['dead_letter_id']}  (message {listed['message_id']}, ")
    assert letter.startswith(f"{line}; body ")


def test_request_reply_prints_answers_and_remote_errors(redis: RedisServer) -> None:
    code, summary, _ = run_json("request-reply", redis)
    assert code == 0, summary["problems"]
    replies = summary["replies"]
    assert [r.get("reply") for r in replies[:2]] == [{"result": 6}, {"result": 42}]
    assert "ZeroDivisionError" in replies[2]["error"]


def test_router_and_ticker(redis: RedisServer) -> None:
    code, summary, stderr = run_json("router", redis)
    assert code == 0, summary["problems"]
    assert counters(summary, "alerts")["processed"] == 1
    assert counters(summary, "archive")["processed"] == 10
    assert "alerts router:" in stderr


def test_a_run_that_never_ends_times_out_with_exit_1(tmp_path: Path, redis: RedisServer) -> None:
    file = tmp_path / "stuck.toml"
    file.write_text(
        '[scenario]\nname = "stuck"\nuntil = "stop"\ntimeout = 1.5\n'
        '[[agents]]\nname = "echo"\nclass = "ailf.agents.echo:Echo"\n'
    )
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 1
    assert "timed out after 1.5 s waiting for an agent to call runtime.stop()" in result.stdout


def test_an_unmet_expectation_fails_the_run(tmp_path: Path, redis: RedisServer) -> None:
    file = tmp_path / "expect.toml"
    file.write_text(
        '[scenario]\nname = "expect"\n'
        '[[agents]]\nname = "echo"\nclass = "ailf.agents.echo:Echo"\n'
        '[[messages]]\nto = "echo"\ncount = 2\n'
        "[expect.echo]\nprocessed = 3\n"
    )
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 1
    assert "expect echo.processed = 3: FAILED, found 2" in result.stdout
    assert "problem: expected echo.processed = 3: FAILED, found 2" in result.stdout


def test_a_worker_that_cannot_start_fails_the_run(tmp_path: Path, redis: RedisServer) -> None:
    """An agent whose on_start always raises escalates; the run fails, it does not hang."""
    file = write_scenario(
        tmp_path,
        "broken",
        '[scenario]\nname = "broken"\ntimeout = 20\n'
        '[[agents]]\nname = "b"\nclass = "broken_agents:Broken"\n',
        broken_agents="from ailf import Agent\n\n"
        "class Broken(Agent):\n"
        "    max_restarts = 0\n"
        "    async def on_start(self):\n"
        "        raise RuntimeError('no database')\n",
    )
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 1
    assert "problem: process 0:" in result.stdout
    assert "no database" in result.stdout


def test_an_unreachable_redis_is_one_line_and_exit_1() -> None:
    result = ailf("run", str(SCENARIOS / "quickstart.toml"), "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ailf: error:")
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def _doc_scenarios() -> list[tuple[str, str]]:
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
        for number, block in enumerate(blocks):
            if block.lstrip().startswith("[scenario]"):
                found.append((f"{doc.stem}-{number}", block))
    return found


def _doc_modules(doc: str) -> dict[str, str]:
    """The doc's ``python`` blocks that start with ``# <module>.py``: files its
    scenarios import."""
    modules = {}
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        name = re.fullmatch(r"# (\w+\.py)", block.splitlines()[0])
        if name:
            modules[name[1]] = block
    return modules


@pytest.mark.parametrize(("where", "text"), _doc_scenarios(), ids=[w for w, _ in _doc_scenarios()])
def test_scenarios_in_the_docs_run(
    where: str, text: str, tmp_path: Path, redis: RedisServer
) -> None:
    for name, module in _doc_modules(where.rsplit("-", 1)[0]).items():
        (tmp_path / name).write_text(module)
    file = tmp_path / f"{where}.toml"
    file.write_text(text)
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 0, result.stdout + result.stderr


def interruptible_run(file: Path) -> subprocess.Popen[str]:
    """``ailf run FILE`` in the background, as Ctrl-C from a terminal would reach it."""
    return subprocess.Popen(
        [sys.executable, "-m", "ailf", "run", str(file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # a shell's background job would ignore SIGINT; a terminal's would not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_stops_gracefully_with_a_summary_and_exit_130(redis: RedisServer) -> None:
    run = interruptible_run(SCENARIOS / "crash-recovery.toml")
    try:
        for line in run.stderr:
            if "worker processes ready" in line:
                break
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 130
    assert "scenario crash-recovery: FAILED — interrupted" in out
    assert "problem: interrupted by SIGINT" in out


SLOW_AGENTS = """
import trio
from ailf import Agent


class Slow(Agent):
    async def on_message(self, message):
        print("handler started", flush=True)
        await trio.sleep(60)
"""


@needs_proc
def test_a_second_ctrl_c_stops_at_once_and_quietly(tmp_path: Path) -> None:
    """The first Ctrl-C says what it waits for; the second kills the workers, then stops
    the embedded server — in that order, so no worker is left talking to a dead Redis."""
    file = write_scenario(
        tmp_path,
        "slow",
        '[scenario]\nname = "slow"\ntimeout = 60\n'
        '[[agents]]\nname = "slow"\nclass = "slow_agents:Slow"\n'
        '[[messages]]\nto = "slow"\n',
        slow_agents=SLOW_AGENTS,
    )
    run = interruptible_run(file)
    try:
        assert run.stdout.readline() == "handler started\n"
        family = [pid for child in children_of(run.pid) for pid in (child, *children_of(child))]
        assert len(family) >= 2  # the embedded server, the worker (and its own children)
        run.send_signal(signal.SIGINT)
        err = ""
        for line in run.stderr:
            err += line
            if "waiting up to" in line:
                break
        assert "process 0: waiting up to 10 s for 1 handler in flight: slow[0]" in err
        started = time.monotonic()
        run.send_signal(signal.SIGINT)
        out, rest = run.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 130
    assert elapsed <= 1.0
    err += rest
    assert "stopping at once: worker processes killed" in err
    for noise in ("Traceback", "WARNING", "cannot connect", "ERROR"):
        assert noise not in err, err
    assert err.endswith("ailf: interrupted\n")
    assert out == ""  # no summary after a forced stop
    wait_for(lambda: not any(is_running(pid) for pid in family), timeout=5)


def test_two_kills_of_the_same_process_lose_nothing(tmp_path: Path, redis: RedisServer) -> None:
    text = (SCENARIOS / "crash-recovery.toml").read_text()
    text = text.replace("after_processed = 30", "after_processed = 20")
    text += '\n[[faults]]\nkill = "worker"\nafter_processed = 70\n'
    file = tmp_path / "two-kills.toml"
    file.write_text(text)
    result = ailf("run", str(file), "--redis", redis.url, "--json")
    summary = json.loads(result.stdout)
    assert result.returncode == 0, summary["problems"]
    assert summary["restarts"] == 2
    assert "collector: all 120 results collected" in result.stderr


def test_a_process_that_keeps_dying_fails_the_run(tmp_path: Path, redis: RedisServer) -> None:
    file = write_scenario(
        tmp_path,
        "dying",
        '[scenario]\nname = "dying"\ntimeout = 50\n'
        '[[agents]]\nname = "d"\nclass = "dying_agents:Dying"\n',
        dying_agents="import os\n\nfrom ailf import Agent\n\n\n"
        "class Dying(Agent):\n"
        "    async def on_start(self):\n"
        "        os._exit(3)\n",
    )
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 1
    assert "process 0 (pid" in result.stdout
    assert "exited with code 3; it died 6 times within 30 s, giving up" in result.stdout


def test_replica_numbers_are_unique_across_processes(tmp_path: Path, redis: RedisServer) -> None:
    """replicas = 5 over processes = 2: process 0 hosts replicas 0-2, process 1 3-4."""
    file = write_scenario(
        tmp_path,
        "who",
        '[scenario]\nname = "who"\nuntil = "stop"\ntimeout = 30\n'
        '[[agents]]\nname = "who"\nclass = "who_agents:Who"\nreplicas = 5\nprocesses = 2\n'
        '[[agents]]\nname = "collector"\nclass = "ailf.agents.counter:Collector"\n'
        '[agents.options]\nkey = "replica"\nexpect = 5\n',
        who_agents="from ailf import Agent\n\n\n"
        "class Who(Agent):\n"
        "    async def on_start(self):\n"
        "        await self.send('collector', {'replica': self.replica})\n",
    )
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "collector: all 5 results collected (0 duplicate deliveries)" in result.stdout


async def test_spawn_numbers_replicas_from_first_replica(redis_config: RedisConfig) -> None:
    seen: list[int] = []

    class Numbered(Agent):
        async def on_start(self) -> None:
            seen.append(self.replica)

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="numbers") as runtime:
            await runtime.spawn(Numbered, name="n", replicas=2)
            await runtime.spawn(Numbered, name="n", replicas=2, first_replica=5)
            await runtime.spawn(Numbered, name="n")
            with pytest.raises(ConfigError, match="first_replica must be an integer >= 0"):
                await runtime.spawn(Numbered, name="n", first_replica=-1)
    assert seen == [0, 1, 5, 6, 7]


def test_a_stray_module_beside_the_scenario_shadows_nothing(
    tmp_path: Path, redis: RedisServer
) -> None:
    """attr.py beside the file would be imported for ``attrs`` (ailf's dependency) if the
    scenario's folder came first on sys.path; the folder still serves its own modules."""
    file = write_scenario(
        tmp_path,
        "stray",
        '[scenario]\nname = "stray"\n'
        '[[agents]]\nname = "own"\nclass = "own_agents:Own"\nreplicas = 2\nprocesses = 2\n'
        '[[messages]]\nto = "own"\ncount = 4\n'
        "[expect.own]\nprocessed = 4\n",
        attr="raise ImportError('the stray attr.py was imported')\n",
        trio="raise ImportError('the stray trio.py was imported')\n",
        own_agents="from ailf import Agent\n\n\nclass Own(Agent):\n    pass\n",
    )
    result = ailf("run", str(file), "--redis", redis.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the stray" not in result.stderr


def test_a_rerun_is_told_of_the_last_runs_leftovers(tmp_path: Path, redis: RedisServer) -> None:
    raw = redis_py.Redis(port=redis.port)
    for n in range(2):
        raw.xadd("ailf:again:mailbox:echo", {"envelope": f'{{"v": 1, "body": {n}}}'})
    raw.xadd("ailf:again:dead:echo", {"reason": "from before"})
    raw.close()
    file = write_scenario(
        tmp_path,
        "again",
        '[scenario]\nname = "again"\n'
        '[[agents]]\nname = "echo"\nclass = "ailf.agents.echo:Echo"\n'
        '[[messages]]\nto = "echo"\n',
    )
    code, summary, stderr = run_json("again", redis, file=file)
    assert code == 0, summary["problems"]
    warning = (
        "warning: namespace 'again' already holds 2 messages (echo 2) and 1 dead letter (echo 1)"
        " from an earlier run; this run handles them and counts them"
        " (ailf reset -n again clears it)"
    )
    assert warning in stderr
    assert warning in summary["events"]
    assert counters(summary, "echo")["processed"] == 3


def test_mailbox_processed_leaves_broadcasts_out(tmp_path: Path, redis: RedisServer) -> None:
    file = write_scenario(
        tmp_path,
        "heard",
        '[scenario]\nname = "heard"\nuntil = "stop"\ntimeout = 30\n'
        '[[agents]]\nname = "counter"\nclass = "ailf.agents.counter:Counter"\n'
        'topics = ["room"]\n[agents.options]\nstop_at = 3\n'
        '[[messages]]\nto = "counter"\ncount = 2\n'
        '[[messages]]\ntopic = "room"\n'
        "[expect.counter]\nprocessed = 3\nmailbox_processed = 2\n",
    )
    code, summary, _ = run_json("heard", redis, file=file)
    assert code == 0, summary["problems"]
    assert counters(summary, "counter")["mailbox_processed"] == 2
    assert [check["counter"] for check in summary["checks"]] == ["processed", "mailbox_processed"]


def test_schedules_set_a_durable_reminder_that_a_second_run_replaces(redis: RedisServer) -> None:
    """scenarios/reminders.toml: its reminder fires into the counter until it stops the
    run; running the file again replaces the reminder rather than adding one."""
    for _ in range(2):
        code, summary, stderr = run_json("reminders", redis)
        assert code == 0, stderr
        assert counters(summary, "counter")["processed"] >= 3
    client = redis_py.Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    assert client.hkeys("ailf:reminders:timed:{ailf:reminders:mailbox:counter}") == ["r/tick/"]
    delayed = ailf(
        "send", "counter", '{"n": 1}', "--delay", "50ms", "-n", "reminders", "--redis", redis.url
    )
    assert delayed.returncode == 0 and delayed.stdout.startswith("counter/"), delayed.stderr
