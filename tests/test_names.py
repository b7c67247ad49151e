"""One rule for agent, topic and namespace names (``ailf.runtime._keys.check_name``), with
one message, wherever a name comes in: the scenario loader, ``ailf send`` and
``ailf publish``, and the runtime's ``spawn``, ``send`` and ``Runtime(namespace=...)``."""

from __future__ import annotations

import pytest
import trio
from ailf.agents.echo import Echo

from ailf import RedisConfig, Runtime
from ailf.cli import main
from ailf.errors import ConfigError, ScenarioError
from ailf.runtime._keys import EVERY_KEY, MAX_NAME_LENGTH, KeyName, Keys, check_name, parse_key
from ailf.scenario._load import parse_scenario

UNREACHABLE = "redis://127.0.0.1:1/0"
GOOD = ["a", "A1", "work-queue", "v1.2_beta", "0day", "x" * MAX_NAME_LENGTH]
BAD = [
    "a:b",  # ':' separates key parts
    "bad!",
    "a b",
    "",
    "-x",  # would read as an option on the command line
    "a*",  # a glob in ACL rules and SCAN patterns
    "a?",
    "[a]",
    "é",
    "x" * (MAX_NAME_LENGTH + 1),
]


def _message(kind: str, name: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check_name(kind, name)
    return str(caught.value)


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass_everywhere(name: str, capsys) -> None:
    assert check_name("agent", name) == name
    parse_scenario(
        f'[scenario]\nname = "s"\n[[agents]]\nname = "{name}"\nclass = "ailf.agents.echo:Echo"\n'
        f'topics = ["{name}"]\n'
    )
    # past the name check, the command fails only because nothing listens there
    assert main(["send", name, "{}", "--redis", UNREACHABLE]) == 1
    assert main(["publish", name, "{}", "-n", name, "--redis", UNREACHABLE]) == 1
    assert "cannot connect" in capsys.readouterr().err


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_bad_names_fail_everywhere_with_one_message(name: str, capsys) -> None:
    agent, topic = _message("agent", name), _message("topic", name)
    assert agent.startswith("agent name: expected 1 to 128 letters, digits, '_', '.' or '-'")
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(
            f'[scenario]\nname = "s"\n[[agents]]\nname = "{quoted}"\n'
            f'class = "ailf.agents.echo:Echo"\ntopics = ["{quoted}"]\n'
        )
    assert f"agents[0].name: {agent}" in caught.value.problems
    assert f"agents[0].topics[0]: {topic}" in caught.value.problems

    # after "--", so that "-x" reaches the check instead of being read as an option
    assert main(["send", "--redis", UNREACHABLE, "--", name, "{}"]) == 2
    assert capsys.readouterr().err == f"ailf: error: {agent}\n"
    assert main(["publish", "--redis", UNREACHABLE, "--", name, "{}"]) == 2
    assert capsys.readouterr().err == f"ailf: error: {topic}\n"
    assert main(["status", f"--namespace={name}", "--redis", UNREACHABLE]) == 2
    assert capsys.readouterr().err == f"ailf: error: {_message('namespace', name)}\n"


async def test_the_runtime_applies_the_same_rule(redis_config: RedisConfig) -> None:
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="names") as runtime:
            for name in BAD:
                with pytest.raises(ConfigError) as caught:
                    await runtime.spawn(Echo, name=name)
                assert str(caught.value) == _message("agent", name)
                with pytest.raises(ConfigError):
                    await runtime.send(name, {})
                with pytest.raises(ConfigError) as caught:
                    await runtime.spawn(Echo, name="echo", topics=[name])
                assert str(caught.value) == _message("topic", name)
            for name in GOOD:
                await runtime.spawn(Echo, name=name)
            assert await runtime.ask(GOOD[-1], {"n": 1}, timeout=5) == {"n": 1}
        for name in BAD:
            with pytest.raises(ConfigError) as caught:
                Runtime(redis_config, namespace=name)
            assert str(caught.value) == _message("namespace", name)


def test_every_key_reads_back_as_what_it_names() -> None:
    """``ailf status`` and ``ailf reset`` list a namespace by reading key names back."""
    keys = Keys("demo")
    assert parse_key(keys.mailbox("greeter")) == KeyName("demo", "mailbox", "greeter")
    assert parse_key(keys.dead("greeter")) == KeyName("demo", "dead", "greeter")
    assert parse_key(keys.topic("news")) == KeyName("demo", "topic", "news")
    assert parse_key(keys.process("host:42:ab")) == KeyName("demo", "process", "host:42:ab")
    assert parse_key(keys.processes) == KeyName("demo", "processes", "")
    assert parse_key(keys.bell("greeter")) == KeyName("demo", "bell", "greeter")
    assert parse_key(keys.partition("chat", 7).state) == KeyName("demo", "keyed", "{chat:7}:state")
    for other in ("other:demo:mailbox:x", "ailf:", "ailf:demo", "ailf:a b:mailbox:x"):
        assert parse_key(other) is None, other
    assert keys.every_key == "ailf:demo:*" and EVERY_KEY == "ailf:*"
