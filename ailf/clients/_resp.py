"""RESP2 on the wire: packing commands and parsing replies incrementally.

Two parsers share one interface (``feed(bytes)``, ``gets()``): :class:`hiredis.Reader`
when hiredis is installed (it is, through ``redis[hiredis]``), else :class:`PythonParser`,
a pure-Python incremental parser. ``AILF_RESP_PARSER=python`` forces the pure-Python one,
which is how the test suite runs every connection test on both.

Replies come out as Python values: simple and bulk strings as ``bytes`` (``str`` when an
encoding is given), integers as ``int``, arrays as ``list``, nil as ``None``. An error
reply is *returned*, not raised, as a :class:`~ailf.errors.ResponseError` instance, so
that one bad command in a pipeline does not hide the replies after it. ``gets()``
returns :data:`NOT_ENOUGH` until a whole reply has arrived. A bulk string that is not
valid text under the encoding raises :class:`UnicodeDecodeError` from ``gets()`` once
the whole reply has been consumed, so the parser stays in step with the stream. A
malformed stream raises :class:`ProtocolError`, after which the parser is unusable and
the connection must be closed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Protocol

from ailf.errors import DataError, ResponseError

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis ships with redis[hiredis]
    hiredis = None

__all__ = [
    "NOT_ENOUGH",
    "Parser",
    "ProtocolError",
    "PythonParser",
    "encode_arg",
    "make_parser",
    "pack_command",
    "pack_commands",
    "parser_name",
]


class _NotEnough:
    """The type of :data:`NOT_ENOUGH`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_ENOUGH"


#: What ``gets()`` returns while a reply is still incomplete.
NOT_ENOUGH: Any = _NotEnough()


class ProtocolError(Exception):
    """The byte stream is not RESP; the connection it came from cannot be used again."""


class Parser(Protocol):
    def feed(self, data: bytes, /) -> None: ...

    def gets(self) -> Any: ...


# -- packing -----------------------------------------------------------------------------


