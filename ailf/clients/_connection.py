"""One socket to Redis: connecting (TCP, unix socket, TLS), the handshake, and plain I/O.

A :class:`Connection` is used in one of two ways. A *dedicated* connection belongs to
one task at a time, which sends a command and reads its reply itself (blocking
commands, pub/sub, clients used without ``async with``). A *shared* connection is
driven by the single writer task and single reader task of
:class:`~ailf.clients._multiplex.SharedConnection`, which many tasks use at once.

Every I/O failure is caught here, once, and becomes a
:class:`~ailf.errors.RedisConnectionError` naming the server's address (its message
built by :mod:`ailf.clients._errors`), so callers never see a bare ``OSError`` or
``trio.BrokenResourceError``.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from ailf.clients._errors import (
    cannot_connect,
    connect_timed_out,
    connection_lost,
    credentials_refused,
    not_resp,
    not_utf8,
    password_required,
    tls_failed,
    tls_unanswered,
)
from ailf.clients._resp import NOT_ENOUGH, Parser, ProtocolError, make_parser, pack_commands
from ailf.config import RedisConfig
from ailf.errors import DecodeError, RedisConnectionError, RedisTimeoutError, ResponseError

__all__ = ["RECEIVE_SIZE", "Connection", "open_connection"]

#: How much the reader asks the socket for at once: large enough that a burst of
#: pipelined replies is parsed from one chunk.
RECEIVE_SIZE = 262144

_AUTH_CODES = ("NOAUTH", "WRONGPASS", "NOPERM")
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _socket_of(stream: trio.abc.Stream) -> Any:
    """The trio socket under a plain or TLS stream."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


def _raw_fd(stream: trio.abc.Stream) -> int | None:
    """The socket's file descriptor when bytes may be read and written on it directly.

    Plain TCP and unix sockets on POSIX; None for TLS (bytes go through the SSL object)
    and on Windows (sockets are not file descriptors there).
    """
    if os.name != "posix" or not isinstance(stream, trio.SocketStream):
        return None
    return stream.socket.fileno()


def _input_poll(fd: int) -> Any:
    """A ``poll`` object watching ``fd`` for input, kept for the connection's life.

    ``select()`` refuses descriptors past 1023 (FD_SETSIZE), which a process with many
    files open reaches, and then every idle check would take a healthy connection for
    a closed one; ``poll`` has no such limit, and a registered one is also the cheapest
    check. None where there is no ``poll`` (Windows), which keeps ``select``.
    """
    if not hasattr(select, "poll"):
        return None
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return poll


