"""Where each stream's history lives: its state, and the record answered for each of its recent events.

Two kinds of entries in one changelog-backed table, msgpack-encoded:
- ``["s", stream_id]``: the stream's history state (cased_core.method.history), its change-gate state
  (cased_core.method.gate) and the ids of its last `answers` answered events, oldest first;
- ``["r", stream_id, event_id]``: the exact record (topic and value) answered for that event, label or
  dead letter, so that a re-delivered event gets the identical record again.

Each answer is its own entry, written once: a batch writes one small state per stream it touched and
one entry per event, never a stream's whole replay history again, and no entry can grow past the
bounds of one output record. Evicted answers are deleted (a tombstone in the changelog).

Every entry is written to the changelog partition numbered like the images.in partition of the event
that produced it, whatever partitioner the producer used, and the worker that owns images.in partition
P restores changelog partition P before it answers any of P's events: a stream's history is where its
events arrive.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable, Protocol

import msgpack

from cased_core.method import history

log = logging.getLogger("cased.worker")

MAX_ANSWERS = 64  # answered events kept per stream; a re-delivery comes from the last uncommitted batches


def state_key(stream_id: str) -> bytes:
    return msgpack.packb(["s", stream_id])


def answer_key(stream_id: str, event_id: str) -> bytes:
    return msgpack.packb(["r", stream_id, event_id])


class HistoryStore(Protocol):
    """Raw entries by key; `put` names the changelog partition (None value: delete)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, partition: int | None, key: bytes, value: bytes | None) -> None: ...


