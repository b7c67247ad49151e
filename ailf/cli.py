"""The ``ailf`` command.

Exit codes: 0 success, 1 a run that failed (or Redis unreachable), 2 bad usage or a bad
file. Errors go to stderr as one line that says what to fix; no tracebacks for
expected failures.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence

import ailf
from ailf.errors import AilfError
from ailf.server import RedisServer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _cmd_server(args: argparse.Namespace) -> int:
    server = RedisServer(port=args.port, unix_socket=args.unix_socket, persistent=args.persistent)
    with server:
        print(server.url, flush=True)
        print("(Ctrl-C stops it)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ailf",
        description="ailf: an actor-style agent runtime on Redis and trio.",
        epilog="examples:\n  ailf server            # a throwaway Redis, prints its URL\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ailf {ailf.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    server = commands.add_parser(
        "server",
        help="run an embedded Redis server in the foreground and print its URL",
        description="Run a throwaway Redis server until Ctrl-C; prints its URL on stdout.",
        epilog="examples:\n  ailf server\n  ailf server --port 6390 --persistent\n"
        "  export AILF_REDIS_URL=$(ailf server &)  # in scripts, read the first line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    server.add_argument("--unix-socket", action="store_true", help="listen on a socket file")
    server.add_argument("--persistent", action="store_true", help="AOF with fsync always")
    server.set_defaults(handler=_cmd_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except AilfError as exc:
        print(f"ailf: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
