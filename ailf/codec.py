"""One codec for everything ailf puts on the wire: JSON through one cattrs converter.

No pickle anywhere: a payload from Redis is data, never code. Plain JSON values (dicts,
lists, strings, numbers, booleans, None) travel as they are. An attrs instance travels
as its unstructured fields plus a *type tag* ``"package.module:QualName"``, and comes
back as an instance of its class when the receiving process has that class's module
imported (and as the plain dict of its fields when it has not, so that nothing is
lost). Decoding never imports anything a payload names.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from ailf.errors import DecodeError

__all__ = [
    "converter",
    "decode_body",
    "dumps",
    "encode_body",
    "encode_payload",
    "loads",
    "type_tag",
]

#: The converter used for message bodies, envelopes and scenario files' agent options.
#: Register hooks on it for your own non-attrs types.
converter: cattrs.Converter = make_converter()

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_decoder = json.JSONDecoder()


def dumps(value: Any) -> str:
    """Compact JSON text for a JSON-able value; attrs instances are unstructured first."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError):
        try:
            return _encoder.encode(converter.unstructure(value))
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from exc


def loads(text: str | bytes) -> Any:
    """Parse JSON text; a :class:`DecodeError` (not a bare ValueError) on bad input."""
    try:
        if isinstance(text, bytes):
            text = text.decode()
        return _decoder.decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        preview = text[:80] if isinstance(text, str) else text[:80].decode(errors="replace")
        raise DecodeError(f"not valid JSON ({exc}): {preview!r}") from None


def encode_payload(message: Any) -> str | bytes | int | float:
    """A pub/sub or raw payload: strings, bytes and numbers as they are, the rest as JSON.

    The sync and async clients' ``publish`` both go through this, so a dict published
    by either arrives as the same JSON text.
    """
    if isinstance(message, (str, bytes, int, float)) and not isinstance(message, bool):
        return message
    return dumps(message)


def type_tag(cls: type) -> str:
    """``"package.module:QualName"`` for a class: the tag an attrs body travels with."""
    return f"{cls.__module__}:{cls.__qualname__}"


def encode_body(body: Any) -> tuple[Any, str | None]:
    """Split a body into (JSON-able data, type tag or None for plain JSON)."""
    if attrs.has(type(body)):
        return converter.unstructure(body), type_tag(type(body))
    return body, None


_classes: dict[str, type] = {}


def _resolve_tag(tag: str) -> type | None:
    """The attrs class a type tag names, looked up among modules already imported.

    A tag comes off the wire, so it is never a reason to import anything: importing a
    module runs its code, and a sender must not choose what code a receiver runs. The
    receiving process has the class's module imported whenever its own code uses the
    class (an agent importing the message classes it handles). Only hits are cached,
    so a class whose module is imported later is still found, and a flood of made-up
    tags costs no memory.
    """
    cls = _classes.get(tag)
    if cls is not None:
        return cls
    module_name, _, qualname = tag.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualname.split(".") if found is not None else ():
        found = getattr(found, part, None)
    if isinstance(found, type) and attrs.has(found):
        _classes[tag] = found
        return found
    return None


def decode_body(data: Any, tag: str | None) -> Any:
    """Rebuild a body from its data and type tag.

    Raises :class:`DecodeError` when the class is found but the data does not fit it
    (the message carries cattrs' path to the bad field). A tag naming no class of an
    imported module leaves the data as it is.
    """
    if tag is None:
        return data
    cls = _resolve_tag(tag)
    if cls is None:
        return data
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            details = "; ".join(cattrs.transform_error(exc))
        else:
            details = str(exc)
        raise DecodeError(f"body does not fit {tag}: {details}") from exc
