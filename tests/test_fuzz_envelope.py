"""Property-based fuzzing of everything that decodes data off the wire.

Whatever arrives — any text, any bytes, any JSON, envelopes with every field of every
type, type tags naming anything — the decoders either return or raise the documented
:class:`DecodeError`; nothing else escapes (an escaping exception used to crash the
runtime). And what the runtime itself encodes, it decodes back unchanged.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ailf.codec import decode_body, loads, message_type
from ailf.errors import DecodeError, MessageTooLarge
from ailf.runtime._message import (
    Message,
    decode_envelope,
    decode_reply,
    encode_envelope,
    encode_reply,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@message_type
@attrs.frozen
class Point:
    x: int
    y: int


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
# JSON as Python's json module reads it: NaN, Infinity, huge exponents and integers of
# hundreds of digits (which overflow a float) included.
any_json = (
    json_values
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | st.integers(min_value=1, max_value=10**20).map(lambda n: n * 10**400)
)

#: Type tags that exist, that are hostile, and that are malformed. Random tags stay under
#: a prefix no module has, so that fuzzing never imports whatever a random name hits.
tags = st.sampled_from(
    [
        f"{__name__}:Point",
        f"{__name__}:Point.x",
        ".x:Y",
        "..:",
        ":",
        "",
        "os:system",
        "builtins:eval",
        "builtins:int",
        "pickle:loads",
        "subprocess:Popen",
        "a..b:C",
        "\x00:x",
        "builtins:type.__subclasses__",
    ]
) | st.text(max_size=20).map(lambda t: f"fuzz_no_such_module_{t}")

envelope_fields = {
    "v": st.just(1) | any_json,
    "body": any_json,
    "type": tags | any_json,
    "sender": st.text() | any_json,
    "sent_at": st.floats() | any_json,
    "headers": st.dictionaries(st.text(), st.text()) | any_json,
    "reply_to": st.text() | any_json,
    "correlation": st.text() | any_json,
    "topic": st.text() | any_json,
    "id": st.text() | any_json,
}
envelopes = st.fixed_dictionaries({}, optional=envelope_fields)


def decodes_or_refuses(decode: Any, data: Any) -> Any:
    try:
        return decode(data)
    except DecodeError:
        return None


@FUZZ
@given(st.text())
def test_any_text_is_an_envelope_or_a_decode_error(text: str) -> None:
    decodes_or_refuses(decode_envelope, text)
    decodes_or_refuses(decode_reply, text)
    decodes_or_refuses(loads, text)


@FUZZ
@given(st.binary())
def test_any_bytes_are_refused_or_parsed(data: bytes) -> None:
    decodes_or_refuses(decode_envelope, data)
    decodes_or_refuses(loads, data)


@FUZZ
@given(envelopes)
def test_envelopes_with_fields_of_any_type(fields: dict[str, Any]) -> None:
    message = decodes_or_refuses(decode_envelope, json.dumps(fields))
    if message is not None:
        assert isinstance(message, Message)
        assert message.sender is None or isinstance(message.sender, str)
        assert isinstance(message.headers, dict)
        assert isinstance(message.sent_at, float)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "v": st.just(1) | any_json,
            "correlation": st.text() | any_json,
            "ok": st.booleans() | any_json,
            "body": any_json,
            "type": tags | any_json,
            "error": st.fixed_dictionaries({}, optional={"type": any_json, "message": any_json})
            | any_json,
        },
    )
)
def test_replies_with_fields_of_any_type(fields: dict[str, Any]) -> None:
    decodes_or_refuses(decode_reply, json.dumps(fields))


@FUZZ
@given(any_json, tags)
def test_bodies_with_any_tag(data: Any, tag: str) -> None:
    body = decodes_or_refuses(lambda d: decode_body(d, tag), data)
    if isinstance(body, Point):
        assert tag == f"{__name__}:Point"


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from(["[", '{"a":']))
@example(100_000, "[")
@example(100_000, '{"a":')
def test_deep_nesting_is_a_decode_error_not_a_recursion_error(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = '{"v": 1, "body": ' + opener * depth + "1" + closer * depth + "}"
    decodes_or_refuses(decode_envelope, text)


@FUZZ
@given(json_values, st.none() | st.text(min_size=1), st.dictionaries(st.text(), st.text()))
def test_what_the_runtime_encodes_it_decodes_unchanged(
    body: Any, sender: str | None, headers: dict[str, str]
) -> None:
    message = decode_envelope(encode_envelope(body, sender=sender, headers=headers))
    assert message.body == body
    assert message.sender == sender
    assert message.headers == headers


@FUZZ
@given(json_values | st.builds(Point, st.integers(), st.integers()), st.text())
def test_replies_round_trip(value: Any, correlation: str) -> None:
    reply = decode_reply(encode_reply(correlation, value))
    assert reply.ok and reply.correlation == correlation and reply.body == value
    failed = decode_reply(encode_reply(correlation, error=ValueError(str(value))))
    assert not failed.ok and failed.error_type == "ValueError"


@FUZZ
@given(json_values, st.integers(min_value=1, max_value=400))
def test_max_size_is_exact(body: Any, limit: int) -> None:
    size = len(encode_envelope(body).encode())
    try:
        text = encode_envelope(body, max_size=limit)
    except MessageTooLarge:
        assert size > limit - 40  # sent_at may take a few more digits in one call
    else:
        assert len(text.encode()) <= limit
