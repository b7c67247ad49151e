"""Text for people: counted nouns and aligned tables, as the ``ailf`` command prints them.

One table layout for every table the command prints (``ailf status``, a scenario run's
summary), so that they read alike.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["count_of", "format_table"]


def count_of(n: int, noun: str) -> str:
    """``1 process``, ``2 processes``, ``0 messages``, ``3 deliveries``, ``1 dead letter``."""
    if n == 1:
        return f"{n} {noun}"
    if noun.endswith(("s", "x")):
        return f"{n} {noun}es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}s"


def format_table(rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """``rows`` (the header first) as aligned columns, each line after ``indent``: the
    first column, names, aligned left; the others, numbers, aligned right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        indent
        + "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
