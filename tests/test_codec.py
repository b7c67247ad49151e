"""The wire codec: JSON only, attrs bodies with type tags, clear decode errors."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ailf import DecodeError, message_type
from ailf.codec import decode_body, dumps, encode_body, loads, message_types, type_tag


@message_type
@attrs.frozen
class Point:
    x: int
    y: int
    label: str = ""


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(json_values)
def test_plain_json_round_trips(value: object) -> None:
    data, tag = encode_body(value)
    assert tag is None
    assert decode_body(loads(dumps(data)), tag) == value


def test_attrs_bodies_come_back_as_instances() -> None:
    data, tag = encode_body(Point(1, 2, "a"))
    assert tag == type_tag(Point) == f"{__name__}:Point"
    assert decode_body(loads(dumps(data)), tag) == Point(1, 2, "a")


def test_unknown_tag_keeps_the_data() -> None:
    assert decode_body({"x": 1}, "no.such.module:Thing") == {"x": 1}


def test_data_that_does_not_fit_the_class_names_the_field() -> None:
    with pytest.raises(DecodeError, match=r"x"):
        decode_body({"x": "not an int", "y": 2}, type_tag(Point))


@pytest.mark.parametrize("text", ["{", "not json", b"\xff\xfe", "[1,"])
def test_bad_json_is_a_decode_error(text: str | bytes) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        loads(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object()])
def test_values_json_cannot_carry_are_refused(value: object) -> None:
    with pytest.raises(DecodeError, match="cannot encode"):
        dumps(value)


def test_dumps_accepts_attrs_instances() -> None:
    assert loads(dumps(Point(1, 2))) == {"x": 1, "y": 2, "label": ""}


def test_a_tag_never_imports_a_module() -> None:
    import sys

    assert "antigravity" not in sys.modules
    assert decode_body({"x": 1}, "antigravity:Anything") == {"x": 1}
    assert "antigravity" not in sys.modules


@attrs.frozen
class Unregistered:
    n: int


def test_only_registered_classes_are_rebuilt() -> None:
    """A class whose module is imported is not enough: a tag is only looked up in the
    registry, never by walking a module's attributes."""
    assert decode_body({"n": 1}, type_tag(Unregistered)) == {"n": 1}
    message_type(Unregistered)
    try:
        assert decode_body({"n": 1}, type_tag(Unregistered)) == Unregistered(1)
    finally:
        message_types._by_tag.pop(type_tag(Unregistered))


@pytest.mark.parametrize(
    "tag",
    [
        "ctypes:cdll./tmp/libnothing.so",
        "ctypes:CDLL",
        "concurrent.futures:ProcessPoolExecutor",
        "os:system",
        "builtins:eval",
        "subprocess:Popen",
        "test_codec:Point.__init__.__globals__",
        ":",
        "",
    ],
)
def test_tags_naming_anything_else_leave_the_data(tag: str) -> None:
    assert decode_body({"cmd": "x"}, tag) == {"cmd": "x"}


def test_only_attrs_classes_can_be_registered() -> None:
    with pytest.raises(TypeError, match="attrs class"):
        message_type(dict)  # type: ignore[type-var]


def test_lone_surrogates_are_escaped_and_come_back() -> None:
    text = dumps({"s": "a\ud800b", "t": "é"})
    text.encode()  # valid UTF-8
    assert loads(text) == {"s": "a\ud800b", "t": "é"}


def test_nesting_past_the_recursion_limit_is_a_decode_error() -> None:
    value: list = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(DecodeError, match="nested deeper"):
        dumps(value)
