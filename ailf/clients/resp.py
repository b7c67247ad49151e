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
from typing import Any, Protocol

from ailf.errors import ResponseError

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
    in redis-py, because ``True`` would silently become ``"True"`` on the server.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError(f"Redis argument {value!r}: convert booleans to int, bytes or str first")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        f"Redis argument {value!r} of type {type(value).__name__}: expected bytes, str, int"
        " or float (encode JSON with ailf.codec.dumps first)"
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
            return _hiredis_pack(args)
        except TypeError:
            pass  # bytearray, or a bad value: the pure-Python packer converts or explains
    return _pack_python(args)


_hiredis_pack = getattr(hiredis, "pack_command", None) if hiredis is not None else None


# -- parsing -----------------------------------------------------------------------------


class PythonParser:
    """An incremental RESP2 parser in pure Python, a drop-in for :class:`hiredis.Reader`.

    Bytes are kept in one buffer; ``gets()`` parses one reply from the current position
    or, if the reply is incomplete, leaves the position where it was and returns
    :data:`NOT_ENOUGH`. A bulk string's length is checked before it is sliced, so one
    large value costs one copy however many chunks it arrived in.
    """

    __slots__ = ("_broken", "_buffer", "_encoding", "_errors", "_position")

    def __init__(self, encoding: str | None = None, errors: str = "strict") -> None:
        self._buffer = bytearray()
        self._position = 0
        self._encoding = encoding
        self._errors = errors
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if self._position and self._position > len(self._buffer) // 2:
            del self._buffer[: self._position]
            self._position = 0
        self._buffer += data

    def gets(self) -> Any:
        if self._broken is not None:
            raise self._broken
        decode_error: list[UnicodeDecodeError] = []
        try:
            result = self._parse(self._position, decode_error)
        except ProtocolError as exc:
            self._broken = exc
            raise
        if result is None:
            return NOT_ENOUGH
        value, self._position = result
        if decode_error:
            raise decode_error[0]
        return value

    def _line(self, start: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(b"\r\n", start)
        if end < 0:
            return None
        return bytes(self._buffer[start:end]), end + 2

    def _text(self, data: bytes, decode_error: list[UnicodeDecodeError]) -> Any:
        if self._encoding is None:
            return data
        try:
            return data.decode(self._encoding, self._errors)
        except UnicodeDecodeError as exc:
            decode_error.append(exc)
            return None

    def _int(self, line: bytes) -> int:
        try:
            return int(line)
        except ValueError:
            raise ProtocolError(f"Protocol error, expected an integer, got {line[:40]!r}") from None

    def _parse(self, start: int, decode_error: list[UnicodeDecodeError]) -> tuple[Any, int] | None:
        buffer = self._buffer
        if start >= len(buffer):
            return None
        line = self._line(start + 1)
        if line is None:
            return None
        kind = buffer[start]
        body, position = line
        if kind == 36:  # $ bulk string
            length = self._int(body)
            if length < 0:
                return None, position
            end = position + length
            if len(buffer) < end + 2:
                return None
            return self._text(bytes(buffer[position:end]), decode_error), end + 2
        if kind == 43:  # + simple string
            return self._text(body, decode_error), position
        if kind == 58:  # : integer
            return self._int(body), position
        if kind == 42:  # * array
            count = self._int(body)
            if count < 0:
                return None, position
            items = []
            for _ in range(count):
                result = self._parse(position, decode_error)
                if result is None:
                    return None
                item, position = result
                items.append(item)
            return items, position
        if kind == 45:  # - error
            return ResponseError(body.decode("utf-8", "replace")), position
        raise ProtocolError(f"Protocol error, got {chr(kind)!r} as reply type byte")


def parser_name() -> str:
    """``"hiredis"`` or ``"python"``: which parser :func:`make_parser` returns here."""
    if hiredis is None or os.environ.get("AILF_RESP_PARSER", "").lower() == "python":
        return "python"
    return "hiredis"


def make_parser(encoding: str | None = None) -> Parser:
    """A fresh parser for one connection; ``encoding`` decodes strings (None: bytes)."""
    if parser_name() == "python":
        return PythonParser(encoding)
    if encoding is None:
        return hiredis.Reader(
            notEnoughData=NOT_ENOUGH, replyError=ResponseError, protocolError=ProtocolError
        )
    return hiredis.Reader(
        notEnoughData=NOT_ENOUGH,
        replyError=ResponseError,
        protocolError=ProtocolError,
        encoding=encoding,
        errors="strict",
    )
