"""RESP2 packing and parsing: the pure-Python parser and hiredis agree, chunk by chunk."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ailf import ResponseError
from ailf.clients import _resp as resp
from ailf.clients._resp import (
    NOT_ENOUGH,
    ProtocolError,
    PythonParser,
    pack_command,
    pack_commands,
)


class Simple(bytes):
    """A value to encode as a simple string (``+OK``) rather than a bulk string."""


def encode(value: Any) -> bytes:
    if isinstance(value, Simple):
        return b"+" + value + b"\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, ResponseError):
        return b"-" + str(value).encode() + b"\r\n"
    return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)


def normal(value: Any) -> Any:
    """Replies as both parsers return them (errors compared by type and text)."""
    if isinstance(value, ResponseError):
        return ("error", str(value))
    if isinstance(value, list):
        return [normal(item) for item in value]
    if isinstance(value, Simple):
        return bytes(value)
    return value


line_text = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)
leaves = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    line_text.map(Simple),
    st.from_regex(r"[A-Z]{2,8} [a-z ]{0,20}", fullmatch=True).map(ResponseError),
)
replies = st.recursive(leaves, lambda children: st.lists(children, max_size=6), max_leaves=30)


def parsers() -> list[Any]:
    found = [PythonParser()]
    if resp.hiredis is not None:
        found.append(resp.hiredis.Reader(notEnoughData=NOT_ENOUGH, replyError=ResponseError))
    return found


def read_all(parser: Any, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        parser.feed(data[start:cut])
        start = cut
        while (reply := parser.gets()) is not NOT_ENOUGH:
            out.append(normal(reply))
    return out


@settings(max_examples=300, deadline=None)
@given(values=st.lists(replies, min_size=1, max_size=8), data=st.data())
def test_parsers_agree_on_any_chunking(values: list[Any], data: st.DataObject) -> None:
    wire = b"".join(encode(value) for value in values)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=12))
    expected = [normal(value) for value in values]
    for parser in parsers():
        assert read_all(parser, wire, cuts) == expected, type(parser).__name__


@pytest.mark.parametrize("parser", parsers(), ids=lambda p: type(p).__name__)
def test_byte_by_byte(parser: Any) -> None:
    wire = encode([b"a", [1, None, Simple(b"OK")], ResponseError("ERR x")]) + b"+PONG\r\n"
    assert read_all(parser, wire, list(range(len(wire)))) == [
        [b"a", [1, None, b"OK"], ("error", "ERR x")],
        b"PONG",
    ]


@pytest.mark.parametrize("kind", ["python", "hiredis"])
def test_decoding_and_bad_utf8_keep_the_parser_in_step(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AILF_RESP_PARSER", kind)
    parser = resp.make_parser("utf-8")
    parser.feed(encode([b"caf\xc3\xa9", b"\xff"]) + encode(Simple(b"OK")))
    with pytest.raises(UnicodeDecodeError):
        parser.gets()
    assert parser.gets() == "OK"
    parser.feed(encode([b"caf\xc3\xa9", 1]))
    assert parser.gets() == ["caf\u00e9", 1]


@pytest.mark.parametrize("kind", ["python", "hiredis"])
def test_protocol_error_breaks_the_parser_for_good(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AILF_RESP_PARSER", kind)
    parser = resp.make_parser()
    parser.feed(b"+OK\r\n?what\r\n")
    assert parser.gets() == b"OK"
    with pytest.raises(ProtocolError):
        parser.gets()
    with pytest.raises(ProtocolError):
        parser.gets()


@given(
    st.lists(
        st.one_of(
            st.text(max_size=30),
            st.binary(max_size=30),
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_pack_command_matches_the_pure_python_packer(args: list[Any]) -> None:
    assert pack_command(tuple(args)) == resp._pack_python(tuple(args))


def test_pack_command_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(TypeError, match="booleans"):
        pack_command(("SET", "k", True))
    with pytest.raises(TypeError, match=r"codec\.dumps"):
        pack_command(("SET", "k", {"a": 1}))
    assert pack_command(("SET", bytearray(b"k"), memoryview(b"v"))) == pack_command(
        ("SET", b"k", b"v")
    )


def test_pack_commands_packs_a_pipeline_back_to_back_or_refuses_it_whole() -> None:
    commands = [("SET", "k", 1), ("XADD", "s", "*", "f", bytearray(b"v")), ("GET", "k")]
    assert pack_commands(commands) == b"".join(pack_command(args) for args in commands)
    with pytest.raises(TypeError, match="booleans"):
        pack_commands([("SET", "k", 1), ("SET", "k", True)])


def test_env_switch_selects_the_pure_python_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AILF_RESP_PARSER", "python")
    assert resp.parser_name() == "python"
    assert isinstance(resp.make_parser(), PythonParser)


def test_python_parser_keeps_partial_arrays_between_chunks() -> None:
    entry = encode([b"1-0", [b"field", b"value"]])
    wire = b"*1000\r\n" + entry * 1000
    parser = PythonParser()
    for start in range(0, len(wire), 97):
        parser.feed(wire[start : start + 97])
        if start + 97 < len(wire):
            assert parser.gets() is NOT_ENOUGH
    reply = parser.gets()
    assert len(reply) == 1000 and reply[-1] == [b"1-0", [b"field", b"value"]]
