"""Import a scenario's agent classes, and say precisely why one does not import.

A class is ``"module:Class"``, imported as Python would. The scenario file's folder is
put *last* on ``sys.path`` (by :func:`add_scenario_folder`, for ``ailf check``, for
``ailf run`` and for every worker process), so that a stray file beside a scenario — an
``attr.py``, a ``trio.py`` — cannot take the place of a module ailf itself, or anything
installed, depends on. The price: a module beside the file named like an installed or
standard one (``queue.py``) is not the one imported. That case, like every other way an
import can fail, gets a message naming the file actually found, or the file and line
where importing failed, rather than a bare exception.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

__all__ = ["AgentModuleError", "add_scenario_folder", "import_agent_class"]

_CLASS_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class AgentModuleError(ValueError):
    """The *module* of a class reference does not import: every class in it fails the same
    way, so the loader reports it once. ``module`` is its dotted name."""

    def __init__(self, module: str, message: str) -> None:
        super().__init__(message)
        self.module = module


def add_scenario_folder(folder: Path) -> None:
    """Put a scenario's folder at the end of ``sys.path`` (see the module docstring)."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.append(entry)


def import_agent_class(reference: str, beside: Path | None = None) -> type:
    """Import ``"module:Class"`` and check that it is an agent class.

    ``beside`` is the scenario file's folder, when there is one: it lets the messages
    tell a module that is missing from one shadowed by an installed module of the same
    name. Raises :class:`AgentModuleError` when the module does not import, and
    ``ValueError`` when the class is missing or not an agent; both say what to fix.
    """
    from ailf.runtime._agent import Agent

    if not _CLASS_REF.match(reference):
        example = '"ailf.agents.echo:Echo"'
        raise ValueError(f'expected "module:Class" (e.g. {example}), found {reference!r}')
    module_name, class_name = reference.split(":")
    module = _import(module_name, beside)
    cls = getattr(module, class_name, None)
    if cls is None:
        agents = [
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Agent) and value is not Agent
        ]
        close = difflib.get_close_matches(class_name, agents, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"module {module_name!r} has no attribute {class_name!r}{hint}"
            + _shadowing(module_name, beside)
        )
    if not isinstance(cls, type) or not issubclass(cls, Agent):
        raise ValueError(
            f"{reference} is not an agent class (a subclass of ailf.Agent)"
            + _shadowing(module_name, beside)
        )
    return cls


def _import(module_name: str, beside: Path | None) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AgentModuleError(module_name, _not_found(module_name, missing, beside)) from None
        # The module was found, and itself imports something that is missing.
        raise AgentModuleError(module_name, _failed(module_name, exc)) from None
    except Exception as exc:
        raise AgentModuleError(module_name, _failed(module_name, exc)) from None


def _failed(module_name: str, exc: Exception) -> str:
    """``importing 'm' failed at /path/m.py:3: NameError: ...``: where, and what."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {exc.filename}:{exc.lineno}"
    else:
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if not frame.filename.startswith("<frozen ")
        ]
        if frames:
            where = f" at {frames[-1].filename}:{frames[-1].lineno}"
    return f"importing {module_name!r} failed{where}: {type(exc).__name__}: {exc}"


def _not_found(module_name: str, missing: str, beside: Path | None) -> str:
    text = f"no module named {missing!r}"
    if missing != module_name.split(".")[0]:
        parent = sys.modules.get(missing.rpartition(".")[0])
        where = getattr(parent, "__file__", None)
        return text + (f" (its package is {where})" if where else "")
    if beside is None:
        return text + "; is it installed?"
    nearby = sorted(
        path.stem if path.suffix == ".py" else path.name
        for path in beside.iterdir()
        if (path.suffix == ".py" and path.is_file()) or (path / "__init__.py").is_file()
    )
    close = difflib.get_close_matches(missing, nearby, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{text}: no {missing}.py beside the scenario file (in {beside}), nor installed{hint}"


def _shadowing(module_name: str, beside: Path | None) -> str:
    """When the scenario's folder has a module of this name but another one was imported
    (the standard library's ``queue``, an installed package): say which, and what to do."""
    top = module_name.split(".")[0]
    if beside is None:
        return ""
    own = next(
        (p for p in (beside / f"{top}.py", beside / top / "__init__.py") if p.is_file()), None
    )
    found = getattr(sys.modules.get(top), "__file__", None)
    if own is None or (found is not None and Path(found).resolve() == own.resolve()):
        return ""
    what = found or "a built-in module"
    return (
        f" ({top!r} is {what}, which comes before {own} on sys.path;"
        " rename your module, and the class reference with it)"
    )
