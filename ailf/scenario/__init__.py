"""Scenario files: schema, loading and running.

``load_scenario(path)`` reads and checks a file (raising :class:`~ailf.errors.ScenarioError`
with every problem), ``run_scenario(scenario)`` runs it as ``ailf run`` does and returns
the :class:`~ailf.scenario._report.RunReport`. See ``docs/scenarios.md``.
"""

from ailf.scenario._load import load_scenario as load_scenario
from ailf.scenario._load import parse_scenario as parse_scenario
from ailf.scenario._model import Scenario as Scenario
from ailf.scenario._report import RunReport as RunReport
from ailf.scenario._runner import run_scenario as run_scenario

__all__ = ["RunReport", "Scenario", "load_scenario", "parse_scenario", "run_scenario"]
