"""A stream's history lives where its events arrive, whatever partitioner its producer used."""
from __future__ import annotations

import time
import zlib
from collections import defaultdict

from kafka.partitioner.default import murmur2

from tests.workers.helpers import PARTITIONS, TOPICS, collect, labels_by_event, send, shape, wait_ready
from topics import events as ev
from workers.clients import bootstrap, ensure_topics, image_event


def librdkafka_partition(key: bytes) -> int:
    """librdkafka's default partitioner (consistent_random) for a non-empty key: CRC32."""
    return zlib.crc32(key) % PARTITIONS


def murmur2_partition(key: bytes) -> int:
    """The Java client's, kafka-python's and aiokafka's default, and what a Faust table would pick."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def publish_librdkafka(broker_url: str, events: list[ev.ImageEvent]) -> None:
    from confluent_kafka import Producer

    client = Producer({"bootstrap.servers": ",".join(bootstrap(broker_url)), "acks": "all"})
    for event in events:
        client.produce("images.in", key=event.stream_id.encode(), value=ev.encode_image_event(event))
    assert client.flush(30) == 0


def frames(streams: list[str], seqs: range) -> list[ev.ImageEvent]:
    return [image_event(stream, shape(("star", "heart", "moon")[seq // 3 % 3], 1000 * i + seq), {"seq": seq},
                        event_id=f"{stream}/{seq}") for seq in seqs for i, stream in enumerate(streams)]


def test_history_follows_the_events_with_librdkafka_and_murmur2_producers_across_a_rebalance(broker, workers):
    # Streams whose two partitioners disagree: a history keyed by murmur2 would live elsewhere.
    apart = [s for s in (f"rd-{i}" for i in range(200))
             if librdkafka_partition(s.encode()) != murmur2_partition(s.encode())][:10]
    java = [f"mm-{i}" for i in range(6)]
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    first = workers(broker.url)
    wait_ready(first)
    publish_librdkafka(broker.url, frames(apart, range(0, 4)))
    send(broker.url, frames(java, range(0, 4)))
    total = 4 * (len(apart) + len(java))
    assert len(collect(broker.url, total)) == total
    second = workers(broker.url)
    deadline = time.monotonic() + 60
    while not (second.assignment() and len(first.assignment() or []) < PARTITIONS):
        assert time.monotonic() < deadline, second.log.read_text()[-3000:]
        time.sleep(0.5)
    owner = {p: name for name, worker in (("first", first), ("second", second)) for p in worker.assignment()}
    # The case that breaks a history keyed by murmur2: the stream's events and that partition's owner differ.
    assert any(owner[librdkafka_partition(s.encode())] != owner[murmur2_partition(s.encode())] for s in apart)
    publish_librdkafka(broker.url, frames(apart, range(4, 10)))
    send(broker.url, frames(java, range(4, 10)))
    total = 10 * (len(apart) + len(java))
    labels = labels_by_event(collect(broker.url, total, timeout_s=120))
    assert len(labels) == total
    streams = defaultdict(list)
    for copies in labels.values():
        streams[copies[0].stream_id].append(copies[0])
    for stream, answered in streams.items():
        answered.sort(key=lambda label: label.attrs["seq"])
        for before, after in zip(answered, answered[1:]):
            # continuous: each label's history extends the one before it
            assert after.history == (before.history + [after.label])[-10:], (stream, after.attrs["seq"])
    assert first.process.poll() is None and second.process.poll() is None
