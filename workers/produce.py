"""A batch's records to Kafka as one produce batch per partition, on the app's own producer.

Faust's `topic.send` costs a future, a buffer entry and a sensor round per record, and aiokafka's
`send` an accumulator visit per record; a batch of 16 labels and their 32 history entries paid that 48
times. aiokafka's batch API appends records to one batch per partition and queues each once.
Partitions for keyed records come from aiokafka's DefaultPartitioner (murmur2, as the Java client and
Faust's send), so a stream's labels land where they always did.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence

from aiokafka.partitioner import DefaultPartitioner

from workers import compat

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int | None = None  # None: by the key's hash (a random partition without a key)
    headers: Headers = ()


class RecordTooLarge(ValueError):
    """One record is larger than the producer's max_batch_size."""


async def send_records(producer, records: Sequence[Record]) -> list[asyncio.Future]:
    """Queue `records` on Faust's producer (`app.producer`), one batch per partition (more when a
    partition's records pass max_batch_size), keeping each partition's records in order. Returns the
    futures of the batches' deliveries; await them all before committing anything the records answer.

    Raises:
        RecordTooLarge: a record does not fit in an empty batch.
    """
    client = compat.producer_client(producer)
    partitioner = DefaultPartitioner()
    grouped: dict[tuple[str, int], list[Record]] = {}
    partitions_of: dict[str, list[int]] = {}
    for record in records:
        partition = record.partition
        if partition is None:
            if record.topic not in partitions_of:
                partitions_of[record.topic] = sorted(await client.partitions_for(record.topic))
            every = partitions_of[record.topic]
            partition = partitioner(record.key, every, every)
        grouped.setdefault((record.topic, partition), []).append(record)
    deliveries = []
    for (topic, partition), items in grouped.items():
        batch = client.create_batch()
        for record in items:
            if not _append(batch, record):  # full: queue it, start the next
                batch.close()
                deliveries.append(await client.send_batch(batch, topic, partition=partition))
                batch = client.create_batch()
                if not _append(batch, record):
                    raise RecordTooLarge(f"a {len(record.value or b'')}-byte record for {topic} does not fit "
                                         f"in a produce batch")
        batch.close()
        deliveries.append(await client.send_batch(batch, topic, partition=partition))
    return deliveries


def _append(batch, record: Record) -> bool:
    return batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers)) is not None
