"""The ``ailf`` command.

Exit codes: 0 success, 1 a run that failed (or Redis unreachable or refusing), 2 bad
usage (an argument, a name, a body that cannot be sent) or a bad file, 130 a run
interrupted by a signal. Errors go to stderr as one line that says what to fix, warnings
as lines starting ``ailf: warning:``; no tracebacks for expected failures.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ailf
from ailf._cluster_server import RedisClusterServer
from ailf._text import count_of
from ailf.config import RedisConfig
from ailf.errors import (
    AilfError,
    ConfigError,
    DecodeError,
    MessageTooLarge,
    ResponseError,
    ScenarioError,
)
from ailf.runtime._timers import parse_duration
from ailf.server import RedisServer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
N = TypeVar("N", int, float)
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


class UsageError(Exception):
    """A bad argument the parser could not catch (a JSON body, say): exit code 2."""


def _redis_config(args: argparse.Namespace) -> RedisConfig:
    """``--redis URL``, else ``AILF_REDIS_URL`` / ``REDIS_URL``, else localhost:6379."""
    if args.redis:
        return RedisConfig.from_url(args.redis)
    return RedisConfig.from_env()


def _json_argument(text: str) -> Any:
    """A message body from the command line: JSON text, or ``-`` for stdin."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"the body is not JSON ({exc.msg} at column {exc.colno}): {text[:200]!r};"
            """ quote it for the shell, e.g. '{"n": 1}'"""
        ) from None
    except RecursionError:
        raise UsageError("the body is nested too deeply to be read as JSON") from None


def _body_errors_are_usage_errors(send: Callable[[], Any]) -> Any:
    """Run ``send``; a body the wire cannot carry (not encodable as JSON text, nested too
    deeply, over the size limit) is the command line's fault: exit code 2, one line."""
    try:
        return send()
    except (DecodeError, MessageTooLarge) as exc:
        raise UsageError(f"the body cannot be sent: {exc}") from None


def _warn(text: str) -> None:
    print(f"ailf: warning: {text}", file=sys.stderr, flush=True)


def _number(kind: Callable[[str], N], text: str) -> N:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _positive_int(text: str) -> int:
    """An argparse type: a count of 1 or more, so ``--count 0`` is a usage error, not a no-op."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _count(text: str) -> int:
    """An argparse type: a count of 0 or more."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a duration of 0 or more seconds."""
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text}")
    return value


def _duration(text: str) -> float:
    """An argparse type: a duration, ``30``, ``30s``, ``5m``, ``1h30m``."""
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("duration: ")) from None


