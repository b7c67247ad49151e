"""The envelope codec, key layout and agent options: no Redis needed."""

from __future__ import annotations

import json
import re

import attrs
import pytest

from ailf.codec import message_type
from ailf.errors import ConfigError, DecodeError, MessageTooLarge
from ailf.runtime import Runtime
from ailf.runtime._agent import Agent, structure_options
from ailf.runtime._keys import Keys
from ailf.runtime._message import (
    decode_envelope,
    decode_reply,
    encode_envelope,
    encode_reply,
)


@message_type
@attrs.frozen
class Point:
    x: int
    y: int


def test_plain_envelope_round_trip() -> None:
    text = encode_envelope({"n": 1}, sender="a", headers={"trace": "t1"})
    data = json.loads(text)
    assert data["v"] == 1 and data["body"] == {"n": 1} and data["sender"] == "a"
    assert "type" not in data and "reply_to" not in data
    message = decode_envelope(text, message_id="1-0", delivery_count=2)
    assert message.id == "1-0" and message.body == {"n": 1} and message.sender == "a"
    assert message.headers == {"trace": "t1"} and message.delivery_count == 2
    assert message.topic is None and not message.is_request and message.sent_at > 0


def test_typed_envelope_round_trip() -> None:
    text = encode_envelope(Point(1, 2), reply_to="chan", correlation="7")
    assert json.loads(text)["type"] == "test_runtime_message:Point"
    message = decode_envelope(text, message_id="1-0")
    assert message.body == Point(1, 2) and message.is_request and message.correlation == "7"


def test_minimal_envelope_from_another_language() -> None:
    assert decode_envelope('{"v":1,"body":[1,2]}', message_id="5-1").body == [1, 2]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "no 'envelope' field"),
        ("not json", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"v":2,"body":1}', "unsupported envelope version 2"),
        ('{"body":1}', "unsupported envelope version None"),
        ('{"v":1}', "no 'body'"),
        ('{"v":1,"body":1,"sender":5}', "'sender'"),
        ('{"v":1,"body":1,"headers":[]}', "'headers'"),
        ('{"v":1,"body":1,"sent_at":"x"}', "'sent_at'"),
        ('{"v":1,"body":{"x":"a"},"type":"test_runtime_message:Point"}', "does not fit"),
    ],
)
def test_undecodable_envelopes_say_why(text: str | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_envelope(text, message_id="1-0")


def test_unknown_type_tag_keeps_the_data() -> None:
    text = '{"v":1,"body":{"x":1},"type":"nowhere.module:Thing"}'
    assert decode_envelope(text).body == {"x": 1}


def test_max_size() -> None:
    with pytest.raises(MessageTooLarge, match="exceeds max_message_size=50"):
        encode_envelope("x" * 100, max_size=50)
    encode_envelope("x" * 10, max_size=200)


def test_replies() -> None:
    ok = decode_reply(encode_reply("3", Point(1, 2)))
    assert ok.ok and ok.body == Point(1, 2) and ok.correlation == "3"
    failed = decode_reply(encode_reply("4", error=KeyError("gone")))
    assert not failed.ok and failed.error_type == "KeyError" and "gone" in failed.error_message
    with pytest.raises(DecodeError):
        decode_reply('{"v":1,"ok":true}')


def test_key_layout() -> None:
    keys = Keys("demo")
    assert keys.mailbox("greeter") == "ailf:demo:mailbox:greeter"
    assert keys.dead("greeter") == "ailf:demo:dead:greeter"
    assert keys.topic("news") == "ailf:demo:topic:news"
    assert keys.reply("h:1:ab") == "ailf:demo:reply:h:1:ab"
    assert keys.process("h:1:ab") == "ailf:demo:process:h:1:ab"
    assert keys.processes == "ailf:demo:processes"
    with pytest.raises(ConfigError, match="namespace name"):
        Keys("has space")
    with pytest.raises(ConfigError, match=r"namespace name: .*; got 'shop:x'"):
        Keys("shop:x")


@attrs.frozen
class GreeterOptions:
    greeting: str
    times: int = 1


class Greeter(Agent):
    Options = GreeterOptions


def test_structure_options() -> None:
    assert structure_options(Greeter, {"greeting": "hi"}) == GreeterOptions("hi", 1)
    given = GreeterOptions("yo", 2)
    assert structure_options(Greeter, given) is given
    with pytest.raises(ConfigError, match=r"Greeter options: .*times"):
        structure_options(Greeter, {"greeting": "hi", "times": "many"})
    with pytest.raises(ConfigError, match=r"required field missing @ \$.greeting"):
        structure_options(Greeter, {})
    with pytest.raises(ConfigError, match=r"unknown option.*colour.*known: greeting, times"):
        structure_options(Greeter, {"greeting": "hi", "colour": "red"})
    with pytest.raises(ConfigError, match="expected a mapping"):
        structure_options(Greeter, [1])
    assert structure_options(Agent, None) == Agent.Options()


@attrs.frozen
class CheckedOptions:
    interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    mode: str = attrs.field(default="a", validator=attrs.validators.in_(("a", "b")))


class Checked(Agent):
    Options = CheckedOptions


@attrs.frozen
class PostInitOptions:
    low: int = 0
    high: int = 1

    def __attrs_post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low must not exceed high")


class PostInit(Agent):
    Options = PostInitOptions


def test_structure_options_names_the_field_a_validator_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        structure_options(Checked, {"interval": -1, "mode": "c"})
    message = str(caught.value)
    assert "Checked options: 'interval' must be > 0: -1.0 @ $.interval" in message
    assert "'mode' must be in ('a', 'b') (got 'c') @ $.mode" in message
    # A type error is still cattrs's report, with its path.
    with pytest.raises(ConfigError, match=r"expected float @ \$\.interval"):
        structure_options(Checked, {"interval": "soon"})
    # A stock agent's validator that checks two fields together.
    from ailf.agents.ticker import Ticker

    with pytest.raises(ConfigError, match=r"exactly one of to .* @ \$\.topic"):
        structure_options(Ticker, {"interval": 1})
    with pytest.raises(ConfigError, match=r"PostInit options: invalid value: low must not"):
        structure_options(PostInit, {"low": 3, "high": 2})


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("batch_size", 0, "Runtime batch_size: expected an integer >= 1, got 0"),
        ("batch_size", 2.5, "Runtime batch_size: expected an integer >= 1, got 2.5"),
        ("mailbox_maxlen", -1, "Runtime mailbox_maxlen: expected an integer >= 1"),
        ("grace_period", -1, "Runtime grace_period: expected a number > 0, got -1"),
        ("retry_backoff", "x", "Runtime retry_backoff: expected a number > 0, got 'x'"),
        ("heartbeat_interval", 0, "Runtime heartbeat_interval: expected a number > 0"),
        ("namespace", "a b", "namespace name: expected 1 to 128 letters"),
    ],
)
def test_runtime_settings_are_validated(setting: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Runtime(**{setting: value})


def test_runtime_accepts_no_cap() -> None:
    assert Runtime(mailbox_maxlen=None).settings.mailbox_maxlen is None
