"""Every example of the user guide, run exactly as written, and every python block of docs/.

The guide's examples below are copied verbatim from the seed guide
(``redis-messaging-guide.md``) that the project started from; they call ``RedisClient()``
without arguments, so each test points ``AILF_REDIS_URL`` at a throwaway server first.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ailf import RedisClient, RedisClusterServer, RedisConfig, RedisServer

DOCS = Path(__file__).resolve().parent.parent / "docs"

# -- the guide's examples, verbatim -------------------------------------------------------
# Verbatim means whitespace-only lines too, hence:
# ruff: noqa: W293

CONFIGURATION = """\
from ailf import RedisConfig, RedisClient

# Default configuration (localhost:6379)
client = RedisClient()

# Custom configuration
config = RedisConfig(
    host="redis.example.com",
    port=6380,
    password="secret",
    ssl=True
)
client = RedisClient(config)
"""

KEY_VALUE = """\
from ailf import RedisClient

client = RedisClient()

# Set and get values
client.set("user:123:name", "Alice")
name = client.get("user:123:name")
print(name)  # 'Alice'

# JSON operations
user_data = {
    "name": "Alice",
    "role": "admin",
    "settings": {
        "theme": "dark",
        "notifications": True
    }
}
client.set_json("user:123", user_data)
retrieved = client.get_json("user:123")
"""

PUBLISHER = """\
from ailf import RedisPubSub

# Create publisher
publisher = RedisPubSub()

# Publish messages
publisher.publish("notifications", {
    "type": "alert",
    "message": "System maintenance scheduled",
    "level": "info",
    "timestamp": 1715026800
})
"""

SUBSCRIBER = """\
from ailf import RedisPubSub

# Create subscriber
subscriber = RedisPubSub()

# Define message handler
def handle_notification(data):
    print(f"Received notification: {data['message']}")
    
# Subscribe to channel
subscriber.subscribe("notifications", handle_notification)

# Start listening in background
thread = subscriber.run_in_thread()

# Or run in current thread (blocking)
# subscriber.run()

# Later, to stop listening
subscriber.stop()
"""

PRODUCER = """\
from ailf import RedisStream

# Create stream
stream = RedisStream("tasks")

# Add messages to the stream
task_id = stream.add({
    "type": "analysis",
    "data": "Sample text to analyze",
    "priority": 1
})

print(f"Task added with ID: {task_id}")
"""

CONSUMER = """\
from ailf import RedisStream

# Create stream consumer
stream = RedisStream("tasks")

# Create consumer group
stream.create_consumer_group("workers", "worker-1")

# Read messages
messages = stream.read_group(count=10, block=2000)  # Block for 2 seconds

for message in messages:
    msg_id = message["id"]
    data = message["data"]
    
    print(f"Processing task: {data['type']}")
    
    # Process message...
    
    # Acknowledge message
    stream.acknowledge(msg_id)
"""

ERROR_HANDLING = """\
from ailf import RedisClient

client = RedisClient()

try:
    result = client.get("some-key")
    if result is None:
        print("Key not found")
    else:
        print(f"Value: {result}")
except Exception as e:
    print(f"Redis error: {str(e)}")
