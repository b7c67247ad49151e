"""The one-namespace ACL rule of docs/operating.md, as the tests apply it.

Tests read the rule from the document itself, so that what they prove enough (and no
more) is exactly what operators are told to type.
"""

from __future__ import annotations

from pathlib import Path

OPERATING = Path(__file__).resolve().parent.parent / "docs" / "operating.md"


def documented_acl(user: str, password: str) -> list[str]:
    """The words after ``ACL SETUSER`` of operating.md's rule for namespace ``shop``,
    for user ``user`` with password ``password``."""
    line = next(
        line.strip()
        for line in OPERATING.read_text().splitlines()
        if line.strip().startswith("ACL SETUSER shop ")
    )
    words = line.split()[3:]  # after "ACL SETUSER shop"
    return [user, *(f">{password}" if word.startswith(">") else word for word in words)]
