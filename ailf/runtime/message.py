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
from typing import Any

import attrs

from ailf.codec import decode_body, dumps, encode_body
from ailf.errors import DecodeError, MessageTooLarge

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


@attrs.frozen
class Message:
    """One message as a handler sees it.

    ``id`` is the stream entry id for mailbox messages (``"1764120000250-0"``) and a
    sender-made id for broadcasts. ``topic`` is None unless the message is a broadcast.
    ``delivery_count`` is Redis's count of deliveries (1 on the first; crashes and
    retries count). ``reply_to`` and ``correlation`` are set when the sender is waiting
    in ``ask()``; the runtime answers with the handler's return value.
    """

    id: str
    body: Any
    sender: str | None = None
    topic: str | None = None
    delivery_count: int = 1
    sent_at: float = 0.0
    headers: dict[str, str] = attrs.field(factory=dict)
    reply_to: str | None = attrs.field(default=None, repr=False)
    correlation: str | None = attrs.field(default=None, repr=False)

    @property
    def is_request(self) -> bool:
        """True when the sender waits for a reply (``ask()``)."""
        return self.reply_to is not None


@attrs.frozen
class Reply:
    """The answer to one ``ask()``: a body, or the remote exception's type name and text."""

    correlation: str
    ok: bool
    body: Any = None
    error_type: str = ""
    error_message: str = ""


@attrs.frozen
class DeadLetter:
    """A message an agent gave up on, read back from its dead-letter stream.

    ``id`` is the original mailbox entry id, ``body`` the decoded body (the raw text
    when it could not be decoded), ``envelope`` the original entry as JSON text,
    ``reason`` why it was given up, ``error_type``/``error_message`` the last handler
    exception (empty when there was none), ``failed_at`` seconds since the epoch, and
    ``dead_letter_id`` the entry's id in the dead-letter stream (to XDEL it).
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
        try:
            body = decode_envelope(envelope).body
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
) -> str:
    """The envelope JSON text for a body; :class:`MessageTooLarge` past ``max_size`` bytes."""
    data, tag = encode_body(body)
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


def _optional_str(envelope: dict, key: str) -> str | None:
    value = envelope.get(key)
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"envelope field {key!r}: expected a string, got {value!r}")
    return value


_STRING_FIELDS = ("type", "sender", "topic", "reply_to", "correlation", "id")


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
        raise DecodeError(f"unsupported envelope version {version!r} (this runtime reads v=1)")
    return envelope


def decode_envelope(
    text: Any, *, message_id: str | None = None, delivery_count: int = 1
) -> Message:
    """Decode envelope JSON text into a :class:`Message`; :class:`DecodeError` says why not.

    ``message_id`` is the stream entry id (mailboxes); broadcasts carry their own.
    This runs once per message, so the common case (every field well-typed) takes the
    shortest path; the checks that name a bad field run only when something is off.
    """
    envelope = _parse(text)
    get = envelope.get
    tag = get("type")
    sender = get("sender")
    topic = get("topic")
    reply_to = get("reply_to")
    correlation = get("correlation")
    own_id = get("id")
    headers = get("headers")
    sent_at = get("sent_at", 0.0)
    if (
        "body" not in envelope
        or (tag is not None and type(tag) is not str)
        or (sender is not None and type(sender) is not str)
        or (topic is not None and type(topic) is not str)
        or (reply_to is not None and type(reply_to) is not str)
        or (correlation is not None and type(correlation) is not str)
        or (own_id is not None and type(own_id) is not str)
        or (headers is not None and type(headers) is not dict)
        or (type(sent_at) is not float and type(sent_at) is not int)
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
    )


def _explain(envelope: dict[str, Any]) -> None:
    """Raise the :class:`DecodeError` that names what is wrong with an envelope."""
    if "body" not in envelope:
        raise DecodeError("envelope has no 'body'")
    for key in _STRING_FIELDS:
        _optional_str(envelope, key)
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise DecodeError(f"envelope field 'headers': expected an object, got {headers!r}")
    sent_at = envelope.get("sent_at", 0.0)
    raise DecodeError(f"envelope field 'sent_at': expected a number, got {sent_at!r}")


def encode_reply(correlation: str, value: Any = None, error: BaseException | None = None) -> str:
    """The reply JSON text for a handler's return value, or for the exception it raised."""
    if error is not None:
        return dumps(
            {
                "v": VERSION,
                "correlation": correlation,
                "ok": False,
                "error": {"type": type(error).__name__, "message": str(error)},
            }
        )
    data, tag = encode_body(value)
    reply: dict[str, Any] = {"v": VERSION, "correlation": correlation, "ok": True, "body": data}
    if tag is not None:
        reply["type"] = tag
    return dumps(reply)


def decode_reply(text: Any) -> Reply:
    """Decode reply JSON text; :class:`DecodeError` when it is not a v1 reply."""
    reply = _parse(text)
    correlation = reply.get("correlation")
    if not isinstance(correlation, str):
        raise DecodeError(f"reply has no string 'correlation': {correlation!r}")
    if reply.get("ok") is True:
        return Reply(
            correlation, True, decode_body(reply.get("body"), _optional_str(reply, "type"))
        )
    error = reply.get("error")
    if not isinstance(error, dict):
        raise DecodeError(f"failed reply without an 'error' object: {error!r}")
    return Reply(
        correlation,
        False,
        error_type=str(error.get("type", "Exception")),
        error_message=str(error.get("message", "")),
    )
