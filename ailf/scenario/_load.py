"""Read a scenario file and check it, so that a bad file never starts anything.

Loading happens in three passes, and each reports *every* problem it finds before
giving up, as one :class:`~ailf.errors.ScenarioError`:

1. TOML syntax (``tomllib``): the line and column of the first error.
2. Shape (cattrs, detailed validation, unknown keys forbidden): the path to each bad
   field (``agents[1].replicas``), what was expected and what was found. Types are
   strict: ``replicas = "2"`` is an error, not a 2.
3. Meaning: duplicate agent names, messages to agents or topics the file does not
   declare, classes that do not import or are not agents, options that do not fit
   the class's ``Options``, more processes than replicas, non-positive timeouts...

The scenario file's own directory is put last on ``sys.path`` (as the runner does for
its worker processes), so ``class = "my_agents:Worker"`` finds ``my_agents.py`` beside
it; :mod:`ailf.scenario._imports` explains why last, and what an import error says.
"""

from __future__ import annotations

import json
import re
import tomllib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    StructureHandlerNotFoundError,
)
from cattrs.gen import make_dict_structure_fn, override

from ailf.config import RedisConfig
from ailf.errors import ConfigError, ScenarioError
from ailf.runtime._keys import check_name
from ailf.runtime._timers import Recurrence, due_ms
from ailf.scenario._imports import AgentModuleError, add_scenario_folder, import_agent_class
from ailf.scenario._model import Scenario

__all__ = ["load_scenario", "parse_scenario", "structure_strict"]


class _Mismatch(Exception):
    """A value of the wrong kind; the walker adds the path and what was found."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


# -- a strict converter ------------------------------------------------------------------


def _describe_type(kind: Any) -> str:
    origin = get_origin(kind)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(_show(value) for value in get_args(kind))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in get_args(kind) if arg is not type(None))
    if origin in (tuple, list):
        return f"a list of {_plural(get_args(kind)[0])}"
    if origin is dict or attrs.has(kind):
        return "a table"
    return getattr(kind, "__name__", str(kind))


def _plural(kind: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(
        kind, "tables" if attrs.has(kind) else "values"
    )


def _strict_scalar(kind: type, check: Callable[[Any], bool]) -> Callable[[Any, type], Any]:
    def structure(value: Any, _: type) -> Any:
        if not check(value):
            raise _Mismatch(_describe_type(kind))
        return kind(value)

    return structure


def _toml_key(attribute: attrs.Attribute[Any]) -> str:
    """The key a field has in the file: its name, unless the model says otherwise
    (``class_`` is ``class``). Agents' options always use their field names, as the
    runtime's own structuring does."""
    key = attribute.metadata.get("toml")
    return key if isinstance(key, str) else attribute.name


