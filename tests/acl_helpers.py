"""The one-namespace ACL rule of docs/operating.md, as the tests apply it.

Tests read the rule from the document itself, so that what they prove enough (and no
more) is exactly what operators are told to type.
"""

from __future__ import annotations

from pathlib import Path

OPERATING = Path(__file__).resolve().parent.parent / "docs" / "operating.md"


def documented_acl(password: str) -> list[str]:
    """The words after ``ACL SETUSER`` of operating.md's rule for user ``shop``
    (namespace ``shop``), with ``password`` for the placeholder."""
    line = next(
        line.strip()
        for line in OPERATING.read_text().splitlines()
        if line.strip().startswith("ACL SETUSER shop ")
    )
    return [word.replace("a-long-random-password", password) for word in line.split()[2:]]