def encode_arg(value: Any) -> bytes:
    """One command argument as bytes, the way redis-py encodes it.

    Floats use ``repr`` so that they survive the round trip; booleans are refused, as
    in redis-py, because ``True`` would silently become ``"True"`` on the server. What
    cannot be an argument raises :class:`~ailf.errors.DataError` (redis-py raises its
    own ``DataError`` there; ours is that one too, and a ``TypeError``).
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise DataError(f"Redis argument {value!r}: convert booleans to int, bytes or str first")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise DataError(
        f"Redis argument {value!r} of type {type(value).__name__}: expected bytes, str, int"
        " or float (use set_json, or encode JSON with ailf.codec.dumps first)"
    )


def _pack_python(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = encode_arg(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def pack_command(args: tuple[Any, ...]) -> bytes:
    """A command (``("SET", "k", 1)``) as one RESP array of bulk strings."""
    if _hiredis_pack is not None:
        try:
            packed: bytes = _hiredis_pack(args)
            return packed
        except TypeError:
            pass  # bytearray, or a bad value: the pure-Python packer converts or explains
    return _pack_python(args)


def pack_commands(commands: Iterable[tuple[Any, ...]]) -> bytes:
    """Several commands packed back to back, for one write (a pipeline)."""
    if _hiredis_pack is not None:
        try:
            return b"".join(map(_hiredis_pack, commands))
        except TypeError:
            pass  # as in pack_command: the pure-Python packer converts or explains
    return b"".join(map(pack_command, commands))


_hiredis_pack = getattr(hiredis, "pack_command", None) if hiredis is not None else None


# -- parsing -----------------------------------------------------------------------------


class PythonParser:
    """An incremental RESP2 parser in pure Python, a drop-in for :class:`hiredis.Reader`.

    Bytes are kept in one buffer and consumed element by element. Arrays under
    construction are kept on a stack between calls, so a reply that arrives in many
    chunks is parsed once, however large it is; a bulk string's length is checked
    before it is sliced, so one large value costs one copy. ``gets()`` returns
    :data:`NOT_ENOUGH` until a whole top-level reply is there.
    """

    __slots__ = (
        "_broken",
        "_buffer",
        "_decode_error",
        "_encoding",
        "_errors",
        "_position",
        "_stack",
    )

    def __init__(self, encoding: str | None = None, errors: str = "strict") -> None:
        self._buffer = bytearray()
        self._position = 0
        self._encoding = encoding
        self._errors = errors
        self._broken: ProtocolError | None = None
        self._stack: list[tuple[list[Any], int]] = []
        self._decode_error: UnicodeDecodeError | None = None

    def feed(self, data: bytes) -> None:
        if self._position and self._position > len(self._buffer) // 2:
            del self._buffer[: self._position]
            self._position = 0
        self._buffer += data

    def gets(self) -> Any:
        if self._broken is not None:
            raise self._broken
        stack = self._stack
        while True:
            try:
                element = self._element()
            except ProtocolError as exc:
                self._broken = exc
                raise
            if element is NOT_ENOUGH:
                return NOT_ENOUGH
            value, count = element
            if count > 0:  # an array header: its items come next
                stack.append(([], count))
                continue
            while stack:
                items, expected = stack[-1]
                items.append(value)
                if len(items) < expected:
                    break
                stack.pop()
                value = items
            else:
                decode_error, self._decode_error = self._decode_error, None
                if decode_error is not None:
                    raise decode_error
                return value

    def _element(self) -> Any:
        """``(value, 0)`` for a complete scalar or empty array, ``(None, n)`` for the
        header of an array of n > 0 items, or NOT_ENOUGH (nothing consumed)."""
        buffer = self._buffer
        start = self._position
        end = buffer.find(b"\r\n", start)
        if end < 0:
            return NOT_ENOUGH
        kind = buffer[start]
        body = bytes(buffer[start + 1 : end])
        position = end + 2
        if kind == 36:  # $ bulk string
            length = self._int(body)
            if length < 0:
                value = None
            else:
                stop = position + length
                if len(buffer) < stop + 2:
                    return NOT_ENOUGH
                value = self._text(bytes(buffer[position:stop]))
                position = stop + 2
        elif kind == 43:  # + simple string
            value = self._text(body)
        elif kind == 58:  # : integer
            value = self._int(body)
        elif kind == 45:  # - error
            value = ResponseError(body.decode("utf-8", "replace"))
        elif kind == 42:  # * array
            count = self._int(body)
            self._position = position
            if count > 0:
                return None, count
            return ([] if count == 0 else None), 0
        else:
            raise ProtocolError(f"Protocol error, got {chr(kind)!r} as reply type byte")
        self._position = position
        return value, 0

    def _text(self, data: bytes) -> Any:
        if self._encoding is None:
            return data
        try:
            return data.decode(self._encoding, self._errors)
        except UnicodeDecodeError as exc:
            self._decode_error = self._decode_error or exc
            return None

    def _int(self, line: bytes) -> int:
        try:
            return int(line)
        except ValueError:
            raise ProtocolError(f"Protocol error, expected an integer, got {line[:40]!r}") from None


def parser_name() -> str:
    """``"hiredis"`` or ``"python"``: which parser :func:`make_parser` returns here."""
    if hiredis is None or os.environ.get("AILF_RESP_PARSER", "").lower() == "python":
        return "python"
    return "hiredis"


def make_parser(encoding: str | None = None) -> Parser:
    """A fresh parser for one connection; ``encoding`` decodes strings (None: bytes)."""
    if parser_name() == "python":
        return PythonParser(encoding)
    reader: Parser
    if encoding is None:
        reader = hiredis.Reader(
            notEnoughData=NOT_ENOUGH, replyError=ResponseError, protocolError=ProtocolError
        )
        return reader
    reader = hiredis.Reader(
        notEnoughData=NOT_ENOUGH,
        replyError=ResponseError,
        protocolError=ProtocolError,
        encoding=encoding,
        errors="strict",
    )
    return reader