def _instant(text: str) -> float:
    """An argparse type: an ISO 8601 time with its offset, or epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time with its offset (2026-12-24T09:00:00+01:00,"
            f" ...Z) or epoch seconds, got {text!r}"
        )
    return when.timestamp()


def _port(text: str, lowest: int = 1) -> int:
    """An argparse type: a TCP port number."""
    value = _number(int, text)
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number from {lowest} to 65535, got {text}"
        )
    return value


def _log_level() -> str:
    """``AILF_LOG_LEVEL``, checked here so that a typo is one line, not a traceback."""
    level = os.environ.get("AILF_LOG_LEVEL", "ERROR").upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UsageError(
            f"AILF_LOG_LEVEL={level!r} is not a log level; use DEBUG, INFO, WARNING or ERROR"
        )
    return level


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _cmd_check(args: argparse.Namespace) -> int:
    from ailf.scenario._load import load_scenario

    try:
        scenario = load_scenario(args.file)
    except ScenarioError as exc:
        if args.json:  # the problems on stdout as well, where a script reads them
            _print_json({"file": args.file, "ok": False, "problems": list(exc.problems)})
        raise
    if args.json:
        _print_json({"file": args.file, "ok": True, "name": scenario.name})
        return EXIT_OK
    replicas = sum(agent.replicas for agent in scenario.agents)
    print(
        f"{args.file}: ok — scenario {scenario.name!r}: {count_of(len(scenario.agents), 'agent')}"
        f" ({count_of(replicas, 'replica')} in {count_of(scenario.process_count, 'process')}),"
        f" {count_of(sum(m.count for m in scenario.messages), 'message')},"
        f" until {scenario.scenario.until!r}"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from ailf.scenario._load import load_scenario
    from ailf.scenario._runner import run_scenario

    scenario = load_scenario(args.file)
    unknown = sorted(set(args.only or ()) - {agent.name for agent in scenario.agents})
    if unknown:
        known = ", ".join(agent.name for agent in scenario.agents)
        raise UsageError(
            f"--only: no agent named {', '.join(unknown)} in {args.file}; agents: {known}"
        )
    report = run_scenario(
        scenario,
        redis_url=args.redis,
        only=tuple(args.only or ()),
        json_output=args.json,
        metrics_port=args.metrics_port,
    )
    if args.json:
        _print_json(report.to_json())
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_worker(args: argparse.Namespace) -> int:
    from ailf.scenario._worker import run_worker

    return run_worker(
        args.file,
        process=args.process,
        events_fd=args.events_fd,
        only=tuple(args.only or ()),
        metrics_port=args.metrics_port,
    )


def _cmd_send(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    body = _json_argument(args.body)
    config = _redis_config(args)
    if args.ask and (args.delay is not None or args.at is not None):
        raise UsageError("--ask waits for a reply now: it takes no --delay or --at")
    if args.ask:
        reply = _body_errors_are_usage_errors(
            lambda: admin.ask(
                config,
                args.namespace,
                args.agent,
                body,
                timeout=args.timeout,
                warn=_warn,
                key=args.key,
            )
        )
        _print_json(reply)
        return EXIT_OK
    ids = _body_errors_are_usage_errors(
        lambda: admin.send(
            config,
            args.namespace,
            args.agent,
            body,
            count=args.count,
            warn=_warn,
            key=args.key,
            delay=args.delay,
            at=args.at,
        )
    )
    if args.json:
        _print_json({"agent": args.agent, "ids": ids})
    else:
        for message_id in ids:
            print(message_id)
    return EXIT_OK


def _cmd_publish(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    body = _json_argument(args.body)
    config = _redis_config(args)
    received = _body_errors_are_usage_errors(
        lambda: admin.publish(config, args.namespace, args.topic, body)
    )
    if args.json:
        _print_json({"topic": args.topic, "namespace": args.namespace, "received": received})
    elif received:
        print(f"received by {count_of(received, 'process')} subscribed to {args.topic!r}")
    else:
        print(
            f"nobody heard it: no process in namespace {args.namespace!r} is subscribed to"
            f" {args.topic!r} right now (broadcasts are not stored)"
        )
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    if args.key is not None:
        if args.namespace is None or args.agent is None:
            raise UsageError("status --key: also give -n NAMESPACE and --agent AGENT")
        report = admin.key_status(_redis_config(args), args.namespace, args.agent, args.key)
        if args.json:
            _print_json(report)
        else:
            print(admin.format_key_status(report))
        return EXIT_OK
    status = admin.status(_redis_config(args), args.namespace)
    if args.json:
        _print_json(status)
    else:
        print(admin.format_status(status))
    return EXIT_OK


def _needs(extra: str, command: str, module: str) -> None:
    """A UsageError naming the extra to install when ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{command} needs {module}: pip install 'ailf[{extra}]'") from None


def _cmd_top(args: argparse.Namespace) -> int:
    _needs("top", "ailf top", "rich")
    import trio

    from ailf._top import top

    config = _redis_config(args)
    try:
        trio.run(
            functools.partial(
                top, config, args.namespace, interval=args.interval, iterations=args.iterations
            )
        )
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one quits a live view: not an interrupted run
    except BaseExceptionGroup as group:
        from ailf.runtime._supervisor import unwrap

        error = unwrap(group)
        if not isinstance(error, KeyboardInterrupt):
            raise error from None
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from ailf._dashboard import Dashboard

    token = args.token or os.environ.get("AILF_DASHBOARD_TOKEN") or None
    try:
        dashboard = Dashboard(
            _redis_config(args), args.namespace, host=args.host, port=args.port, token=token
        )
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    print(f"ailf dashboard of namespace {args.namespace!r}: {dashboard.url}", flush=True)
    dashboard.serve_forever()
    return EXIT_OK


