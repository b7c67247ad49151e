"""A keyed agent's per-key state: an attrs instance in memory, JSON in a Redis hash.

The state travels through the same cattrs converter as message bodies
(:data:`ailf.codec.converter`). It evolves with its class: a field added since the
state was saved takes its default; a field the class no longer has is dropped, with a
warning naming it, so that renaming a field does not pass unnoticed. A field added
without a default cannot be filled in, so such a class is refused at spawn.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from ailf.codec import converter, dumps, loads
from ailf.errors import ConfigError, DecodeError

__all__ = ["check_state_type", "dump_state", "load_state"]


def check_state_type(owner: str, state_type: Any) -> type | None:
    """``state_type`` if it can be a keyed agent's state (None, or an attrs class whose
    every field has a default); :class:`ConfigError` saying what to change otherwise."""
    if state_type is None:
        return None
    if not (isinstance(state_type, type) and attrs.has(state_type)):
        raise ConfigError(f"{owner}.state_type: expected an attrs class, got {state_type!r}")
    missing = [f.name for f in attrs.fields(state_type) if f.default is attrs.NOTHING]
    if missing:
        raise ConfigError(
            f"{owner}.state_type: every field needs a default (the state of a key never"
            f" seen before is {state_type.__qualname__}()); give one to {', '.join(missing)}"
        )
    return state_type


def load_state(
    state_type: type, text: str | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> Any:
    """The state saved as ``text`` (a new one when None), as an instance of ``state_type``.

    Raises :class:`DecodeError` when the text is not a JSON object or its fields do not
    structure into the class.
    """
    if text is None:
        return state_type()
    data = loads(text)
    if not isinstance(data, dict):
        raise DecodeError(f"saved state is not a JSON object: {text[:80]!r}")
    known = attrs.fields_dict(state_type)
    unknown = sorted(name for name in data if name not in known)
    if unknown:
        log.warning(
            "saved state has field(s) %s that %s no longer has: dropped",
            ", ".join(unknown),
            state_type.__qualname__,
        )
        data = {name: value for name, value in data.items() if name in known}
    try:
        return converter.structure(data, state_type)
    except Exception as exc:
        raise DecodeError(
            f"saved state does not fit {state_type.__qualname__} ({type(exc).__name__}: {exc})"
        ) from None


def dump_state(state: Any) -> str:
    """The state as the JSON text saved in Redis."""
    return dumps(converter.unstructure(state))
