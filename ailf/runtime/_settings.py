"""How mailboxes are read, bounded and retried: the ``Runtime`` settings the mailbox layer uses.

Validated on construction, so a bad value fails where it was written (``Runtime(...)``)
with a :class:`~ailf.errors.ConfigError` naming it, not later inside a reader loop. The
backoffs the mailbox layer waits by are :class:`~ailf.config.RetryPolicy` values made
here from the settings, so that every pause in the runtime has one formula.
"""

from __future__ import annotations

from typing import Any

import attrs

from ailf.config import RetryPolicy
from ailf.errors import ConfigError

__all__ = ["MAX_BACKOFF_STEP", "MailboxSettings", "check_setting"]

#: RetryPolicy.delay(n) computes 2**n as a float, which overflows past n = 1023; a loop
#: that retries without end passes it at most this ``n``, by which the delay has long
#: reached its cap.
MAX_BACKOFF_STEP = 30


def check_setting(name: str, value: Any, *, integer: bool = False) -> None:
    """Reject a Runtime setting that is not a positive number (integer if asked)."""
    allowed = (int,) if integer else (int, float)
    # ``not value > 0`` rather than ``value <= 0``: NaN fails every comparison.
    if isinstance(value, bool) or not isinstance(value, allowed) or not value > 0:
        expected = "an integer >= 1" if integer else "a number > 0"
        raise ConfigError(f"Runtime {name}: expected {expected}, got {value!r}")


def _count(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_setting(attribute.name, value, integer=True)


def _seconds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_setting(attribute.name, value)


def _optional_count(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_setting(attribute.name, value, integer=True)


@attrs.frozen
class MailboxSettings:
    """How mailboxes are read and bounded (``Runtime`` keyword arguments of the same names)."""

    batch_size: int = attrs.field(default=128, validator=_count)
    mailbox_maxlen: int | None = attrs.field(default=100_000, validator=_optional_count)
    dead_letter_maxlen: int = attrs.field(default=10_000, validator=_count)
    max_message_size: int = attrs.field(default=1 << 20, validator=_count)
    retry_backoff: float = attrs.field(default=0.1, validator=_seconds)
    retry_backoff_max: float = attrs.field(default=5.0, validator=_seconds)
    max_block: float = attrs.field(default=2.0, validator=_seconds)
    stale_consumer_after: float = attrs.field(default=60.0, validator=_seconds)

    @property
    def redelivery(self) -> RetryPolicy:
        """The pause before redelivering a message whose handler raised, by delivery:
        ``retry_backoff`` doubling per delivery up to ``retry_backoff_max``. No jitter: a
        retry is one entry's, not a crowd's reconnecting at once."""
        return RetryPolicy(
            backoff_initial=self.retry_backoff, backoff_max=self.retry_backoff_max, jitter=False
        )

    @property
    def read_retry(self) -> RetryPolicy:
        """The pause before a reader reads again after a failed read: 50 ms doubling up to
        ``max_block``, the longest a reader ever waits anyway."""
        return RetryPolicy(backoff_initial=0.05, backoff_max=self.max_block, jitter=False)