#: A structure hook: (value, type) -> the structured value.
_Hook = Callable[[Any, Any], Any]


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(
        int, _strict_scalar(int, lambda v: isinstance(v, int) and not isinstance(v, bool))
    )
    converter.register_structure_hook(
        float,
        _strict_scalar(float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    )
    converter.register_structure_hook(str, _strict_scalar(str, lambda v: isinstance(v, str)))
    converter.register_structure_hook(bool, _strict_scalar(bool, lambda v: isinstance(v, bool)))

    def guarded(inner: Callable[[Any, Any], Any], want: type, kind: Any) -> _Hook:
        def structure(value: Any, target: Any) -> Any:
            if not isinstance(value, want):
                raise _Mismatch(_describe_type(kind))
            return inner(value, target)

        return structure

    def sequences(kind: Any, conv: cattrs.Converter) -> _Hook:
        factory = homogenous_tuple_structure_factory if get_origin(kind) is tuple else None
        inner = (factory or list_structure_factory)(kind, conv)
        return guarded(inner, list, kind)

    def mappings(kind: Any, conv: cattrs.Converter) -> _Hook:
        return guarded(mapping_structure_factory(kind, conv), dict, kind)

    def records(kind: type, conv: cattrs.Converter) -> _Hook:
        renames: dict[str, Any] = {
            a.name: override(omit=True) if a.metadata.get("toml") is False else override(rename=key)
            for a in attrs.fields(kind)
            if a.name != (key := _toml_key(a)) or a.metadata.get("toml") is False
        }
        inner: _Hook = make_dict_structure_fn(kind, conv, _cattrs_forbid_extra_keys=True, **renames)
        return guarded(inner, dict, kind)

    converter.register_structure_hook_factory(is_sequence, sequences)
    converter.register_structure_hook_factory(is_mapping, mappings)
    converter.register_structure_hook_factory(attrs.has, records)
    return converter


_converter = _make_converter()


# -- turning cattrs' exception groups into lines ------------------------------------------


def _show(value: Any) -> str:
    """A value as the TOML file would spell it, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        text = "a table {" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list):
        text = "a list [" + ", ".join(_show(v) for v in value) + "]"
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _child(raw: Any, key: str | int) -> Any:
    try:
        return raw[key]
    except (KeyError, IndexError, TypeError):
        return None


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _field_key(cls: type | None, name: str) -> str:
    if cls is not None and attrs.has(cls):
        for attribute in attrs.fields(cls):
            if attribute.name == name:
                return _toml_key(attribute)
    return name


def _known_keys(cls: type) -> str:
    keys = [_toml_key(a) for a in attrs.fields(cls) if a.metadata.get("toml") is not False]
    return ", ".join(keys) if keys else "none (it takes no options)"


def _explain(exc: BaseException, path: str, raw: Any, cls: type | None = None) -> list[str]:
    """Every leaf of a cattrs validation error as ``path: what is wrong``."""
    where = path or "the file"
    if isinstance(exc, ClassValidationError):
        lines: list[str] = []
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            key = _field_key(exc.cl, note.name)
            sub_path = _join(path, key)
            if isinstance(sub, KeyError):
                lines.append(f"{sub_path}: missing; expected {_describe_type(note.type)}")
            else:
                lines += _explain(sub, sub_path, _child(raw, key), note.type)
        for sub in without:
            lines += _explain(sub, path, raw, exc.cl)
        return lines
    if isinstance(exc, IterableValidationError):
        lines = []
        items, rest = exc.group_exceptions()
        for sub, item in items:
            lines += _explain(sub, _join(path, item.index), _child(raw, item.index), item.type)
        for sub in rest:
            lines += _explain(sub, path, raw, cls)
        return lines
    if isinstance(exc, ForbiddenExtraKeysError):
        unknown = ", ".join(sorted(exc.extra_fields))
        plural = "s" if len(exc.extra_fields) > 1 else ""
        return [f"{where}: unknown key{plural} {unknown}; expected keys: {_known_keys(exc.cl)}"]
    if isinstance(exc, StructureHandlerNotFoundError):
        return []  # a type only the runtime's converter knows: it has the last word
    if isinstance(exc, _Mismatch):
        return [f"{where}: expected {exc.expected}, found {_show(raw)}"]
    if get_origin(cls) is Literal:
        return [f"{where}: expected {_describe_type(cls)}, found {_show(raw)}"]
    return [f"{where}: {exc}"]


def structure_strict(data: Any, cls: type, path: str = "") -> tuple[Any, list[str]]:
    """Structure ``data`` into ``cls`` strictly: ``(instance, [])`` or ``(None, problems)``.

    Used for the file itself and for agent options; attrs validators that raise
    (``ValueError``, ``TypeError``) become problems with their own message. Fields of
    types this strict converter has no hook for are left to the runtime's converter
    (``(None, [])`` when they were the only trouble).
    """
    try:
        return _converter.structure(data, cls), []
    except Exception as exc:
        return None, _explain(exc, path, data, cls)


# -- meaning --------------------------------------------------------------------------------


def _folder(path: str) -> Path | None:
    """The folder of the scenario file at ``path``; None for text that came from no file."""
    file = Path(path)
    return file.resolve().parent if file.is_file() else None


def _check_name(kind: str, value: str, path: str) -> list[str]:
    """The runtime's own rule for names (:func:`~ailf.runtime._keys.check_name`), so that
    a file ``ailf check`` accepts never fails at spawn."""
    try:
        check_name(kind, value)
    except ConfigError as exc:
        return [f"{path}: {exc}"]
    return []


def _check_agents(scenario: Scenario, raw: dict[str, Any]) -> tuple[list[str], set[str]]:
    problems: list[str] = []
    topics: set[str] = set()
    seen: dict[str, int] = {}
    #: Modules that failed to import, and where in ``problems`` that was reported.
    broken: dict[str, int] = {}
    beside = _folder(scenario.path)
    raw_agents = raw.get("agents") or []
    for index, spec in enumerate(scenario.agents):
        path = f"agents[{index}]"
        problems += _check_name("agent", spec.name, f"{path}.name")
        if spec.name in seen:
            problems.append(
                f"{path}.name: duplicate agent name {_show(spec.name)}"
                f" (also agents[{seen[spec.name]}].name)"
            )
        seen.setdefault(spec.name, index)
        if spec.replicas < 1:
            problems.append(f"{path}.replicas: expected an integer >= 1, found {spec.replicas}")
        if spec.processes < 1:
            problems.append(f"{path}.processes: expected an integer >= 1, found {spec.processes}")
        elif spec.processes > spec.replicas >= 1:
            problems.append(
                f"{path}.processes: {spec.processes} processes for {spec.replicas} replicas;"
                " expected processes <= replicas"
            )
        if spec.claim_idle is not None and not spec.claim_idle > 0:  # NaN too
            problems.append(f"{path}.claim_idle: expected seconds > 0, found {spec.claim_idle}")
        if spec.concurrency is not None and spec.concurrency < 1:
            problems.append(
                f"{path}.concurrency: expected an integer >= 1, found {spec.concurrency}"
            )
        if spec.partitions is not None and not (spec.keyed and 1 <= spec.partitions <= 4096):
            problems.append(
                f"{path}.partitions: expected an integer from 1 to 4096 on a keyed agent"
                f" (keyed = true), found {spec.partitions}"
            )
        if spec.keyed and spec.topics:
            problems.append(f"{path}.topics: a keyed agent hears no broadcast topics")
        for position, topic in enumerate(spec.topics):
            problems += _check_name("topic", topic, f"{path}.topics[{position}]")
        topics.update(spec.topics)
        module = spec.class_.partition(":")[0]
        if module in broken:  # reported once, with every agent that uses it
            problems[broken[module]] += f" (also {path}.class)"
            continue
        try:
            cls = import_agent_class(spec.class_, beside)
        except AgentModuleError as exc:
            broken[exc.module] = len(problems)
            problems.append(f"{path}.class: {exc}")
            continue
        except ValueError as exc:
            problems.append(f"{path}.class: {exc}")
            continue
        topics.update(getattr(cls, "topics", ()) or ())
        options_cls = getattr(cls, "Options", None)
        if options_cls is not None and attrs.has(options_cls):
            raw_options = _child(_child(raw_agents, index), "options") or {}
            _, option_problems = structure_strict(raw_options, options_cls, f"{path}.options")
            problems += option_problems or _runtime_option_problems(cls, raw_options, path)
        elif spec.options:
            problems.append(f"{path}.options: {spec.class_} takes no options (no Options class)")
    return problems, topics


def _runtime_option_problems(cls: type, options: dict[str, Any], path: str) -> list[str]:
    """What the runtime itself says about the options: it structures them at spawn."""
    from ailf.runtime._agent import structure_options

    try:
        structure_options(cls, options)
    except ConfigError as exc:
        return [f"{path}.options: {exc}"]
    return []


def _check_messages(scenario: Scenario, topics: set[str]) -> list[str]:
    problems: list[str] = []
    names = {agent.name for agent in scenario.agents}
    keyed = {agent.name for agent in scenario.agents if agent.keyed}
    for index, message in enumerate(scenario.messages):
        path = f"messages[{index}]"
        if message.to in keyed and not message.key:
            problems.append(f"{path}.key: {_show(message.to)} is a keyed agent; say which key")
        elif message.key is not None and message.to not in keyed:
            problems.append(f"{path}.key: only messages to keyed agents (keyed = true) take a key")
        if (message.to is None) == (message.topic is None):
            problems.append(f'{path}: expected exactly one of to = "agent" or topic = "topic"')
        elif message.to is not None and message.to not in names:
            problems.append(
                f"{path}.to: no agent named {_show(message.to)} in this file;"
                f" agents: {', '.join(sorted(names))}"
            )
        elif message.topic is not None and message.topic not in topics:
            known = ", ".join(sorted(topics)) or "none"
            problems.append(
                f"{path}.topic: no agent listens to topic {_show(message.topic)}; topics: {known}"
            )
        if message.ask and message.topic is not None:
            problems.append(f'{path}.ask: a broadcast cannot be asked; use to = "agent"')
        if not message.delay >= 0:
            problems.append(f"{path}.delay: expected seconds >= 0, found {message.delay}")
        if message.count < 1:
            problems.append(f"{path}.count: expected an integer >= 1, found {message.count}")
    return problems


def _check_schedules(scenario: Scenario) -> list[str]:
    problems: list[str] = []
    names = {agent.name for agent in scenario.agents}
    keyed = {agent.name for agent in scenario.agents if agent.keyed}
    seen: set[tuple[str, str | None, str]] = set()
    for index, schedule in enumerate(scenario.schedules):
        path = f"schedules[{index}]"
        problems += _check_name("reminder", schedule.name, f"{path}.name")
        if schedule.to not in names:
            problems.append(
                f"{path}.to: no agent named {_show(schedule.to)} in this file;"
                f" agents: {', '.join(sorted(names))}"
            )
        elif schedule.to in keyed and not schedule.key:
            problems.append(f"{path}.key: {_show(schedule.to)} is a keyed agent; say which key")
        elif schedule.key is not None and schedule.to not in keyed:
            problems.append(f"{path}.key: only schedules on keyed agents (keyed = true) take a key")
        where = (schedule.to, schedule.key, schedule.name)
        if where in seen:
            problems.append(f"{path}.name: {_show(schedule.name)} is set twice on the same agent")
        seen.add(where)
        try:
            recurrence = Recurrence(schedule.every, schedule.cron, schedule.timezone)
            if schedule.cron is not None and schedule.delay is not None:
                problems.append(f"{path}.delay: a cron schedule fires at the cron's times")
            elif not recurrence.recurring or schedule.delay is not None:
                due_ms(path, delay=schedule.delay)
        except ConfigError as exc:
            problems.append(f"{path}: {str(exc).removeprefix(f'{path}: ')}")
    return problems


def _check_expectations(scenario: Scenario) -> list[str]:
    problems: list[str] = []
    names = {agent.name for agent in scenario.agents}
    for name, expectation in scenario.expect.items():
        path = f"expect.{name}"
        if name not in names:
            problems.append(f"{path}: no agent named {_show(name)} in this file")
        for field in attrs.fields(type(expectation)):
            value = getattr(expectation, field.name)
            if value is not None and value < 0:
                problems.append(f"{path}.{field.name}: expected an integer >= 0, found {value}")
        if expectation.processed is not None and expectation.processed_at_least is not None:
            problems.append(f"{path}: expected one of processed and processed_at_least, not both")
    return problems


def _check_faults(scenario: Scenario) -> list[str]:
    problems: list[str] = []
    for index, fault in enumerate(scenario.faults):
        path = f"faults[{index}]"
        try:
            spec = scenario.agent(fault.kill)
        except KeyError:
            problems.append(f"{path}.kill: no agent named {_show(fault.kill)} in this file")
            continue
        if fault.process is not None and not 0 <= fault.process < spec.processes:
            problems.append(
                f"{path}.process: agent {_show(spec.name)} runs in processes"
                f" 0..{spec.processes - 1}, found {fault.process}"
            )
        if (fault.after is None) == (fault.after_processed is None):
            problems.append(f"{path}: expected exactly one of after and after_processed")
        if fault.after is not None and not fault.after >= 0:
            problems.append(f"{path}.after: expected seconds >= 0, found {fault.after}")
        if fault.after_processed is not None and fault.after_processed < 1:
            problems.append(
                f"{path}.after_processed: expected an integer >= 1, found {fault.after_processed}"
            )
    return problems


def _check(scenario: Scenario, raw: dict[str, Any]) -> list[str]:
    settings = scenario.scenario
    problems: list[str] = []
    if not settings.name.strip():
        problems.append('scenario.name: expected a non-empty name, found ""')
    elif settings.namespace is not None:
        problems += _check_name("namespace", settings.namespace, "scenario.namespace")
    else:
        problems += _check_name(
            "namespace", settings.name, "scenario.name (also the namespace, unless set)"
        )
    if not settings.timeout > 0:
        problems.append(f"scenario.timeout: expected seconds > 0, found {settings.timeout}")
    port = settings.metrics_port
    if port is not None and not 1 <= port <= 65535 - (scenario.process_count - 1):
        problems.append(
            f"scenario.metrics_port: expected a port from 1 to 65535 with room for one port"
            f" per worker process ({scenario.process_count}), found {port}"
        )
    if scenario.redis.url is not None:
        try:
            RedisConfig.from_url(scenario.redis.url)
        except ConfigError as exc:
            problems.append(f"redis.url: {exc}")
    if not scenario.agents:
        problems.append("agents: expected at least one [[agents]] table with name and class")
    agent_problems, topics = _check_agents(scenario, raw)
    problems += agent_problems
    problems += _check_messages(scenario, topics)
    problems += _check_schedules(scenario)
    problems += _check_expectations(scenario)
    problems += _check_faults(scenario)
    return problems


# -- entry points --------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    """Parse and check scenario text; raises :class:`ScenarioError` listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_POSITION.match(str(exc))
        if found:
            raise ScenarioError(
                f"{path}:{found['line']}:{found['column']}", [f"invalid TOML: {found['what']}"]
            ) from None
        raise ScenarioError(path, [f"invalid TOML: {exc}"]) from None
    if "scenario" not in raw:
        raise ScenarioError(path, ["scenario: missing; expected a [scenario] table with a name"])
    structured, problems = structure_strict(raw, Scenario)
    if problems:
        raise ScenarioError(path, problems)
    scenario: Scenario = attrs.evolve(structured, path=path)
    problems = _check(scenario, raw)
    if problems:
        raise ScenarioError(path, problems)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read, parse and check a scenario file (see the module docstring).

    Puts the file's directory last on ``sys.path``, so that agent classes defined
    beside the scenario import (see :mod:`ailf.scenario._imports`).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(path), ["no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [f"cannot read it: {exc}"]) from None
    add_scenario_folder(file.resolve().parent)
    return parse_scenario(text, str(path))