class Connection:
    """A connected, authenticated socket to one Redis server, with its RESP parser.

    Not safe for concurrent use by several tasks: either one task owns it (dedicated),
    or one reader task and one writer task do (shared). :meth:`read_reply` and
    :meth:`send` raise :class:`RedisConnectionError` when the socket breaks; after any
    exception, including cancellation, mid-command, the connection must be closed,
    because its position in the reply stream is no longer known.
    """

    __slots__ = (
        "_fd",
        "_parser",
        "_poll",
        "_socket_fd",
        "_stream",
        "address",
        "closed",
        "socket_timeout",
    )

    def __init__(
        self, stream: trio.abc.Stream, parser: Parser, address: str, socket_timeout: float | None
    ) -> None:
        self._stream = stream
        self._parser = parser
        self.address = address
        self.socket_timeout = socket_timeout
        self.closed = False
        self._fd = _raw_fd(stream)
        self._socket_fd = _socket_of(stream).fileno()
        self._poll = _input_poll(self._socket_fd)

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    @property
    def parser(self) -> Parser:
        return self._parser

    async def send(self, data: bytes) -> None:
        """Write bytes; may have sent some, all or none of them if it raises."""
        fd = self._fd
        try:
            if fd is None:
                await self._stream.send_all(data)
                return
            view = memoryview(data)
            while view:
                if self.closed:
                    raise trio.ClosedResourceError("the connection was closed")
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
        except _IO_ERRORS as exc:
            self.closed = True
            raise connection_lost(self.address, exc) from exc

    def has_pending_input(self) -> bool:
        """True when the server closed (or wrote garbage on) a connection that is idle.

        An idle connection receives nothing in RESP2, so readable bytes mean the server
        closed it or misbehaved: it must not be used, and a command not yet written on
        it can safely go to a fresh connection instead. One non-blocking ``select``; on
        TLS, where the server may legitimately send records (session tickets) at any
        time, only an end-of-file counts.
        """
        if self.closed:
            return True
        fd = self._socket_fd
        try:
            poll = self._poll
            readable = poll.poll(0) if poll is not None else select.select([fd], [], [], 0)[0]
            if not readable:
                return False
            if self._fd is not None:
                return True
            peek = socket.socket(fileno=fd)
            try:
                return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            finally:
                peek.detach()
        except (OSError, ValueError):
            return True

    def send_now(self, data: bytes) -> int:
        """Write what the socket takes without waiting; how many bytes that was.

        Synchronous, so it cannot be interrupted half-way. Returns 0 for TLS streams and
        on any error: the caller then hands the bytes to :meth:`send`, which reports it.
        """
        if self._fd is None or self.closed:
            return 0
        try:
            return os.write(self._fd, data)
        except OSError:
            return 0

    async def receive_into_parser(self, idle: bool = False) -> None:
        """Read one chunk from the socket into the parser; EOF is a lost connection.

        On plain sockets this reads the file descriptor directly and parks only when
        nothing is there: one wake-up per chunk instead of trio's two (the stream's
        ``receive_some`` always adds a schedule point). It still yields once per chunk.
        ``idle`` says no reply is expected yet, so it parks before trying to read.
        """
        fd = self._fd
        try:
            if fd is None:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                waited = True
            else:
                waited = False
                read_first = not idle
                while True:
                    if self.closed:
                        raise trio.ClosedResourceError("the connection was closed")
                    if read_first:
                        try:
                            data = os.read(fd, RECEIVE_SIZE)
                            break
                        except BlockingIOError:
                            pass
                    read_first = waited = True
                    await trio.lowlevel.wait_readable(fd)
        except _IO_ERRORS as exc:
            self.closed = True
            raise connection_lost(self.address, exc) from exc
        if not data:
            self.closed = True
            raise connection_lost(self.address)
        self._parser.feed(bytes(data))
        if not waited:
            await trio.lowlevel.checkpoint()

    def next_reply(self) -> Any:
        """The next complete reply already received, or ``NOT_ENOUGH``.

        Error replies are returned as :class:`ResponseError` instances; a reply that is
        not valid UTF-8 under ``decode_responses`` is returned as a :class:`DecodeError`
        instance (the stream stays usable); garbage on the wire closes the connection.
        """
        try:
            return self._parser.gets()
        except UnicodeDecodeError as exc:
            return self.decode_error(exc)
        except ProtocolError as exc:
            raise self.protocol_error(exc) from exc

    def decode_error(self, exc: UnicodeDecodeError) -> DecodeError:
        """What a reply that is not UTF-8 becomes (the parser has consumed it)."""
        return not_utf8(self.address, exc)

    def protocol_error(self, exc: ProtocolError) -> RedisConnectionError:
        """What garbage on the wire becomes; the connection is done for."""
        self.closed = True
        return not_resp(self.address, exc)

    async def read_reply(self, reply_timeout: float | None = None) -> Any:
        """Wait for the next reply (an error reply is returned, not raised).

        ``reply_timeout`` (default: ``socket_timeout``) bounds the wait; past it,
        :class:`RedisTimeoutError` is raised and the connection must be discarded.
        """
        reply = self.next_reply()
        if reply is not NOT_ENOUGH:
            return reply
        limit = self.socket_timeout if reply_timeout is None else reply_timeout
        with trio.move_on_after(limit if limit is not None else float("inf")) as scope:
            while True:
                await self.receive_into_parser()
                reply = self.next_reply()
                if reply is not NOT_ENOUGH:
                    return reply
        assert scope.cancelled_caught
        raise RedisTimeoutError(f"Redis at {self.address} did not answer within {limit} s")

    async def request(
        self, commands: Sequence[tuple[Any, ...]], reply_timeout: float | None = None
    ) -> list[Any]:
        """Send commands in one write and return their replies in order (errors returned)."""
        await self.send(pack_commands(commands))
        return [await self.read_reply(reply_timeout) for _ in commands]

    async def aclose(self) -> None:
        """Close the socket at once (no goodbye to the server); safe to call twice.

        ``closed`` is set first, and the direct I/O paths check it before every system
        call, so a task woken after the close never touches a descriptor number that
        the OS may already have given to another file.
        """
        self.closed = True
        await trio.aclose_forcefully(self._stream)


