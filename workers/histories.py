"""Where each stream's history lives: its state, and the record answered for each of its recent events.

Two kinds of entries in one changelog-backed table, msgpack-encoded:
- ``["s", stream_id]``: the stream's history state (cased_core.history) and the ids of its last
  `answers` answered events, oldest first;
- ``["r", stream_id, event_id]``: the exact record (topic and value) answered for that event, label or
  dead letter, so that a re-delivered event gets the identical record again.

Each answer is its own entry, written once: a batch writes one small state per stream it touched and
one entry per event, never a stream's whole replay history again, and no entry can grow past the
bounds of one output record. Evicted answers are deleted (a tombstone in the changelog).

Every entry is written to the changelog partition numbered like the images.in partition of the event
that produced it, whatever partitioner the producer used: Faust restores changelog partition P on the
worker that owns images.in partition P, so a stream's history is where its events arrive.
"""
from __future__ import annotations

from typing import Protocol

import faust
import msgpack

MAX_ANSWERS = 64  # answered events kept per stream; a re-delivery comes from the last uncommitted batches


def state_key(stream_id: str) -> bytes:
    return msgpack.packb(["s", stream_id])


def answer_key(stream_id: str, event_id: str) -> bytes:
    return msgpack.packb(["r", stream_id, event_id])


class HistoryStore(Protocol):
    """Raw entries by key; `put` names the changelog partition (None value: delete)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, partition: int | None, key: bytes, value: bytes | None) -> None: ...


class HistoryTable(faust.Table):
    """A Faust table whose changelog partition is the one the caller names for each write, instead of
    the producer's partitioner (murmur2 on the key), which need not match how the producer of
    images.in partitioned the stream (librdkafka clients hash differently by default)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.routes: dict[bytes, int | None] = {}

    def partition_for_key(self, key: bytes) -> int | None:
        # Called by Faust's on_key_set / on_key_del for each write that TableStore.put routed.
        return self.routes.pop(key)


class TableStore:
    """The worker's HistoryStore: a HistoryTable of raw bytes."""

    def __init__(self, table: HistoryTable):
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        return self.table.get(key)

    def put(self, partition: int | None, key: bytes, value: bytes | None) -> None:
        self.table.routes[key] = partition
        if value is None:
            if key in self.table:
                del self.table[key]
            else:
                self.table.routes.pop(key)
        else:
            self.table[key] = value


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