"""

# -- running them -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=3, replicas=0) as cluster:
        yield cluster


@pytest.fixture(params=["one server", "cluster"])
def env(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    redis_config: RedisConfig,
) -> Iterator[RedisClient]:
    """AILF_REDIS_URL -> the session's throwaway server, or a throwaway cluster (every
    example runs on both), flushed for this test."""
    if request.param == "one server":
        url, config = redis_server.url, redis_config
    else:
        cluster: RedisClusterServer = request.getfixturevalue("cluster")
        url, config = cluster.url, RedisConfig.from_url(cluster.url)
        for node in cluster.nodes:
            RedisClient(node.config).execute_command("FLUSHALL")
    monkeypatch.setenv("AILF_REDIS_URL", url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with RedisClient(config) as client:
        yield client


def run(example: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "guide_example"}
    exec(compile(example, "<guide example>", "exec"), namespace)
    return namespace


def test_configuration_builds_clients_without_connecting(env: RedisClient) -> None:
    namespace = run(CONFIGURATION)
    remote = namespace["client"]
    assert remote.config.host == "redis.example.com" and remote.config.ssl
    assert remote.config.port == 6380 and remote.config.password == "secret"


def test_key_value_operations(env: RedisClient, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = run(KEY_VALUE)
    assert capsys.readouterr().out == "Alice\n"
    assert namespace["retrieved"] == namespace["user_data"]
    assert namespace["retrieved"]["settings"]["notifications"] is True
    assert env.get_json("user:123") == namespace["user_data"]


def test_publisher_sends_json(env: RedisClient) -> None:
    listener = env.client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe("notifications")
    assert listener.get_message(timeout=1) is None
    run(PUBLISHER)
    message = listener.get_message(timeout=5)
    listener.close()
    assert message is not None
    assert '"message":"System maintenance scheduled"' in message["data"]


def test_subscriber_starts_and_stops(env: RedisClient, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    namespace = run(SUBSCRIBER)
    assert time.monotonic() - started < 5
    assert not namespace["thread"].is_alive()
    assert not any(t.name == "ailf-pubsub" for t in threading.enumerate())
    namespace["handle_notification"]({"message": "hello"})
    assert capsys.readouterr().out == "Received notification: hello\n"


def test_subscriber_receives_what_the_publisher_sends(
    env: RedisClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two examples together, the subscriber's stop() held back until the message is in."""
    body, stop_line = SUBSCRIBER.rsplit("subscriber.stop()", 1)
    namespace = run(body)
    deadline = time.monotonic() + 10
    # Published until heard: the subscriber's thread subscribes in the background (and
    # on a cluster, PUBSUB NUMSUB would count one node's subscribers only).
    while True:
        run(PUBLISHER)
        if "System maintenance" in capsys.readouterr().out:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    exec("subscriber.stop()" + stop_line, namespace)
    assert not namespace["thread"].is_alive()


def test_producer_then_consumer(env: RedisClient, capsys: pytest.CaptureFixture[str]) -> None:
    producer = run(PRODUCER)
    assert capsys.readouterr().out == f"Task added with ID: {producer['task_id']}\n"
    consumer = run(CONSUMER)
    assert capsys.readouterr().out == "Processing task: analysis\n"
    [message] = consumer["messages"]
    assert message["data"] == {"type": "analysis", "data": "Sample text to analyze", "priority": 1}
    assert consumer["stream"].pending().count == 0


def test_error_handling(env: RedisClient, capsys: pytest.CaptureFixture[str]) -> None:
    run(ERROR_HANDLING)
    assert capsys.readouterr().out == "Key not found\n"
    env.set("some-key", "there")
    run(ERROR_HANDLING)
    assert capsys.readouterr().out == "Value: there\n"


def test_error_handling_with_the_server_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer() as server:
        url = server.url
    monkeypatch.setenv("AILF_REDIS_URL", url)
    run(ERROR_HANDLING)
    out = capsys.readouterr().out
    assert out.startswith("Redis error: cannot talk to Redis at 127.0.0.1:")
    assert "AILF_REDIS_URL" in out


# -- the docs' python blocks ----------------------------------------------------------------


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


@pytest.fixture
def one_server(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, redis_config: RedisConfig
) -> Iterator[RedisClient]:
    """AILF_REDIS_URL -> the session's throwaway server (docs/ examples use keys of
    several slots in one command, which a cluster refuses: docs/cluster.md has its own)."""
    monkeypatch.setenv("AILF_REDIS_URL", redis_server.url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with RedisClient(redis_config) as client:
        yield client


@pytest.mark.parametrize("name", ["messaging.md", "configuration.md", "migrating.md"])
def test_docs_python_blocks_run(name: str, one_server: RedisClient) -> None:
    blocks = python_blocks(DOCS / name)
    assert blocks, f"docs/{name} has no python blocks"
    namespace: dict[str, Any] = {"__name__": f"docs_{name}"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/{name} block {number}", "exec"), namespace)
