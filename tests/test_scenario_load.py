"""Scenario files: every broken file in ``tests/scenarios_bad/`` is refused with exit code 2
and a message naming its problem; every shipped scenario passes ``ailf check``. (The
scenarios in the docs are run by ``test_scenarios.py``.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ailf.cli import main
from ailf.errors import ScenarioError
from ailf.scenario._load import parse_scenario
from ailf.scenario._model import AgentSpec

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests" / "scenarios_bad").glob("*.toml"))
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <text>'"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_file_is_refused(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _expected(path) in captured.err
    for line in captured.err.splitlines():
        assert line.startswith(f"ailf: error: {path}"), line


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenario_passes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert ": ok" in capsys.readouterr().out


def test_every_problem_is_reported_at_once() -> None:
    text = """
[scenario]
name = "x"
timeout = -1

[[agents]]
name = "a"
class = "ailf.agents.echo:Echo"
replicas = 0

[[messages]]
to = "b"
"""
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "x.toml")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "scenario.timeout",
        "agents[0].replicas",
        "messages[0].to",
    ]
    assert str(caught.value).startswith("x.toml: scenario.timeout")


def test_types_are_strict() -> None:
    text = '[scenario]\nname = "x"\ntimeout = true\n[[agents]]\nname = "a"\nclass = "m:C"\n'
    with pytest.raises(ScenarioError, match=r"scenario.timeout: expected a number, found true"):
        parse_scenario(text)


def test_defaults_and_class_key() -> None:
    scenario = parse_scenario(
        '[scenario]\nname = "demo"\n[[agents]]\nname = "e"\nclass = "ailf.agents.echo:Echo"\n'
    )
    assert scenario.namespace == "demo"
    assert scenario.scenario.until == "idle"
    assert scenario.agents[0].class_ == "ailf.agents.echo:Echo"
    assert scenario.redis.url is None


def test_replicas_are_spread_over_processes() -> None:
    spec = AgentSpec(name="w", class_="m:C", replicas=5, processes=2)
    assert [spec.replicas_in(i) for i in range(3)] == [3, 2, 0]


def test_only_keeps_the_messages_of_the_chosen_agents() -> None:
    scenario = parse_scenario(
        """
[scenario]
name = "demo"
[[agents]]
name = "a"
class = "ailf.agents.echo:Echo"
[[agents]]
name = "b"
class = "ailf.agents.echo:Echo"
[[messages]]
to = "a"
[[messages]]
to = "b"
"""
    )
    only_b = scenario.only(("b",))
    assert [a.name for a in only_b.agents] == ["b"]
    assert [m.to for m in only_b.messages] == ["b"]


def test_option_types_only_the_runtime_knows_are_checked_by_the_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "stamp_agents.py").write_text(
        "import datetime\n\nimport attrs\n\nfrom ailf import Agent\n\n\n"
        "class Stamp(Agent):\n"
        "    @attrs.frozen\n"
        "    class Options:\n"
        "        when: datetime.datetime\n"
    )
    file = tmp_path / "stamp.toml"
    head = '[scenario]\nname = "s"\n[[agents]]\nname = "s"\nclass = "stamp_agents:Stamp"\n'
    file.write_text(head + '[agents.options]\nwhen = "2024-01-01T00:00:00"\n')
    assert main(["check", str(file)]) == 0
    file.write_text(head + '[agents.options]\nwhen = "yesterday"\n')
    assert main(["check", str(file)]) == 2
    assert "agents[0].options: Stamp options:" in capsys.readouterr().err


# -- agent modules that do not import ---------------------------------------------------


@pytest.fixture
def beside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scenario folder whose sys.path entry, and modules, go away after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    return tmp_path


def _check(folder: Path, *classes: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    agents = "".join(
        f'[[agents]]\nname = "a{n}"\nclass = "{ref}"\n' for n, ref in enumerate(classes)
    )
    file = folder / "s.toml"
    file.write_text('[scenario]\nname = "s"\n' + agents)
    assert main(["check", str(file)]) == 2
    prefix = f"ailf: error: {file}: "
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        ("from ailf import Agent\n\nx = Agnet\n", 3, "NameError: name 'Agnet' is not defined"),
        # a module it imports is missing, not the agents' module itself
        (
            "import surely_not_installed_anywhere\n",
            1,
            "ModuleNotFoundError: No module named 'surely_not_installed_anywhere'",
        ),
        ("x = 1\ndef (:\n", 2, "SyntaxError: "),
    ],
    ids=["NameError", "missing dependency", "SyntaxError"],
)
def test_an_import_error_names_the_file_and_line(
    beside: Path, source: str, line: int, error: str, capsys
) -> None:
    module = f"failing_{line}_{error.split(':')[0]}".lower()
    (beside / f"{module}.py").write_text(source)
    [found] = _check(beside, f"{module}:A", capsys=capsys)
    assert found.startswith(
        f"agents[0].class: importing '{module}' failed at {beside}/{module}.py:{line}: {error}"
    )
    assert "beside the scenario file" not in found


def test_a_missing_module_says_where_it_was_looked_for(beside: Path, capsys) -> None:
    (beside / "billing_agents.py").write_text("")
    [line] = _check(beside, "biling_agents:A", capsys=capsys)
    assert line == (
        "agents[0].class: no module named 'biling_agents': no biling_agents.py beside the"
        f" scenario file (in {beside}), nor installed; did you mean 'billing_agents'?"
    )


def test_a_module_shadowed_by_the_standard_library_says_which_file_won(
    beside: Path, capsys
) -> None:
    (beside / "queue.py").write_text("from ailf import Agent\n\nclass Worker(Agent):\n    pass\n")
    [line] = _check(beside, "queue:Worker", capsys=capsys)
    assert line.startswith("agents[0].class: module 'queue' has no attribute 'Worker' ('queue' is")
    assert f"queue.py, which comes before {beside}/queue.py on sys.path; rename" in line


def test_a_broken_module_is_reported_once(beside: Path, capsys) -> None:
    (beside / "broken_once.py").write_text("print('imported')\nraise RuntimeError('boom')\n")
    lines = _check(beside, "broken_once:A", "ailf.agents.echo:Echo", "broken_once:B", capsys=capsys)
    assert lines == [
        f"agents[0].class: importing 'broken_once' failed at {beside}/broken_once.py:2:"
        " RuntimeError: boom (also agents[2].class)"
    ]
