"""One codec for everything ailf puts on the wire: JSON through one cattrs converter.

No pickle anywhere: a payload from Redis is data, never code. Plain JSON values (dicts,
lists, strings, numbers, booleans, None) travel as they are. An attrs instance travels
as its unstructured fields plus a *type tag* ``"package.module:QualName"``, and comes
back as an instance of its class in a process that registered the class
(:func:`message_type`), and as the plain dict of its fields elsewhere, so that nothing
is lost. Decoding never imports anything, nor looks anything up by name, but in that
registry.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from ailf.errors import DecodeError

__all__ = [
    "MessageTypes",
    "converter",
    "decode_body",
    "dumps",
    "encode_body",
    "encode_payload",
    "loads",
    "message_type",
    "message_types",
    "type_tag",
]

#: The converter used for message bodies, envelopes and scenario files' agent options.
#: Register hooks on it for your own non-attrs types.
converter: cattrs.Converter = make_converter()

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
#: For the rare text that is not valid Unicode (a lone surrogate such as ``"\ud800"``,
#: which JSON may carry as an escape but UTF-8 cannot): escaped, it still decodes to the
#: same Python string on the other side.
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
_decoder = json.JSONDecoder()


def _encode(value: Any) -> str:
    text = _encoder.encode(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return _ascii_encoder.encode(value)
    return text


def dumps(value: Any) -> str:
    """Compact JSON text for a JSON-able value; attrs instances are unstructured first.

    The text is always valid UTF-8 (strings holding lone surrogates are sent as
    ``\\u`` escapes). A value JSON cannot carry — NaN, an arbitrary object, nesting
    deeper than the interpreter's recursion limit — raises :class:`DecodeError`.
    """
    try:
        return _encode(value)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return _encode(converter.unstructure(value))
    except Exception as exc:  # whatever the value's own hooks raise, it is not encodable
        if isinstance(exc, RecursionError):
            detail = "nested deeper than the recursion limit"
        else:
            detail = str(exc)
        raise DecodeError(f"cannot encode {type(value).__name__} as JSON: {detail}") from None


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


class MessageTypes:
    """The attrs classes a process will rebuild message bodies as, by type tag.

    A tag arrives on the wire, written by whoever could write to a mailbox or a channel,
    so it is only ever *looked up* here: a class is rebuilt from a tag only if this
    process's own code registered it first — with :func:`message_type`, or by annotating
    an agent's handler ``message: Message[Order]`` (registered when the agent is
    spawned). A tag naming anything else leaves the body as the plain JSON it arrived
    as. Nothing about a tag ever makes the receiver import a module or walk a module's
    attributes: a sender must not choose what code runs in the receiver.
    """

    def __init__(self) -> None:
        self._by_tag: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Rebuild bodies tagged ``type_tag(cls)`` as ``cls``; returns ``cls``.

        Registering a class again is harmless; a class registered under a tag that
        another class held (a module reloaded, a class redefined) replaces it.
        """
        if not (isinstance(cls, type) and attrs.has(cls)):
            raise TypeError(f"message_type(): expected an attrs class, got {cls!r}")
        self._by_tag[type_tag(cls)] = cls
        return cls

    def get(self, tag: str) -> type | None:
        """The class registered under ``tag``, or None."""
        return self._by_tag.get(tag)

    def __contains__(self, cls: object) -> bool:
        return isinstance(cls, type) and self._by_tag.get(type_tag(cls)) is cls


#: The registry :func:`decode_body` rebuilds typed bodies from.
message_types = MessageTypes()

T = TypeVar("T", bound=type)


def message_type(cls: T) -> T:
    """Register an attrs class as a message body type; usable as a class decorator::

        @message_type
        @attrs.frozen
        class Order:
            item: str
            qty: int

    A body sent as an ``Order`` then arrives as an ``Order`` in every process that
    registered it (and as the plain dict of its fields in one that did not). Agents
    whose handler is annotated ``message: Message[Order]`` register ``Order`` when
    they are spawned; an ``ask()`` caller registers the classes of the replies it
    expects.
    """
    message_types.register(cls)
    return cls


def decode_body(data: Any, tag: str | None) -> Any:
    """Rebuild a body from its data and type tag.

    Raises :class:`DecodeError` when the tag names a registered class but the data
    does not fit it (the message carries cattrs' path to the bad field). A tag naming
    no registered class (see :class:`MessageTypes`) leaves the data as it is.
    """
    if tag is None:
        return data
    cls = message_types.get(tag)
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
