"""Chaos and overload runs against real processes and a real, persistent Redis.

``python bench/chaos.py run`` — the chaos run of docs/reliability.md: a worker pool
over three OS processes (each hosting two replicas of the ``work`` agent and one
``echo`` agent) takes ``--messages`` messages (100,000 by default; the test suite runs
20,000) sent at ``--rate`` per second by 20 concurrent senders. Every ``--kill-every``
seconds one worker process is SIGKILLed and a new one started in its place; halfway
through, the Redis server (AOF, ``appendfsync always``) is SIGKILLed and restarted.
Meanwhile one task keeps asking ``echo``, to see what asks in flight during the faults
get. Afterwards every message must have been processed at least once: each handler
counts its message's sequence number in a Redis hash (``HINCRBY``), so the hash's size
is the number of distinct messages processed and the sum of its counts minus its size
the duplicates.

``python bench/chaos.py overload`` — producers about ten times faster than their
consumer for ``--seconds`` (60): four sender tasks against one slow agent in another
process, with ``mailbox_limit`` set. It samples the mailbox backlog, Redis
``used_memory`` and both processes' RSS every half second, then lets the backlog drain
and checks that everything sent was handled.

Both print a human summary, or one JSON object with ``--json`` (what the tests parse).
The exit status is 0 when nothing was lost, 1 otherwise. Figures depend on the machine
and its load: docs/reliability.md records the conditions next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import redis
import trio

from ailf import (
    Agent,
    AskTimeout,
    MailboxFull,
    Message,
    RedisConfig,
    RedisError,
    RedisServer,
    Runtime,
)
from ailf.runtime._mailbox import mailbox_backlog

NAMESPACE = "chaos"
SEEN = "chaos:seen"  # hash: message sequence number -> times processed


# -- the worker process -------------------------------------------------------------------


@attrs.frozen
class WorkOptions:
    delay: float = 0.0  # seconds each message takes, before it is counted


class Work(Agent):
    """Counts each message it handles; never gives a message up (a Redis outage makes
    handlers fail, and those messages must be retried, not dead-lettered)."""

    Options = WorkOptions
    max_deliveries = 1000

    async def on_message(self, message: Message) -> None:
        if self.options.delay:
            await trio.sleep(self.options.delay)
        await self.runtime.client.hincrby(SEEN, str(message.body), 1)


class Echo(Agent):
    async def on_message(self, message: Message) -> Any:
        return message.body


async def worker(spec: dict[str, Any]) -> None:
    async with Runtime(
        RedisConfig.from_url(spec["url"]),
        namespace=NAMESPACE,
        grace_period=1.0,
        heartbeat_interval=1.0,
        retry_backoff=0.05,
        retry_backoff_max=0.5,
    ) as runtime:
        await runtime.spawn(
            Work,
            name="work",
            options={"delay": spec.get("delay", 0.0)},
            replicas=spec.get("replicas", 2),
            claim_idle=spec.get("claim_idle", 2.0),
            concurrency=spec.get("concurrency", 4),
        )
        if spec.get("echo", True):
            await runtime.spawn(Echo, name="echo", claim_idle=spec.get("claim_idle", 2.0))
        print("ready", flush=True)
        await runtime.run_forever()


def start_worker(url: str, log_dir: Path, number: int, **spec: Any) -> subprocess.Popen[bytes]:
    with (log_dir / f"worker-{number}.log").open("wb") as log:  # the child keeps its copy
        return subprocess.Popen(
            [sys.executable, __file__, "worker", json.dumps({"url": url, **spec})],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (Linux /proc), 0 where unknown."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


# -- the chaos run ------------------------------------------------------------------------


class AskTally:
    """What the asks sent during the faults got back."""

    def __init__(self) -> None:
        self.answered = 0
        self.timed_out = 0
        self.redis_errors = 0
        self.wrong = 0
        self.other: list[str] = []
        self.longest = 0.0


async def ask_forever(runtime: Runtime, tally: AskTally, ask_timeout: float) -> None:
    n = 0
    while True:
        n += 1
        started = time.monotonic()
        try:
            answer = await runtime.ask("echo", n, timeout=ask_timeout)
        except AskTimeout:
            tally.timed_out += 1
        except RedisError:
            tally.redis_errors += 1
        except Exception as exc:
            tally.other.append(f"{type(exc).__name__}: {exc}")
        else:
            if answer == n:
                tally.answered += 1
            else:
                tally.wrong += 1
        tally.longest = max(tally.longest, time.monotonic() - started)
        await trio.sleep(0.02)


async def chaos(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="ailf-chaos-"))
    rng = random.Random(args.seed)
    with RedisServer(persistent=True) as server:
        url = server.url
        plain = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
        spec = {"claim_idle": args.claim_idle, "replicas": 2}
        numbers = iter(range(10**6))
        workers = [start_worker(url, log_dir, next(numbers), **spec) for _ in range(args.processes)]
        kills = restarts = send_retries = 0
        tally = AskTally()
        total = args.messages
        duration = total / args.rate
        started = time.monotonic()
        try:
            async with (
                Runtime(
                    server.config,
                    namespace=NAMESPACE,
                    mailbox_limit=10_000,
                    send_timeout=60,
                ) as runtime,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(ask_forever, runtime, tally, args.ask_timeout)
                clock = trio.current_time()

                async def sender(first: int) -> None:
                    nonlocal send_retries
                    for seq in range(first, total, args.senders):
                        await trio.sleep_until(clock + seq / args.rate)
                        while True:
                            try:
                                await runtime.send("work", seq)
                                break
                            except (RedisError, MailboxFull):
                                send_retries += 1
                                await trio.sleep(0.1)

                async def faults() -> None:
                    nonlocal kills, restarts
                    redis_at = clock + duration / 2
                    next_kill = clock + args.kill_every
                    while True:
                        now = trio.current_time()
                        if restarts == 0 and now >= redis_at:
                            await trio.to_thread.run_sync(lambda: server.restart(kill=True))
                            restarts += 1
                        if now >= next_kill:
                            victim = rng.randrange(len(workers))
                            workers[victim].send_signal(signal.SIGKILL)
                            await trio.to_thread.run_sync(workers[victim].wait)
                            workers[victim] = start_worker(url, log_dir, next(numbers), **spec)
                            kills += 1
                            next_kill = now + args.kill_every
                        await trio.sleep(0.05)

                async with trio.open_nursery() as production:
                    production.start_soon(faults)
                    async with trio.open_nursery() as senders:
                        for first in range(args.senders):
                            senders.start_soon(sender, first)
                    produced_at = time.monotonic()
                    production.cancel_scope.cancel()
                with trio.move_on_after(args.drain_timeout):
                    while plain.hlen(SEEN) < total:  # noqa: ASYNC110 - state in Redis
                        await trio.sleep(0.1)
                drained_at = time.monotonic()
                await trio.sleep(2 * args.claim_idle)  # let stragglers land (duplicates)
                nursery.cancel_scope.cancel()
            counts = {int(k): int(v) for k, v in plain.hgetall(SEEN).items()}
            dead = plain.xlen(f"ailf:{NAMESPACE}:dead:work")
        finally:
            for process in workers:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in workers:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            plain.close()
    processed = set(counts)
    return {
        "mode": "chaos",
        "messages": total,
        "rate": args.rate,
        "processes": args.processes,
        "replicas_per_process": 2,
        "seconds_producing": round(produced_at - started, 1),
        "seconds_until_drained": round(drained_at - started, 1),
        "worker_kills": kills,
        "redis_restarts": restarts,
        "processed_distinct": len(processed & set(range(total))),
        "lost": total - len(processed & set(range(total))),
        "duplicates": sum(counts.values()) - len(processed),
        "messages_seen_twice_or_more": sum(1 for c in counts.values() if c > 1),
        "dead_letters": dead,
        "send_retries": send_retries,
        "asks_answered": tally.answered,
        "asks_timed_out": tally.timed_out,
        "asks_redis_error": tally.redis_errors,
        "asks_wrong_answer": tally.wrong,
        "asks_other_error": tally.other[:5],
        "ask_timeout": args.ask_timeout,
        "ask_longest_seconds": round(tally.longest, 2),
        "worker_logs": str(log_dir),
    }


# -- the overload run ---------------------------------------------------------------------


async def unthrottled_send_rate(config: RedisConfig, producers: int) -> int:
    """Messages per second the producers manage for one second with no limit and no
    consumer (the mailbox is deleted afterwards): what "ten times faster" compares to."""
    sent = 0
    async with Runtime(config, namespace="probe") as runtime:
        deadline = trio.current_time() + 1.0

        async def produce() -> None:
            nonlocal sent
            while trio.current_time() < deadline:
                await runtime.send("probe", sent)
                sent += 1

        async with trio.open_nursery() as nursery:
            for _ in range(producers):
                nursery.start_soon(produce)
        await runtime.client.delete(runtime.keys.mailbox("probe"))
    return sent


async def overload(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="ailf-overload-"))
    with RedisServer() as server:
        plain = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
        consumer = start_worker(
            server.url, log_dir, 0, replicas=1, concurrency=1, delay=args.delay, echo=False
        )
        sent = mailbox_full = 0
        samples: list[dict[str, int]] = []
        free_rate = await unthrottled_send_rate(server.config, args.producers)
        memory_before = int(plain.info("memory")["used_memory"])
        try:
            async with Runtime(
                server.config,
                namespace=NAMESPACE,
                mailbox_limit=args.limit,
                send_timeout=args.send_timeout,
            ) as runtime:
                stream = runtime.keys.mailbox("work")
                deadline = trio.current_time() + args.seconds

                async def produce(first: int) -> None:
                    nonlocal sent, mailbox_full
                    seq = first
                    while trio.current_time() < deadline:
                        try:
                            await runtime.send("work", seq)
                        except MailboxFull:
                            mailbox_full += 1
                            continue
                        sent += 1
                        seq += args.producers

                async def sample() -> None:
                    while True:
                        samples.append(
                            {
                                "backlog": await mailbox_backlog(runtime.client, stream),
                                "used_memory": int(plain.info("memory")["used_memory"]),
                                "producer_rss": rss(os.getpid()),
                                "consumer_rss": rss(consumer.pid),
                                "handled": plain.hlen(SEEN),
                            }
                        )
                        await trio.sleep(0.5)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample)
                    async with trio.open_nursery() as producers:
                        for first in range(args.producers):
                            producers.start_soon(produce, first)
                    nursery.cancel_scope.cancel()
                flood_end = time.monotonic()
                handled_at_end = plain.hlen(SEEN)
                with trio.move_on_after(args.drain_timeout):
                    while plain.hlen(SEEN) < sent:  # noqa: ASYNC110 - state in Redis
                        await trio.sleep(0.1)
                drained = time.monotonic() - flood_end
                handled = plain.hlen(SEEN)
        finally:
            consumer.send_signal(signal.SIGTERM)
            try:
                consumer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                consumer.kill()
            plain.close()
    return {
        "mode": "overload",
        "seconds": args.seconds,
        "producers": args.producers,
        "consumer_handler_seconds": args.delay,
        "mailbox_limit": args.limit,
        "sent": sent,
        "send_rate": round(sent / args.seconds),
        "unthrottled_send_rate": free_rate,
        "consumer_rate": round(handled_at_end / args.seconds),
        "mailbox_full_errors": mailbox_full,
        "backlog_max": max(s["backlog"] for s in samples),
        "redis_used_memory_before": memory_before,
        "redis_used_memory_max": max(s["used_memory"] for s in samples),
        "producer_rss_max": max(s["producer_rss"] for s in samples),
        "consumer_rss_max": max(s["consumer_rss"] for s in samples),
        "consumer_rss_first": samples[0]["consumer_rss"],
        "handled": handled,
        "lost": sent - handled,
        "seconds_to_drain": round(drained, 1),
    }


# -- the command line ---------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    run = modes.add_parser("run", help="the chaos run")
    run.add_argument("--messages", type=int, default=100_000)
    run.add_argument("--rate", type=float, default=2000.0, help="messages sent per second")
    run.add_argument("--processes", type=int, default=3)
    run.add_argument("--senders", type=int, default=20)
    run.add_argument("--kill-every", type=float, default=3.0)
    run.add_argument("--claim-idle", type=float, default=1.0)
    run.add_argument("--ask-timeout", type=float, default=3.0)
    run.add_argument("--drain-timeout", type=float, default=120.0)
    run.add_argument("--seed", type=int, default=7)
    over = modes.add_parser("overload", help="producers ten times faster than the consumer")
    over.add_argument("--seconds", type=float, default=60.0)
    over.add_argument("--producers", type=int, default=4)
    over.add_argument("--delay", type=float, default=0.002, help="consumer handler seconds")
    over.add_argument("--limit", type=int, default=1000, help="mailbox_limit")
    over.add_argument("--send-timeout", type=float, default=30.0)
    over.add_argument("--drain-timeout", type=float, default=120.0)
    for sub in (run, over):
        sub.add_argument("--json", action="store_true", help="print one JSON object")
    worker_mode = modes.add_parser("worker")  # the chaos run's own child processes
    worker_mode.add_argument("spec")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.mode == "worker":
        trio.run(worker, json.loads(args.spec))
        return 0
    result = trio.run(chaos if args.mode == "run" else overload, args)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
