"""Messages, and the versioned JSON envelope they travel in (docs/wire-format.md).

A mailbox entry is a stream entry with one field, ``envelope``, holding a JSON object::

    {"v": 1, "body": {...}, "type": "app.msgs:Order", "sender": "shop",
     "sent_at": 1764120000.25, "reply_to": "ailf:demo:reply:host:42:9f3a",
     "correlation": "17", "headers": {"trace": "abc"}}

Only ``v`` and ``body`` are required, so that any language can send with one XADD.
Broadcasts carry the same object over pub/sub, with ``id`` and ``topic`` added; replies
to ``ask()`` carry ``{"v": 1, "correlation": ..., "ok": true, "body": ..., "type": ...}``
or ``{"v": 1, "correlation": ..., "ok": false, "error": {"type": ..., "message": ...}}``.
Decoding is one ``json.loads`` per entry; everything that does not fit raises
:class:`DecodeError` with the reason, which the mailbox turns into a dead letter.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Generic, TypeVar

import attrs

from ailf.codec import decode_body, dumps, encode_body
from ailf.errors import ConfigError, DecodeError, MessageTooLarge

__all__ = [
    "ENVELOPE_FIELD",
    "VERSION",
    "DeadLetter",
    "Message",
    "Reply",
    "decode_envelope",
    "decode_reply",
    "encode_envelope",
    "encode_reply",
    "too_large",
]

#: The envelope format version this runtime writes and reads.
VERSION = 1
#: The stream entry field holding the envelope.
ENVELOPE_FIELD = "envelope"

_raw_decode = json.JSONDecoder().raw_decode


BodyT = TypeVar("BodyT")


@attrs.frozen
class Message(Generic[BodyT]):
    """One message as a handler sees it.

    ``id`` is the stream entry id for mailbox messages (``"1764120000250-0"``) and a
    sender-made id for broadcasts. ``topic`` is None unless the message is a broadcast.
    ``delivery_count`` is Redis's count of deliveries (1 on the first; crashes and
    retries count). ``reply_to`` and ``correlation`` are set when the sender is waiting
    in ``ask()``; the runtime answers with the handler's return value.

    ``Message[Order]`` in a handler's annotation says what the body is, for type
    checkers and for the runtime: spawning the agent registers ``Order`` (an attrs
    class) as a message type, so that bodies tagged as one arrive as one.
    """

    id: str
    body: BodyT
    sender: str | None = None
    topic: str | None = None
    delivery_count: int = 1
    sent_at: float = 0.0
    headers: dict[str, str] = attrs.field(factory=dict)
    reply_to: str | None = attrs.field(default=None, repr=False)
    correlation: str | None = attrs.field(default=None, repr=False)
    #: The entity a message to a keyed agent is for (``"user-42"``); None otherwise.
    key: str | None = None
    #: The name of the reminder that sent this message (``set_reminder``); None for
    #: every other message.
    reminder: str | None = None

    @property
    def is_request(self) -> bool:
        """True when the sender waits for a reply (``ask()``)."""
        return self.reply_to is not None


@attrs.frozen
class Reply:
    """The answer to one ``ask()``: a body, or the remote exception's type name and text,
    and the name of the agent that answered (checked by the asker)."""

    correlation: str
    ok: bool
    body: Any = None
    error_type: str = ""
    error_message: str = ""
    agent: str | None = None


@attrs.frozen
class DeadLetter:
    """A message an agent gave up on, read back from its dead-letter stream.

    ``id`` is the original mailbox entry id, ``body`` the decoded body (the raw text
    when it could not be decoded), ``envelope`` the original entry as JSON text,
    ``reason`` why it was given up, ``error_type``/``error_message`` the last handler
    exception (empty when there was none), ``failed_at`` seconds since the epoch, and
    ``dead_letter_id`` the entry's id in the dead-letter stream (to XDEL it), and
    ``key`` the key a keyed agent's message was for (None otherwise).
    """

    id: str
    body: Any
    reason: str
    error_type: str
    error_message: str
    delivery_count: int
    envelope: str
    failed_at: float
    dead_letter_id: str = ""
    key: str | None = None

    @classmethod
    def from_entry(cls, dead_letter_id: str, fields: dict[str, Any]) -> DeadLetter:
        """Read one entry of a dead-letter stream, whatever its fields hold.

        Anyone allowed to write to the namespace can add entries there, so nothing in
        one is trusted: a missing or malformed field reads as empty (a time or count
        that is not a finite number as 0) instead of raising, which would hide every
        other dead letter of the agent from ``dead_letters()`` and ``ailf dlq``.
        """

        def text(key: str) -> str:
            value = fields.get(key)
            return value if isinstance(value, str) else ""

        def number(key: str) -> float:
            try:
                value = float(text(key))
            except ValueError:
                return 0.0
            return value if math.isfinite(value) else 0.0

        envelope = text(ENVELOPE_FIELD)
        key = None
        try:
            message = decode_envelope(envelope)
            body, key = message.body, message.key
        except DecodeError:
            body = envelope
        return cls(
            id=text("id"),
            body=body,
            reason=text("reason"),
            error_type=text("error_type"),
            error_message=text("error_message"),
            delivery_count=int(number("delivery_count")),
            envelope=envelope,
            failed_at=number("failed_at"),
            dead_letter_id=dead_letter_id,
            key=key,
        )


def encode_envelope(
    body: Any,
    *,
    sender: str | None = None,
    reply_to: str | None = None,
    correlation: str | None = None,
    headers: dict[str, str] | None = None,
    topic: str | None = None,
    message_id: str | None = None,
    max_size: int | None = None,
    key: str | None = None,
    reminder: str | None = None,
) -> str:
    """The envelope JSON text for a body; :class:`MessageTooLarge` past ``max_size`` bytes."""
    data, tag = encode_body(body)
    if headers is not None and not (
        isinstance(headers, dict)
        and all(type(k) is str and type(v) is str for k, v in headers.items())
    ):
        raise ConfigError(
            f"headers: expected a dict of strings to strings, got {_preview(headers)}"
        )
    envelope: dict[str, Any] = {"v": VERSION, "body": data, "sent_at": time.time()}
    if tag is not None:
        envelope["type"] = tag
    if sender is not None:
        envelope["sender"] = sender
    if reply_to is not None:
        envelope["reply_to"] = reply_to
        envelope["correlation"] = correlation
    if headers:
        envelope["headers"] = headers
    if key is not None:
        envelope["key"] = key
    if reminder is not None:
        envelope["reminder"] = reminder
    if topic is not None:
        envelope["topic"] = topic
        envelope["id"] = message_id
    text = dumps(envelope)
    if max_size is not None and too_large(text, max_size):
        raise MessageTooLarge(
            f"message of {len(text.encode())} bytes exceeds max_message_size={max_size}"
        )
    return text


def too_large(text: str, max_size: int) -> bool:
    """True if ``text`` is over ``max_size`` bytes in UTF-8 (encoding it only when the
    character count cannot tell: a character takes one to four bytes)."""
    n = len(text)
    return n > max_size or (4 * n > max_size and len(text.encode()) > max_size)


def _preview(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote what came off
    the wire, which may be megabytes."""
    try:
        text = repr(value)
    except Exception:  # nested deeper than repr() goes, say
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _optional_str(envelope: dict[str, Any], key: str) -> str | None:
    value = envelope.get(key)
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"envelope field {key!r}: expected a string, got {_preview(value)}")
    return value