class ChangelogStore:
    """The worker's HistoryStore: entries in memory for the images.in partitions it owns, each backed
    by the changelog partition of the same number (a compacted topic), which it restores itself.

    Not a Faust table: Faust's table recovery reads a changelog partition up to the ListOffsets end
    offset, which the embedded broker reports per record batch, so after a rebalance a stream's state
    came back one write behind; and its changelog partition comes from the key's murmur2 hash. Here a
    partition is read to the high watermark of its fetch responses (workers.offsets.read_partition),
    before any batch of its events is answered.
    """

    def __init__(self, topic: str, read: Callable[[int], Awaitable[list]],
                 send: Callable[[list[tuple[int, bytes, bytes | None]]], Awaitable[list[Awaitable]]]):
        """`read(partition)`: the changelog partition's records (with .key, .value), oldest first;
        `send([(partition, key, value), ...])`: produce changelog records in order, returning the
        futures of their deliveries."""
        self.topic, self._read, self._send = topic, read, send
        self._entries: dict[bytes, bytes] = {}
        self._partition_of: dict[bytes, int] = {}
        self._restored: dict[int, asyncio.Future] = {}
        self._pending: list[tuple[int, bytes, bytes | None]] = []

    def assign(self, partitions: Iterable[int]) -> None:
        """The images.in partitions this worker owns now: entries of the others are dropped (another
        worker writes them from now on), the new ones start restoring."""
        mine = set(partitions)
        for partition in set(self._restored) - mine:
            self._restored.pop(partition).cancel()
        for key in [k for k, p in self._partition_of.items() if p not in mine]:
            del self._entries[key], self._partition_of[key]
        for partition in mine - set(self._restored):
            self._restored[partition] = asyncio.ensure_future(self._restore(partition))

    async def ready(self, partitions: Iterable[int]) -> None:
        """Wait until these partitions' entries are restored (restoring any not assigned yet)."""
        for partition in set(partitions):
            restored = self._restored.get(partition)
            if restored is None or (restored.done() and (restored.cancelled() or restored.exception())):
                self._restored[partition] = asyncio.ensure_future(self._restore(partition))  # (again)
        await asyncio.gather(*(asyncio.shield(self._restored[p]) for p in set(partitions)))

    async def _restore(self, partition: int) -> None:
        for record in await self._read(partition):
            self._apply(partition, record.key, record.value)
        log.info("restored %s partition %d: %d stream-history entries", self.topic, partition,
                 sum(p == partition for p in self._partition_of.values()))

    def _apply(self, partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            self._entries.pop(key, None)
            self._partition_of.pop(key, None)
        else:
            self._entries[key], self._partition_of[key] = value, partition

    def get(self, key: bytes) -> bytes | None:
        return self._entries.get(key)

    def put(self, partition: int | None, key: bytes, value: bytes | None) -> None:
        self._apply(partition, key, value)
        self._pending.append((partition, key, value))

    async def flush(self) -> None:
        """Produce the changelog records of every `put` so far and wait until the broker has them."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*await self._send(pending))


class MemoryStore(dict):
    """A HistoryStore in a dict (tests, benchmarks); counts writes per key and keeps their partition."""

    def __init__(self):
        super().__init__()
        self.writes: dict[bytes, int] = {}
        self.partitions: dict[bytes, int | None] = {}

    def put(self, partition: int | None, key: bytes, value: bytes | None) -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        self.partitions[key] = partition
        if value is None:
            self.pop(key, None)
        else:
            self[key] = value


class BatchHistories:
    """One batch's view of the histories: each stream's entry is read and decoded once, and written
    back once, at the end of the batch, with one entry per newly answered event."""

    def __init__(self, store: HistoryStore, answers: int = MAX_ANSWERS):
        self.store, self.answers = store, answers
        self._streams: dict[str, dict] = {}
        self._partitions: dict[str, int | None] = {}
        self._new: dict[str, dict[str, tuple[str, bytes]]] = {}

    def _stream(self, stream_id: str) -> dict:
        if stream_id not in self._streams:
            raw = self.store.get(state_key(stream_id))
            self._streams[stream_id] = msgpack.unpackb(raw, raw=False) if raw else {"history": None, "answered": []}
        return self._streams[stream_id]

    def state(self, stream_id: str) -> dict | None:
        """The stream's history state (None for a new stream)."""
        return self._stream(stream_id)["history"]

    def answered(self, stream_id: str, event_id: str) -> tuple[str, bytes] | None:
        """(topic, value) of the record already answered for this event, in this batch or before."""
        new = self._new.get(stream_id, {}).get(event_id)
        if new is not None:
            return new
        if event_id not in self._stream(stream_id)["answered"]:
            return None
        raw = self.store.get(answer_key(stream_id, event_id))
        return tuple(msgpack.unpackb(raw, raw=False)) if raw else None

    def set_state(self, stream_id: str, state: dict) -> None:
        self._stream(stream_id)["history"] = state

    def names(self, stream_id: str) -> list[str]:
        """The names the stream used so far (cased_core.method.history.names)."""
        return history.names(self.state(stream_id))

    def gate(self, stream_id: str) -> dict | None:
        """The stream's change-gate state (cased_core.method.gate; None: none yet)."""
        return self._stream(stream_id).get("gate")

    def set_gate(self, stream_id: str, state: dict | None) -> None:
        self._stream(stream_id)["gate"] = state

    def answer(self, partition: int | None, stream_id: str, event_id: str, topic: str, value: bytes) -> None:
        """Keep the record answered for `event_id` (from images.in `partition`) for re-deliveries."""
        self._stream(stream_id)
        self._partitions[stream_id] = partition
        self._new.setdefault(stream_id, {})[event_id] = (topic, value)

    def write_back(self) -> None:
        """Write each stream that answered events: its new answers first, then its state (which lists
        them), then deletions of answers past the bound."""
        for stream_id, new in self._new.items():
            partition, entry = self._partitions[stream_id], self._streams[stream_id]
            for event_id, (topic, value) in new.items():
                self.store.put(partition, answer_key(stream_id, event_id), msgpack.packb([topic, value]))
            answered = entry["answered"] + [e for e in new if e not in entry["answered"]]
            entry["answered"], evicted = answered[-self.answers:], answered[:-self.answers]
            self.store.put(partition, state_key(stream_id), msgpack.packb(entry, use_bin_type=True))
            for event_id in evicted:
                self.store.put(partition, answer_key(stream_id, event_id), None)
        self._new.clear()
