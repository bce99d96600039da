"""Which images.in offsets a worker has answered, and reading the ones Faust never delivered.

Faust can skip records around a rebalance or a restart: records fetched while the app's flow is
suspended are dropped (and acked), and a stale fetch can move its read offset past records that are
then filtered out as already read. Its own commits can then pass records no label was produced for,
and after a crash those are lost (seen on the embedded broker: the first records after the committed
offset vanished in one SIGKILL restart in four). So the worker keeps its own frontier per partition,
the next offset it must answer, commits only that, and reads any skipped range itself.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Consumed:
    """One images.in record, as delivered by Faust or read back by `read_range`."""
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None  # the stream_id
    value: bytes | None = None
    headers: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_faust(cls, event) -> "Consumed":
        message = event.message
        return cls(message.topic, message.partition, message.offset, event.key, event.value,
                   dict(event.headers or {}))


@dataclass(frozen=True)
class Gap:
    partition: int
    start: int  # first missing offset
    stop: int  # one past the last missing offset


@dataclass(frozen=True)
class Plan:
    take: list[int]  # indexes of the delivered records to process, in delivery order
    gaps: list[Gap]  # ranges to read back and process before the taken records of their partition


class Frontier:
    """Per partition, the next offset this worker must answer: every record below it already has its
    labels.out or images.dlq record. Pure bookkeeping; the app feeds it offsets."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._taken: dict[int, int] = {}  # past the records handed to a batch still being answered

    def reset(self, offsets: Mapping[int, int]) -> None:
        """Start over from the broker's truth (committed offsets, or the earliest for partitions with
        none), e.g. after an assignment: another worker may have moved a partition on meanwhile."""
        self._next = dict(offsets)
        self._taken = {}

    def plan(self, positions: Sequence[tuple[int, int]]) -> Plan:
        """What to do with delivered (partition, offset) pairs: records below the frontier, or taken by
        a batch still being answered, are dropped (re-deliveries); records past it mean the ones in
        between were skipped. The taken records count as taken from now on."""
        cursor = {p: max(o, self._taken.get(p, o)) for p, o in self._next.items()}
        cursor.update((p, o) for p, o in self._taken.items() if p not in cursor)
        take, gaps = [], []
        for i, (partition, offset) in enumerate(positions):
            expected = cursor.get(partition, offset)
            if offset < expected:
                continue
            if offset > expected:
                gaps.append(Gap(partition, expected, offset))
            take.append(i)
            cursor[partition] = offset + 1
        self._taken = cursor
        return Plan(take, gaps)

    def advance(self, positions: Sequence[tuple[int, int]]) -> None:
        """Record that these offsets were answered (their records delivered by the broker)."""
        for partition, offset in positions:
            self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def forget_taken(self) -> None:
        """A batch failed before it was answered: its records count as not taken again."""
        self._taken = {}

    def behind(self, fetched: Mapping[int, int]) -> list[Gap]:
        """Ranges the consumer fetched (`fetched`: its next fetch offset, per partition) that were never
        answered: skipped records with nothing delivered after them to reveal the gap."""
        return [Gap(p, self._next[p], position) for p, position in sorted(fetched.items())
                if p in self._next and position > self._next[p]]

    def offsets(self) -> dict[int, int]:
        return dict(self._next)


@contextlib.asynccontextmanager
async def _partition_reader(bootstrap: list[str], topic: str, partition: int, client_options: Mapping | None):
    """A started aiokafka consumer assigned one partition (no group, no commits), always stopped."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                fetch_max_wait_ms=50, **(client_options or {}))
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        yield consumer, tp
    finally:
        await asyncio.shield(consumer.stop())


async def read_range(bootstrap: list[str], topic: str, gap: Gap, idle_s: float = 1.0,
                     client_options: Mapping | None = None) -> list[Consumed]:
    """Records [gap.start, gap.stop) of one partition, read directly (no group, no commits). Stops
    early when the broker has nothing more for `idle_s`: a range may end past the last record."""
    async with _partition_reader(bootstrap, topic, gap.partition, client_options) as (consumer, tp):
        consumer.seek(tp, gap.start)
        out: list[Consumed] = []
        while not out or out[-1].offset < gap.stop - 1:
            batch = await consumer.getmany(tp, timeout_ms=int(idle_s * 1000))
            records = batch.get(tp, [])
            if not records:
                break
            out += [Consumed(topic, gap.partition, r.offset, r.key, r.value, dict(r.headers or ()))
                    for r in records if gap.start <= r.offset < gap.stop]
            if records[-1].offset >= gap.stop - 1:
                break
        return out


async def read_partition(bootstrap: list[str], topic: str, partition: int, timeout_s: float = 120.0,
                         client_options: Mapping | None = None) -> list[Consumed]:
    """Every record of one partition, from its earliest offset up to the high watermark that fetch
    responses report: exact, not ended by a pause. Not up to ListOffsets' end offset: the embedded
    broker reports one past the last record *batch* there (1 for a batch of 6 records), which is how
    Faust's table recovery lost the newest history writes. Raises TimeoutError past `timeout_s`."""
    async with _partition_reader(bootstrap, topic, partition, client_options) as (consumer, tp):
        await consumer.seek_to_beginning(tp)

        async def to_end() -> list[Consumed]:
            out: list[Consumed] = []
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                out += [Consumed(topic, partition, r.offset, r.key, r.value) for r in batch.get(tp, [])]
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    return out

        return await asyncio.wait_for(to_end(), timeout_s)