def _cmd_dlq(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    config = _redis_config(args)
    if args.action == "list":
        letters = admin.dead_letters(
            config, args.namespace, args.agent, count=args.count, key=args.key
        )
        if args.json:
            _print_json([admin.dead_letter_json(letter) for letter in letters])
        else:
            print(admin.format_dead_letters(args.agent, letters))
    elif args.action == "show":
        if not args.ids:
            raise UsageError("dlq show: give the id of a dead letter (see ailf dlq list AGENT)")
        letters = admin.dead_letters(config, args.namespace, args.agent, ids=args.ids)
        if not letters:
            print(
                f"ailf: error: {args.agent!r} has no dead letter with id {' or '.join(args.ids)}"
                f" in namespace {args.namespace!r}; see ailf dlq list {args.agent}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        _print_json([admin.dead_letter_json(letter) for letter in letters])
    elif args.action == "redrive":
        moved = admin.redrive(config, args.namespace, args.agent, ids=args.ids)
        print(f"{count_of(len(moved), 'dead letter')} of {args.agent!r} sent back to its mailbox")
    else:
        removed = admin.purge(config, args.namespace, args.agent, ids=args.ids)
        print(f"{count_of(removed, 'dead letter')} of {args.agent!r} deleted")
    return EXIT_OK


def _cmd_state(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    saved = admin.state(_redis_config(args), args.namespace, args.agent, args.key)
    if saved is None:
        which = f" for key {args.key!r}" if args.key is not None else ""
        print(
            f"ailf: {args.agent!r} has saved no state{which} in namespace {args.namespace!r}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    _print_json(saved)
    return EXIT_OK


def _cmd_reminders(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    config = _redis_config(args)
    if args.cancel is not None:
        cancelled = admin.cancel_reminder(config, args.namespace, args.agent, args.cancel, args.key)
        if args.json:
            _print_json({"agent": args.agent, "reminder": args.cancel, "cancelled": cancelled})
        elif cancelled:
            print(f"cancelled reminder {args.cancel!r} of {args.agent}")
        else:
            print(f"ailf: {args.agent} has no reminder {args.cancel!r}", file=sys.stderr)
        return EXIT_OK if cancelled else EXIT_FAILED
    found = admin.reminders(config, args.namespace, args.agent, args.key)
    if args.json:
        _print_json(
            [
                {
                    "name": r.name,
                    "key": r.key,
                    "due": r.due.isoformat(),
                    "every": r.every,
                    "cron": r.cron,
                    "timezone": r.timezone,
                    "body": r.body,
                }
                for r in found
            ]
        )
    else:
        print(admin.format_reminders(args.agent, found))
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    cancelled = admin.cancel_scheduled(_redis_config(args), args.namespace, args.id)
    if args.json:
        _print_json({"id": args.id, "cancelled": cancelled})
    elif cancelled:
        print(f"cancelled {args.id}")
    else:
        print(f"ailf: {args.id} had entered its mailbox already, or was cancelled", file=sys.stderr)
    return EXIT_OK if cancelled else EXIT_FAILED


def _cmd_reset(args: argparse.Namespace) -> int:
    from ailf import _admin as admin

    config = _redis_config(args)
    found = admin.contents(config, args.namespace)
    what = f"namespace {args.namespace!r} on {config.url}"
    if found.live_processes:
        print(
            f"ailf: error: {what} has {count_of(found.live_processes, 'live process')}"
            f" (see ailf status -n {args.namespace}); stop them first: reset would delete"
            " their mailboxes under them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if not found.keys:
        print(f"{what} is empty already")
        return EXIT_OK
    if not args.yes:
        print(f"delete {found.describe()} of {what}? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("ailf: nothing deleted", file=sys.stderr)
            return EXIT_FAILED
    deleted = admin.reset(config, found)
    print(f"deleted {count_of(deleted, 'key')} of {what}")
    return EXIT_OK


def _cmd_server(args: argparse.Namespace) -> int:
    # SIGTERM is handled like Ctrl-C from before the server starts, so that a stop
    # arriving at any moment still goes through close() and leaves no server behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server: RedisServer | RedisClusterServer
    if args.cluster is not None:
        if args.port is not None or args.unix_socket or args.persistent:
            raise UsageError("--cluster picks its own ports, and keeps nothing on disk")
        server = RedisClusterServer(primaries=args.cluster, replicas=args.replicas)
    elif args.replicas:
        raise UsageError("--replicas goes with --cluster N")
    else:
        server = RedisServer(
            port=args.port, unix_socket=args.unix_socket, persistent=args.persistent
        )
    try:
        server.start()
        print(server.url, flush=True)
        print("(Ctrl-C stops it)", file=sys.stderr, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return EXIT_OK


_RAW = argparse.RawDescriptionHelpFormatter

_NAMESPACE_HELP = (
    "the namespace (default: AILF_NAMESPACE, else 'default'); a scenario's is its name"
)


def _add_redis(
    parser: argparse.ArgumentParser,
    what: str = "the Redis to talk to"
    " (default: AILF_REDIS_URL, else REDIS_URL, else redis://localhost:6379/0)",
) -> None:
    parser.add_argument("--redis", metavar="URL", default=None, help=what)


def _add_namespace(parser: argparse.ArgumentParser) -> None:
    # None until main() fills it in, so that an error can tell a namespace the user
    # chose from the default one (see _noperm_hint).
    parser.add_argument("-n", "--namespace", default=None, help=_NAMESPACE_HELP)


def _add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def _command(
    commands: Any, name: str, summary: str, description: str, examples: str, **kwargs: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=_RAW,
        **kwargs,
    )
    parser.set_defaults(parser=parser)  # so that main() reports stray arguments with its usage
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ailf",
        description="ailf: an actor-style agent runtime on Redis and trio.",
        epilog="examples:\n"
        "  ailf run scenarios/quickstart.toml     # run a scenario (starts its own Redis)\n"
        "  ailf check scenarios/word-count.toml   # validate a scenario file\n"
        "  ailf server                            # a throwaway Redis, prints its URL\n"
        "  ailf send echo '{\"hi\": 1}' --ask      # ask an agent, print the reply\n"
        "  ailf status                            # namespaces, agents, processes, backlog\n"
        "  ailf top -n work-queue                 # a namespace live in the terminal\n"
        "  ailf dashboard -n work-queue           # ... in a web page, dead letters too\n"
        "  ailf dlq list worker                   # an agent's dead letters\n"
        "  ailf reset -n work-queue               # empty a namespace (asks first)\n\n"
        "Exit codes: 0 success, 1 failure (a failed run, Redis unreachable), 2 bad usage or file,\n"
        "130 a run interrupted by Ctrl-C.",
        formatter_class=_RAW,
    )
    parser.add_argument("--version", action="version", version=f"ailf {ailf.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _command(
        commands,
        "run",
        "run a scenario file",
        "Run the agents a scenario file declares, send its messages, show progress on\n"
        "stderr, then a summary per agent. Without [redis] url in the file (or --redis),\n"
        "an embedded Redis server is started for the run. Exit code 0 when the run ended\n"
        "as the file says (until = idle|stop) and its [expect] tables hold; 1 on failure\n"
        "or timeout; 2 for a bad file.",
        "  ailf run scenarios/quickstart.toml\n"
        "  ailf run scenarios/word-count.toml --redis redis://localhost:6379/0\n"
        "  ailf run scenarios/work-queue.toml --only worker   # this host runs the workers\n"
        "  ailf run scenarios/ping-pong.toml --json > summary.json",
    )
    run.add_argument("file", help="the scenario file (TOML)")
    _add_redis(
        run,
        "use this Redis (default: the file's [redis] url, else an embedded server"
        " started for the run)",
    )
    run.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these agents (other hosts run the rest against the same Redis)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        default=None,
        help="serve Prometheus metrics: worker process i on PORT+i, at /metrics"
        " (default: the file's [scenario] metrics_port; needs ailf[metrics])",
    )
    _add_json(run, "the summary")
    run.set_defaults(handler=_cmd_run)

    check = _command(
        commands,
        "check",
        "validate a scenario file without running it",
        "Parse and check a scenario file: TOML syntax, keys and types, agent classes\n"
        "(imported), their options, names used by messages. Exit code 0 when it would\n"
        "run, 2 (with every problem listed on stderr) when it would not.",
        "  ailf check scenarios/word-count.toml\n"
        "  for f in scenarios/*.toml; do ailf check $f; done",
    )
    check.add_argument("file", help="the scenario file (TOML)")
    _add_json(check, "the result")
    check.set_defaults(handler=_cmd_check)

    send = _command(
        commands,
        "send",
        "send a message to an agent's mailbox (or ask it)",
        "Add a message to an agent's mailbox and print its id. With --ask, wait for the\n"
        "agent's reply and print it as JSON (exit 1 on timeout or a remote error).\n"
        "JSON is any JSON value; '-' reads it from stdin.",
        "  ailf send echo '{\"hi\": 1}'\n"
        '  ailf send calculator \'{"op": "add", "args": [1, 2]}\' --ask -n request-reply\n'
        "  ailf send worker '{\"job\": 1}' --count 100 -n work-queue\n"
        "  ailf send billing '{\"x\": 1}' --delay 30s\n"
        "  echo '[1, 2]' | ailf send echo - --ask",
    )
    send.add_argument("agent", help="the agent's name")
    send.add_argument("body", metavar="JSON", help="the message body as JSON ('-': stdin)")
    send.add_argument("--ask", action="store_true", help="wait for the reply and print it")
    send.add_argument("--key", help="for a keyed agent: the key (entity) the message is for")
    send.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait with --ask")
    send.add_argument(
        "--delay",
        type=_duration,
        help="deliver it this long from now (30s, 5m, 1h30m): a durable timer in Redis;"
        " prints the timer's id",
    )
    send.add_argument(
        "--at",
        type=_instant,
        help="deliver it at this time (ISO 8601 with offset, or epoch seconds)",
    )
    send.add_argument(
        "--count", type=_positive_int, default=1, help="send the message this many times"
    )
    _add_namespace(send)
    _add_redis(send)
    _add_json(send, "the message ids")
    send.set_defaults(handler=_cmd_send)

    publish = _command(
        commands,
        "publish",
        "broadcast a message on a topic",
        "Publish a message on a topic: every agent instance subscribed to it, in every\n"
        "process, hears it once. Broadcasts are best-effort: nobody listening, nobody\n"
        "hears. Prints how many processes received it, and says so when none did.",
        '  ailf publish room \'{"text": "hello"}\' -n chat',
    )
    publish.add_argument("topic", help="the topic")
    publish.add_argument("body", metavar="JSON", help="the message body as JSON ('-': stdin)")
    _add_namespace(publish)
    _add_redis(publish)
    _add_json(publish, "how many processes received it")
    publish.set_defaults(handler=_cmd_publish)

    status = _command(
        commands,
        "status",
        "show namespaces, agents, processes and backlogs",
        "Show what runs against a Redis: per namespace, the live processes (with their\n"
        "last heartbeat) and per agent its replicas, mailbox length, pending (delivered,\n"
        "not yet acknowledged), lag (not yet delivered) and dead letters.",
        "  ailf status\n  ailf status -n word-count --json\n"
        "  ailf status -n chat --agent assistant --key user-42",
    )
    status.add_argument(
        "-n", "--namespace", default=None, help="only this namespace (default: all of them)"
    )
    status.add_argument("--agent", help="with --key: the keyed agent")
    status.add_argument(
        "--key", help="one key of a keyed agent: its partition, holder, messages, state"
    )
    _add_redis(status)
    _add_json(status, "the status")
    status.set_defaults(handler=_cmd_status)

    top = _command(
        commands,
        "top",
        "watch a namespace's agents live in the terminal",
        "A live view of one namespace, refreshed every --interval seconds until q or\n"
        "Ctrl-C: per agent its replicas and processes, messages handled per second,\n"
        "backlog, lag, in flight (delivered, not yet acknowledged), failures and dead\n"
        "letters; then the live processes. Read from Redis alone, so it shows every\n"
        "process of the namespace, on any host. Needs rich: pip install 'ailf[top]'.",
        "  ailf top -n work-queue\n  ailf top -n work-queue --redis redis://redis.internal:6379/0\n"
        "  ailf top -n work-queue --iterations 1    # one frame, then exit",
    )
    _add_namespace(top)
    _add_redis(top)
    top.add_argument(
        "--interval", type=_seconds, default=1.0, help="seconds between refreshes (default 1)"
    )
    top.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="exit after N refreshes (default: until q or Ctrl-C)",
    )
    top.set_defaults(handler=_cmd_top)

    dashboard = _command(
        commands,
        "dashboard",
        "serve a web page of a namespace: agents, rates, processes, dead letters",
        "Serve a web page that shows one namespace live, from Redis: per agent its rate\n"
        "(charted over the last minutes), backlog, lag, instances and processes; the live\n"
        "processes and their hosts; and each agent's dead letters, to show, redrive or purge\n"
        "(after a confirmation). It listens on 127.0.0.1 unless --host says otherwise; since\n"
        "it can redrive and purge, another address needs --token (every request must then\n"
        "carry it). Stop it with Ctrl-C.",
        "  ailf dashboard -n work-queue                # http://localhost:8080/\n"
        "  ailf dashboard -n work-queue --port 9000 --redis redis://redis.internal:6379/0\n"
        '  ailf dashboard -n work-queue --host 0.0.0.0 --token "$(openssl rand -hex 16)"',
    )
    _add_namespace(dashboard)
    _add_redis(dashboard)
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)"
    )
    dashboard.add_argument(
        "--port",
        type=functools.partial(_port, lowest=0),
        default=8080,
        help="the port (default 8080; 0: a free one)",
    )
    dashboard.add_argument(
        "--token",
        default=None,
        help="require this token on every request (default: AILF_DASHBOARD_TOKEN, if set)",
    )
    dashboard.set_defaults(handler=_cmd_dashboard)

    dlq = _command(
        commands,
        "dlq",
        "list, show, redrive or purge an agent's dead letters",
        "Messages that failed max_deliveries times, or could not be decoded, end in the\n"
        "agent's dead-letter stream with the reason and the exception. 'list' shows them,\n"
        "'show' prints them whole, 'redrive' sends them back to the agent's mailbox (as\n"
        "new messages) and removes them, 'purge' deletes them. 'redrive' and 'purge'\n"
        "take ids, or act on every dead letter of the agent when given none.",
        "  ailf dlq list worker -n work-queue\n"
        "  ailf dlq show worker 1764120000250-0\n"
        "  ailf dlq redrive worker            # all of them\n"
        "  ailf dlq purge worker 1764120000250-0",
    )
    dlq.add_argument(
        "action",
        metavar="ACTION",
        choices=("list", "show", "redrive", "purge"),
        help="list, show, redrive or purge",
    )
    dlq.add_argument("agent", metavar="AGENT", help="the agent's name")
    # default=[]: argparse otherwise calls a "*" positional required in its errors
    dlq.add_argument(
        "ids", nargs="*", default=[], metavar="ID", help="dead-letter ids (default: all)"
    )
    dlq.add_argument("--count", type=_positive_int, default=100, help="list at most this many")
    dlq.add_argument("--key", help="for a keyed agent: list only this key's dead letters")
    _add_namespace(dlq)
    _add_redis(dlq)
    _add_json(dlq, "the dead letters")
    dlq.set_defaults(handler=_cmd_dlq)

    state = _command(
        commands,
        "state",
        "print the state an agent saved (a keyed agent's, for one key)",
        "An agent with state saves it with the acknowledgement of every message it\n"
        "handles (a keyed agent, per key); this prints the last saved one as JSON (exit 1\n"
        "if there is none).",
        "  ailf state assistant user-42 -n chat\n  ailf state tally -n chat",
    )
    state.add_argument("agent", metavar="AGENT", help="the agent's name")
    state.add_argument(
        "key", metavar="KEY", nargs="?", default=None, help="a keyed agent's key (entity)"
    )
    _add_namespace(state)
    _add_redis(state)
    state.set_defaults(handler=_cmd_state)

    reminders = _command(
        commands,
        "reminders",
        "list an agent's reminders, or cancel one",
        "Reminders are named, durable timers on an agent (for a keyed agent, on one key;\n"
        "docs/time.md). Lists them by when they fire next; --cancel NAME cancels one\n"
        "(exit 1 if it was not set).",
        "  ailf reminders billing -n shop\n"
        "  ailf reminders assistant --key user-42 -n chat\n"
        "  ailf reminders billing --cancel invoice -n shop",
    )
    reminders.add_argument("agent", metavar="AGENT", help="the agent's name")
    reminders.add_argument("--key", help="for a keyed agent: the key the reminders are on")
    reminders.add_argument("--cancel", metavar="NAME", help="cancel this reminder")
    _add_namespace(reminders)
    _add_redis(reminders)
    _add_json(reminders, "the reminders")
    reminders.set_defaults(handler=_cmd_reminders)

    cancel = _command(
        commands,
        "cancel",
        "cancel a timed message by the id send --delay printed",
        "A timed message waits in Redis until it is due (docs/time.md); this cancels it\n"
        "if it has not entered its agent's mailbox yet (exit 1 if it had).",
        "  ailf cancel billing/5f0c3e9a1b2c4d6e -n shop",
    )
    cancel.add_argument("id", metavar="ID", help="the timer's id, as send --delay printed it")
    _add_namespace(cancel)
    _add_redis(cancel)
    _add_json(cancel, "the outcome")
    cancel.set_defaults(handler=_cmd_cancel)

    reset = _command(
        commands,
        "reset",
        "delete everything a namespace holds in Redis",
        "Delete every key of a namespace: its agents' mailboxes (with their consumer groups\n"
        "and every message in them), dead letters and registry. Use it between runs of a\n"
        "scenario on a persistent Redis, whose leftovers the next run would otherwise\n"
        "handle and count. Asks first, unless --yes; refuses while processes of the\n"
        "namespace are alive. Needs a Redis user allowed SCAN.",
        "  ailf reset -n work-queue\n  ailf reset -n work-queue --yes --redis redis://localhost:6379/0",
    )
    reset.add_argument("-n", "--namespace", required=True, help="the namespace to empty")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_redis(reset)
    reset.set_defaults(handler=_cmd_reset)

    server = _command(
        commands,
        "server",
        "run an embedded Redis server in the foreground and print its URL",
        "Run a throwaway Redis server (or cluster) until Ctrl-C; prints its URL on stdout.",
        "  ailf server\n  ailf server --port 6390 --persistent\n  ailf server --unix-socket\n"
        "  ailf server --cluster 3 --replicas 1    # 3 primaries, a replica each",
    )
    server.add_argument("--port", type=_port, default=None, help="TCP port (default: a free one)")
    server.add_argument("--unix-socket", action="store_true", help="listen on a socket file")
    server.add_argument("--persistent", action="store_true", help="AOF with fsync always")
    server.add_argument(
        "--cluster",
        type=_positive_int,
        metavar="N",
        default=None,
        help="a Redis Cluster of N primaries on loopback ports (its URL has ?cluster=true)",
    )
    server.add_argument(
        "--replicas",
        type=_count,
        metavar="M",
        default=0,
        help="with --cluster: M replicas of each primary",
    )
    server.set_defaults(handler=_cmd_server)

    # The runner's child processes: not for people, so not in the help.
    worker = commands.add_parser("_worker")
    worker.add_argument("file")
    worker.add_argument("--process", type=int, required=True)
    worker.add_argument("--events-fd", type=int, required=True)
    worker.add_argument("--only", nargs="*", default=())
    worker.add_argument("--metrics-port", type=int, default=None)
    worker.set_defaults(handler=_cmd_worker)
    return parser


def _noperm_hint(args: argparse.Namespace) -> str:
    """What to do when Redis says NOPERM to a user confined to one namespace by its ACL
    (docs/operating.md): such a user may not list namespaces, nor use another one."""
    if args.command == "status" and args.namespace is None:
        return (
            "; listing every namespace needs SCAN, which this Redis user may not run:"
            " pass -n NAMESPACE"
        )
    if args.command == "reset":
        return "; reset lists the namespace's keys with SCAN, which this Redis user may not run"
    if getattr(args, "namespace_chosen", True):
        return ""
    return (
        f"; this Redis user may not use namespace {args.namespace!r}, the default:"
        " pass -n NAMESPACE (or set AILF_NAMESPACE)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, stray = parser.parse_known_args(argv)
    if stray:  # with the command's own usage, not the top level's
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(stray)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    if hasattr(args, "namespace") and args.command not in ("status", "reset"):
        chosen = args.namespace if args.namespace is not None else os.getenv("AILF_NAMESPACE")
        args.namespace_chosen = chosen is not None
        args.namespace = "default" if chosen is None else chosen
    try:
        if args.command != "_worker":
            # Reconnect warnings and the like would bury the one line that matters.
            logging.basicConfig(
                level=_log_level(), format="ailf: %(levelname)s %(name)s: %(message)s"
            )
        code: int = args.handler(args)
        return code
    except (ScenarioError, ConfigError, UsageError) as exc:
        for line in str(exc).splitlines():
            print(f"ailf: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except AilfError as exc:
        noperm = isinstance(exc, ResponseError) and exc.code == "NOPERM"
        print(f"ailf: error: {exc}{_noperm_hint(args) if noperm else ''}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("ailf: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
