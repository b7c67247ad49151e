"""Word count as map-reduce: :class:`Splitter` -> :class:`WordCounter` xN -> :class:`Reducer`.

The splitter cuts a text into chunks of lines and sends each to the counters' shared
mailbox (run the counters with several replicas, in several processes); each counter
sends the word counts of its chunk to the reducer, which merges them. Every chunk
carries its job id (the splitter's message id) and its number, so a chunk delivered
twice after a crash is counted once.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import attrs
import trio

from ailf import Agent, Message

__all__ = ["Reducer", "Splitter", "WordCounter", "words"]

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased; apostrophes inside words are kept."""
    return _WORD.findall(text.lower())


class Splitter(Agent):
    """Splits ``{"text": "..."}`` or ``{"path": "file.txt"}`` into chunks of lines.

    A relative ``path`` is read from the worker's current directory, which
    ``ailf run`` sets to the scenario file's directory. Returns the number of chunks.
    """

    @attrs.frozen
    class Options:
        chunk_size: int = attrs.field(default=20, validator=attrs.validators.ge(1))
        to: str = "counter"

    async def on_message(self, message: Message) -> int:
        body = message.body
        if isinstance(body, dict) and isinstance(body.get("text"), str):
            text = body["text"]
        elif isinstance(body, dict) and isinstance(body.get("path"), str):
            text = await trio.Path(body["path"]).read_text(encoding="utf-8")
        else:
            raise ValueError('expected {"text": "..."} or {"path": "file.txt"}')
        lines = text.splitlines()
        size = self.options.chunk_size
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)] or [[]]
        for number, chunk in enumerate(chunks):
            chunk_text = "\n".join(chunk)
            body = {"job": message.id, "chunk": number, "chunks": len(chunks), "text": chunk_text}
            await self.send(self.options.to, body)
        return len(chunks)


class WordCounter(Agent):
    """Counts the words of one chunk and sends the counts on to the reducer."""

    @attrs.frozen
    class Options:
        to: str = "reducer"

    async def on_message(self, message: Message) -> int:
        body = dict(message.body)
        counts = collections.Counter(words(body.pop("text")))
        await self.send(self.options.to, {**body, "counts": dict(counts)})
        return sum(counts.values())


class Reducer(Agent):
    """Merges the counts of every chunk of a job; prints the top words when complete.

    Run it with one replica: the totals live in its memory. With ``stop_when_done``
    it stops the runtime after the first complete job (for ``until = "stop"``).
    Messages are answered with the job's progress.
    """

    @attrs.frozen
    class Options:
        top: int = attrs.field(default=10, validator=attrs.validators.ge(1))
        stop_when_done: bool = False

    async def on_start(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}

    async def on_message(self, message: Message) -> dict[str, int]:
        body = message.body
        job = self.jobs.setdefault(body["job"], {"chunks": set(), "counts": collections.Counter()})
        if body["chunk"] not in job["chunks"]:
            job["chunks"].add(body["chunk"])
            job["counts"].update(body["counts"])
            if len(job["chunks"]) == body["chunks"]:
                self._report(job["counts"])
        return {"chunks": len(job["chunks"]), "of": body["chunks"]}

    def _report(self, counts: collections.Counter[str]) -> None:
        total = sum(counts.values())
        print(f"{self.name}: {total} words, {len(counts)} distinct", flush=True)
        for word, count in counts.most_common(self.options.top):
            print(f"{self.name}: {count:6d} {word}", flush=True)
        if self.options.stop_when_done:
            self.runtime.stop()
