"""Where a benchmark ran: the machine, the software versions and the Redis server.

Every benchmark prints this next to its figures, because a figure without its
conditions cannot be compared with anything.
"""

from __future__ import annotations

import datetime
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis
import trio

from ailf import RedisConfig
from ailf.clients._resp import parser_name


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine(config: RedisConfig) -> dict[str, Any]:
    """The conditions of a run against the server at ``config``, as JSON-ready fields."""
    with redis.Redis(**config.redis_py_kwargs()) as client:
        server = client.info("server")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "trio": trio.__version__,
        "redis_py": redis.__version__,
        "hiredis": _version("hiredis"),
        "parser": parser_name(),
        "redis_server": f"{server.get('redis_version')} ({server.get('executable', '?')})",
        "faststream": _version("faststream"),
        "dramatiq": _version("dramatiq"),
        "transport": "unix socket" if config.unix_socket_path else "TCP on loopback",
    }


def describe(meta: dict[str, Any]) -> str:
    """One line: machine, Python, libraries, ailf's RESP parser, Redis, transport."""
    return (
        f"{meta['machine']}, Python {meta['python']}, trio {meta['trio']}, redis-py"
        f" {meta['redis_py']}, hiredis {meta['hiredis']}, ailf's RESP parser"
        f" {meta.get('parser', 'hiredis')}, Redis {meta['redis_server']}, {meta['transport']}"
    )