async def open_connection(config: RedisConfig) -> Connection:
    """Connect to ``config``'s server, do TLS and the handshake (AUTH, SELECT, SETNAME).

    ``config`` must be resolved already (no ``embedded``). Raises
    :class:`RedisConnectionError` naming the address when the server cannot be reached
    or the TLS handshake fails, and :class:`AuthenticationError` when it refuses the
    credentials. Cancellation closes whatever was opened.
    """
    address = config.address
    stream = await _open_stream(config)
    encoding = "utf-8" if config.decode_responses else None
    connection = Connection(stream, make_parser(encoding), address, config.socket_timeout)
    try:
        await _handshake(connection, config)
    except BaseException:
        await connection.aclose()
        raise
    return connection


async def _open_stream(config: RedisConfig) -> trio.abc.Stream:
    address = config.address
    timeout = config.socket_connect_timeout
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(timeout):
            if config.unix_socket_path:
                stream = await trio.open_unix_socket(config.unix_socket_path)
            else:
                tcp = await trio.open_tcp_stream(config.host, config.port)
                if config.socket_keepalive:
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                stream = tcp
            context = config.ssl_context()
            if context is not None:
                stream = trio.SSLStream(stream, context, server_hostname=config.host)
                await stream.do_handshake()
            return stream
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(stream, trio.SSLStream):  # connected: the TLS handshake is what hung
            raise tls_unanswered(address, timeout) from None
        raise connect_timed_out(address, timeout) from None
    except _IO_ERRORS as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        if isinstance(cause, ssl.SSLError):
            raise tls_failed(address, cause) from exc
        raise cannot_connect(address, exc) from exc
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise


async def _handshake(connection: Connection, config: RedisConfig) -> None:
    commands: list[tuple[Any, ...]] = []
    if config.password is not None:
        if config.username:
            commands.append(("AUTH", config.username, config.password))
        else:
            commands.append(("AUTH", config.password))
    if config.db:
        commands.append(("SELECT", config.db))
    if config.client_name:
        commands.append(("CLIENT", "SETNAME", config.client_name))
    # PING, in the same write: find out now, not at the first command, whether the
    # server wants credentials (NOAUTH) or is still loading its data (LOADING).
    commands.append(("PING",))
    replies = await connection.request(commands, config.socket_connect_timeout)
    for command, reply in zip(commands, replies, strict=True):
        if not isinstance(reply, ResponseError):
            continue
        if reply.code == "NOAUTH":
            raise password_required(connection.address)
        if reply.code == "LOADING":  # restarted, reading its AOF/RDB: not up yet, retry
            raise RedisConnectionError(
                f"Redis at {connection.address} is still loading its dataset: {reply}"
            )
        if command[0] == "AUTH" or reply.code in _AUTH_CODES:
            user = config.username or "default"
            raise credentials_refused(connection.address, reply, user=user)
        raise ResponseError(
            f"{reply} (during {' '.join(map(str, command[:2]))} on connect to {config.address})"
        )
