"""The sync and async clients are one command surface: the same methods, the same
parameters, the same replies (ailf/clients/_commands.py; docs/clients.md)."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pytest
import redis
import trio

from ailf import (
    AsyncRedisClient,
    DataError,
    RedisClient,
    RedisClusterServer,
    RedisConfig,
    ResponseError,
)
from ailf.clients._pipeline import AsyncPipeline, Pipeline

#: Names only one face has, and why: the sync client keeps redis-py at hand for what the
#: surface lacks (``client``, and ``run`` to translate its errors); the async client has
#: the async spelling of closing (``aclose``) and pub/sub sessions, which need an async
#: library to read in the background (the sync face subscribes through RedisPubSub), and
#: its count of ``reconnects`` (a metric of the runtime; redis-py's pool reconnects unseen).
FACE_ONLY = {
    RedisClient: {"client", "run"},
    AsyncRedisClient: {"aclose", "pubsub", "reconnects"},
}


def public(face: type) -> set[str]:
    return {name for name in dir(face) if not name.startswith("_")}


def parameters(face: type, name: str) -> list[tuple[str, Any, Any]]:
    member = inspect.getattr_static(face, name)
    if isinstance(member, property):
        return [("<property>", None, None)]
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(getattr(face, name)).parameters.values()
    ]


@pytest.mark.parametrize(
    ("sync_face", "async_face"), [(RedisClient, AsyncRedisClient), (Pipeline, AsyncPipeline)]
)
def test_every_method_of_one_face_is_on_the_other_with_the_same_parameters(
    sync_face: type, async_face: type
) -> None:
    sync_names = public(sync_face) - FACE_ONLY.get(sync_face, set())
    async_names = public(async_face) - FACE_ONLY.get(async_face, set())
    assert sync_names == async_names
    assert len(sync_names) > 70  # every command, not a handful
    for name in sorted(sync_names):
        assert parameters(sync_face, name) == parameters(async_face, name), name
        assert not inspect.iscoroutinefunction(getattr(sync_face, name)), name  # it blocks


# -- the same commands, the same replies --------------------------------------------------

#: (method, args, kwargs): a sample that covers each reply shape and the cases the
#: differential review found apart (RESP2 raw replies, sismember, mget of nothing).
SAMPLE: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("set", ("{t}k", "v"), {}),
    ("set", ("{t}k", "w"), {"nx": True}),
    ("set", ("{t}t", 1), {"expire": timedelta(seconds=99.5)}),
    ("get", ("{t}k",), {}),
    ("mget", (["{t}k", "{t}missing"],), {}),
    ("mget", ([],), {}),
    ("incr", ("{t}n",), {"amount": 5}),
    ("set_json", ("{t}j", {"a": [1, {"b": None}]}), {}),
    ("get_json", ("{t}j",), {}),
    ("hset", ("{t}h",), {"mapping": {"f": "1", "g": "2"}}),
    ("hgetall", ("{t}h",), {}),
    ("execute_command", ("HGETALL", "{t}h"), {}),
    ("sadd", ("{t}s", "a", "b"), {}),
    ("sismember", ("{t}s", "a"), {}),
    ("smembers", ("{t}s",), {}),
    ("rpush", ("{t}l", "x", "y"), {}),
    ("lrange", ("{t}l", 0, -1), {}),
    ("blpop", ("{t}l",), {"timeout": 1}),
    ("xadd", ("{t}x", {"n": "1"}), {"id": "1-1"}),
    ("xadd", ("{t}x", {"n": "2"}), {"id": "1-2", "maxlen": 10}),
    ("xgroup_create", ("{t}x", "g", "0"), {}),
    ("xreadgroup", ("g", "c", {"{t}x": ">"}), {"count": 1}),
    ("xpending", ("{t}x", "g"), {}),
    ("xrange", ("{t}x",), {}),
    ("xread", ({"{t}x": "0"},), {"block": 10}),
    ("execute_command", ("XRANGE", "{t}x", "-", "+"), {}),
    ("exists", ("{t}k", "{t}h", "{t}missing"), {}),
    ("delete", ("{t}k", "{t}missing"), {}),
    ("type", ("{t}h",), {}),
]
"""Keys share the hash tag ``{t}``, so that the multi-key commands run on a cluster too."""


def sync_replies(config: RedisConfig) -> list[Any]:
    with RedisClient(config) as client:
        client.flushdb()
        replies = [getattr(client, name)(*args, **kwargs) for name, args, kwargs in SAMPLE]
        with client.pipeline() as pipe:
            pipe.set("{t}p", 1).incr("{t}p").hgetall("{t}h").mget([]).get("{t}p")
        return [*replies, pipe.results]


def async_replies(config: RedisConfig) -> list[Any]:
    async def main() -> list[Any]:
        async with AsyncRedisClient(config) as client:
            await client.flushdb()
            replies = [
                await getattr(client, name)(*args, **kwargs) for name, args, kwargs in SAMPLE
            ]
            async with client.pipeline() as pipe:
                pipe.set("{t}p", 1).incr("{t}p").hgetall("{t}h").mget([]).get("{t}p")
            return [*replies, pipe.results]

    return trio.run(main)


def test_a_sample_of_commands_replies_alike_on_both_faces(redis_config: RedisConfig) -> None:
    expected = sync_replies(redis_config)
    assert async_replies(redis_config) == expected
    sample = dict(zip((f"{name}{args}" for name, args, _ in SAMPLE), expected, strict=False))
    assert sample["execute_command('HGETALL', '{t}h')"] == ["f", "1", "g", "2"]  # RESP2, raw
    assert sample["sismember('{t}s', 'a')"] is True
    assert sample["mget([],)"] == []
    assert expected[-1] == [True, 2, {"f": "1", "g": "2"}, [], "2"]


def test_a_sample_of_commands_replies_alike_on_a_cluster(redis_config: RedisConfig) -> None:
    """Both faces on a 3-primary cluster answer the sample as on one server."""
    expected = sync_replies(redis_config)
    with RedisClusterServer(primaries=3, replicas=0) as cluster:
        on_cluster = RedisConfig.from_url(cluster.url)
        assert sync_replies(on_cluster) == expected
        assert async_replies(on_cluster) == expected


def test_bad_arguments_raise_one_error_before_anything_is_sent(redis_config: RedisConfig) -> None:
    """DataError, on both faces: redis-py's DataError, and TypeError and ValueError too."""
    bad = [("set", ("k", None), {}), ("set", ("k", "v"), {"expire": 0}), ("xadd", ("x", {}), {})]
    with RedisClient(redis_config) as client:
        for name, args, kwargs in bad:
            with pytest.raises(DataError) as caught:
                getattr(client, name)(*args, **kwargs)
            error = caught.value
            assert isinstance(error, (redis.DataError, TypeError, ValueError)), name
        assert client.exists("k", "x") == 0

    async def main() -> None:
        async with AsyncRedisClient(redis_config) as client:
            for name, args, kwargs in bad:
                with pytest.raises(DataError):
                    await getattr(client, name)(*args, **kwargs)

    trio.run(main)


def test_a_pipelines_error_names_its_command_on_both_faces(redis_config: RedisConfig) -> None:
    with RedisClient(redis_config) as client:
        client.set("text", "x")
        with pytest.raises(ResponseError) as sync_error, client.pipeline() as pipe:
            pipe.set("k", "v").lpush("text", "y")

    async def main() -> ResponseError:
        async with AsyncRedisClient(redis_config) as client:
            with pytest.raises(ResponseError) as caught:
                async with client.pipeline() as pipe:
                    pipe.set("k", "v").lpush("text", "y")
            return caught.value

    async_error = trio.run(main)
    assert str(sync_error.value) == str(async_error)
    assert async_error.code == "WRONGTYPE"
    assert str(async_error).endswith("(in pipeline: Command # 2 (LPUSH text))")
