"""The worker's own offset frontier (pure) and reading a skipped range back from a real broker."""
from __future__ import annotations

import asyncio

from workers.clients import ensure_topics, producer
from workers.offsets import Frontier, Gap, read_range


def test_in_order_records_are_taken_and_advance_the_frontier():
    frontier = Frontier()
    frontier.reset({0: 10, 1: 0})
    plan = frontier.plan([(0, 10), (1, 0), (0, 11), (1, 1)])
    assert plan.take == [0, 1, 2, 3] and plan.gaps == []
    frontier.advance([(0, 10), (1, 0), (0, 11), (1, 1)])
    assert frontier.offsets() == {0: 12, 1: 2}


def test_re_deliveries_below_the_frontier_are_dropped():
    frontier = Frontier()
    frontier.reset({0: 5})
    plan = frontier.plan([(0, 3), (0, 4), (0, 5), (0, 5)])
    assert plan.take == [2] and plan.gaps == []


def test_skipped_records_become_gaps_before_the_record_that_reveals_them():
    frontier = Frontier()
    frontier.reset({0: 40, 3: 20})
    plan = frontier.plan([(0, 40), (3, 24), (0, 41), (0, 45), (3, 25)])
    assert plan.take == [0, 1, 2, 3, 4]
    assert plan.gaps == [Gap(3, 20, 24), Gap(0, 42, 45)]


def test_a_partition_without_a_starting_point_takes_what_comes():
    frontier = Frontier()
    plan = frontier.plan([(2, 7), (2, 8)])
    assert plan.take == [0, 1] and plan.gaps == []


def test_behind_names_fetched_but_unanswered_tails():
    frontier = Frontier()
    frontier.reset({0: 10, 1: 4, 2: 0})
    frontier.advance([(0, 10)])
    # partition 0: fetched up to 13, answered up to 10; 1: nothing fetched past the frontier;
    # 2: no position known; 5: not ours
    assert frontier.behind({0: 14, 1: 4, 5: 9}) == [Gap(0, 11, 14)]


def test_read_range_returns_exactly_the_range(broker):
    ensure_topics(broker.url, ["t"], 2)
    client = producer(broker.url)
    for i in range(30):
        client.send("t", key=b"k", value=f"v{i}".encode(), partition=1)
    client.flush()
    client.close()
    records = asyncio.run(read_range([broker.address], "t", Gap(1, 7, 19)))
    assert [r.offset for r in records] == list(range(7, 19))
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(7, 19)]
    assert {r.partition for r in records} == {1} and records[0].topic == "t"


def test_read_range_past_the_end_returns_what_exists(broker):
    ensure_topics(broker.url, ["t"], 1)
    client = producer(broker.url)
    for i in range(3):
        client.send("t", key=b"k", value=b"x", partition=0)
    client.flush()
    client.close()
    records = asyncio.run(read_range([broker.address], "t", Gap(0, 1, 50), idle_s=0.5))
    assert [r.offset for r in records] == [1, 2]
    assert asyncio.run(read_range([broker.address], "t", Gap(0, 3, 4), idle_s=0.5)) == []


def test_read_partition_reads_every_record_of_multi_record_batches_and_ends_on_empty_ones(broker):
    """The embedded broker's ListOffsets counts batches, not records: the read must not stop there."""
    from workers.clients import bootstrap, ensure_topics, producer
    from workers.offsets import read_partition

    ensure_topics(broker.url, ["log"], 2)
    client = producer(broker.url)
    for i in range(6):  # sent together: one record batch
        client.send("log", key=b"k%d" % (i % 2), value=b"v%d" % i, partition=1)
    client.flush()
    client.close()
    records = asyncio.run(read_partition(bootstrap(broker.url), "log", 1, timeout_s=30))
    assert [(r.offset, r.value) for r in records] == [(i, b"v%d" % i) for i in range(6)]
    assert asyncio.run(read_partition(bootstrap(broker.url), "log", 0, timeout_s=30)) == []