_STRING_FIELDS = (
    "type",
    "sender",
    "topic",
    "reply_to",
    "correlation",
    "id",
    "key",
    "reminder",
)


def _parse(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise DecodeError(f"no {ENVELOPE_FIELD!r} field holding JSON text")
    try:
        envelope, end = _raw_decode(text)
        if end != len(text) and text[end:].strip():
            raise ValueError(f"extra data at character {end}")
    except (ValueError, RecursionError):  # RecursionError: nested too deep for json
        try:  # the slower full parse also allows leading whitespace
            envelope = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"envelope is not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(envelope, dict):
        raise DecodeError(f"envelope is not a JSON object: {text[:80]!r}")
    version = envelope.get("v")
    if version != VERSION or isinstance(version, bool):
        raise DecodeError(
            f"unsupported envelope version {_preview(version)} (this runtime reads v=1)"
        )
    return envelope


def decode_envelope(
    text: Any, *, message_id: str | None = None, delivery_count: int = 1
) -> Message[Any]:
    """Decode envelope JSON text into a :class:`Message`; :class:`DecodeError` says why not.

    ``message_id`` is the stream entry id (mailboxes); broadcasts carry their own.
    Whatever ``text`` holds, this returns a Message or raises DecodeError — nothing
    else — since the text comes from anyone who may write to a mailbox or a channel.
    This runs once per message, so the common case (every field well-typed) takes the
    shortest path; the checks that name a bad field run only when something is off.
    """
    try:
        envelope = _parse(text)
        get = envelope.get
        tag = get("type")
        sender = get("sender")
        topic = get("topic")
        reply_to = get("reply_to")
        correlation = get("correlation")
        own_id = get("id")
        key = get("key")
        reminder = get("reminder")
        headers = get("headers")
        sent_at = get("sent_at", 0.0)
        if (
            "body" not in envelope
            or (tag is not None and type(tag) is not str)
            or (sender is not None and type(sender) is not str)
            or (topic is not None and type(topic) is not str)
            or (correlation is not None and type(correlation) is not str)
            or (reply_to is not None and (type(reply_to) is not str or correlation is None))
            or (own_id is not None and type(own_id) is not str)
            or (key is not None and type(key) is not str)
            or (reminder is not None and type(reminder) is not str)
            or (headers is not None and not _is_headers(headers))
            or not ((type(sent_at) is float or type(sent_at) is int) and -1e15 < sent_at < 1e15)
        ):
            _explain(envelope)
        return Message(
            id=(own_id or "") if message_id is None else message_id,
            body=decode_body(envelope["body"], tag),
            sender=sender,
            topic=topic,
            delivery_count=delivery_count,
            sent_at=float(sent_at),
            headers=headers if headers is not None else {},
            reply_to=reply_to,
            correlation=correlation,
            key=key,
            reminder=reminder,
        )
    except DecodeError:
        raise
    except Exception as exc:  # a safety net: no input may raise anything else
        raise DecodeError(f"undecodable envelope ({type(exc).__name__}: {exc})") from None


def _is_headers(headers: Any) -> bool:
    return type(headers) is dict and all(type(value) is str for value in headers.values())


def _explain(envelope: dict[str, Any]) -> None:
    """Raise the :class:`DecodeError` that names what is wrong with an envelope."""
    if "body" not in envelope:
        raise DecodeError("envelope has no 'body'")
    for key in _STRING_FIELDS:
        _optional_str(envelope, key)
    if envelope.get("reply_to") is not None and envelope.get("correlation") is None:
        raise DecodeError("envelope has a 'reply_to' but no 'correlation' to answer with")
    headers = envelope.get("headers")
    if headers is not None and not _is_headers(headers):
        raise DecodeError(
            f"envelope field 'headers': expected an object of strings, got {_preview(headers)}"
        )
    sent_at = envelope.get("sent_at", 0.0)
    raise DecodeError(
        f"envelope field 'sent_at': expected seconds since the epoch, got {_preview(sent_at)}"
    )


#: How much of an exception's text a reply or a dead letter carries.
ERROR_TEXT_LIMIT = 4096


#: A dead letter keeps an envelope over ``max_message_size`` only up to this many
#: characters (a 50 MB entry must not be copied whole into the dead letters).
DEAD_ENVELOPE_PREFIX = 65_536


def wire_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters and made valid UTF-8 (a lone surrogate
    becomes a ``\\udxxx`` escape), so that writing it to Redis cannot fail."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters in all)"
    return text.encode("utf-8", "backslashreplace").decode()


def error_text(error: BaseException, limit: int = ERROR_TEXT_LIMIT) -> str:
    """An exception's text for the wire (see :func:`wire_text`)."""
    try:
        text = str(error)
    except Exception as exc:  # an exception whose __str__ raises
        text = f"<str() of the exception raised {type(exc).__name__}>"
    return wire_text(text, limit)


def kept_envelope(text: str, max_size: int) -> dict[str, str]:
    """The dead-letter fields that keep an entry's envelope text.

    An envelope within ``max_size`` is kept whole, so that it can be sent again as it
    was. A bigger one (dead-lettered for its size, or an entry of many large fields)
    keeps its first :data:`DEAD_ENVELOPE_PREFIX` characters, and ``envelope_length``
    says how long it was.
    """
    if not too_large(text, max_size):
        return {"envelope": text}
    return {
        "envelope": wire_text(text[:DEAD_ENVELOPE_PREFIX], DEAD_ENVELOPE_PREFIX),
        "envelope_length": str(len(text)),
    }


def encode_reply(
    correlation: str,
    value: Any = None,
    error: BaseException | None = None,
    *,
    agent: str | None = None,
) -> str:
    """The reply JSON text for a handler's return value, or for the exception it raised.

    ``agent`` names the answering agent: the asker drops a reply from any other.
    """
    reply: dict[str, Any] = {"v": VERSION, "correlation": correlation}
    if agent is not None:
        reply["agent"] = agent
    if error is not None:
        reply["ok"] = False
        reply["error"] = {"type": type(error).__name__, "message": error_text(error)}
        return dumps(reply)
    data, tag = encode_body(value)
    reply["ok"] = True
    reply["body"] = data
    if tag is not None:
        reply["type"] = tag
    return dumps(reply)


def decode_reply(text: Any) -> Reply:
    """Decode reply JSON text; :class:`DecodeError` (and nothing else) when it is not a
    v1 reply."""
    try:
        reply = _parse(text)
        correlation = reply.get("correlation")
        if not isinstance(correlation, str):
            raise DecodeError(f"reply has no string 'correlation': {_preview(correlation)}")
        agent = reply.get("agent")
        if agent is not None and not isinstance(agent, str):
            raise DecodeError(f"reply field 'agent': expected a string, got {_preview(agent)}")
        if reply.get("ok") is True:
            body = decode_body(reply.get("body"), _optional_str(reply, "type"))
            return Reply(correlation, True, body, agent=agent)
        error = reply.get("error")
        if not isinstance(error, dict):
            raise DecodeError(f"failed reply without an 'error' object: {_preview(error)}")
        return Reply(
            correlation,
            False,
            error_type=str(error.get("type", "Exception")),
            error_message=str(error.get("message", "")),
            agent=agent,
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"undecodable reply ({type(exc).__name__}: {exc})") from None
