"""The Faust app: an agent that reads images.in in batches and writes labels.out / images.dlq.

Offsets: the worker commits images.in itself, never Faust's acks. Per partition it keeps a frontier,
the next offset to answer (workers/offsets.py), advanced only after a batch's records were delivered
(the broker acknowledged them); records Faust skipped are read back and answered in order before
anything after them. The agent runs with concurrency 1 and a revocation waits for the batch in flight.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import faust
import msgpack
from faust.types import TP

from topics import events as ev
from workers.clients import bootstrap, ensure_topics
from workers.fetch import Fetcher, FetchLimits
from workers.health import WorkerHealth
from workers.offsets import Consumed, Frontier, read_range
from workers.security import aiokafka_options, faust_credentials, kafka_python_options
from workers.settings import Settings
from workers.telemetry import Telemetry

if TYPE_CHECKING:
    from workers.pipeline import Pipeline

log = logging.getLogger("cased.worker")


class StreamHistories(MutableMapping):
    """A Faust table seen as stream_id -> history state. Keys are the raw UTF-8 stream ids, like the
    images.in keys, and the table uses the producer's partitioner: a stream's history lands in the
    changelog partition numbered like its images.in partition, so it moves with it on rebalance."""

    def __init__(self, table: faust.Table):
        self.table = table

    def __getitem__(self, stream_id: str) -> dict:
        return msgpack.unpackb(self.table[stream_id.encode()], raw=False)

    def __setitem__(self, stream_id: str, state: dict) -> None:
        self.table[stream_id.encode()] = msgpack.packb(state, use_bin_type=True)

    def __delitem__(self, stream_id: str) -> None:
        del self.table[stream_id.encode()]

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self.table.keys())

    def __len__(self) -> int:
        return len(self.table)


class WorkerApp(faust.App):
    """Faust's app, whose stop first runs `drain` (before Faust stops the consumer and the tables)."""

    drain: Callable[[], Awaitable[Any]] | None = None

    async def on_stop(self) -> None:
        if self.drain is not None:
            await self.drain()
        await super().on_stop()


@dataclass
class Worker:
    app: faust.App
    pipeline: Future  # of the Pipeline: the model and database load while the consumer joins its group
    health: WorkerHealth


def fetch_limits(settings: Settings) -> FetchLimits:
    return FetchLimits(
        max_bytes=settings.max_bytes, timeout_s=settings.fetch_timeout_s, retries=settings.fetch_retries,
        allow_private=bool(settings.allow_private_hosts),
        allowed_buckets=frozenset(b.strip() for b in settings.s3_buckets.split(",") if b.strip()),
        file_root=Path(settings.file_root) if settings.file_root else None)


def build_pipeline(settings: Settings) -> Pipeline:
    """Load the model and database (the slow part of start-up) and wire the batch pipeline."""
    # Imported here, in the loading thread: torch and open_clip take seconds to import.
    from cased_core.classifier import Classifier, ClassifierConfig
    from cased_core.database import load_database
    from cased_core.history import HistoryPolicy
    from cased_core.lexicon import load_lexicon
    from cased_core.model import load_model
    from workers.pipeline import Pipeline

    model = load_model(settings.model, settings.pretrained, settings.device)
    database = load_database(settings.database, model.identity, settings.cache_dir)
    classifier = Classifier(model, database, config=ClassifierConfig(k=settings.k, alpha=settings.alpha,
                                                                    top_n=settings.top_n))
    policy = HistoryPolicy(mode=settings.history_policy, margin=settings.history_margin,
                           patience=settings.history_patience)
    return Pipeline(classifier, Fetcher(fetch_limits(settings)), policy, load_lexicon(), database.name,
                    max_pixels=settings.max_pixels)


def create_worker(settings: Settings, pipeline: Pipeline | None = None, telemetry: Telemetry | None = None) -> Worker:
    # Loading the model takes seconds (mostly imports) and joining the group waits on the broker:
    # both at once shorten start-up. The first batch waits for the pipeline.
    if pipeline is None:
        loader = ThreadPoolExecutor(1, thread_name_prefix="load")
        loading = loader.submit(build_pipeline, settings)
        loader.shutdown(wait=False)
    else:
        loading = Future()
        loading.set_result(pipeline)
    telemetry = telemetry or Telemetry.from_env()  # off unless OTEL_* variables ask for it
    app = WorkerApp(
        settings.app_id, broker=settings.broker, value_serializer="raw", key_serializer="raw",
        topic_partitions=settings.partitions, store="memory://",
        # Joins the group in seconds instead of 30 s (measured against the embedded broker).
        broker_rebalance_timeout=5.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
        web_port=settings.web_port, web_bind="0.0.0.0", web_in_thread=False,
        producer_acks=-1,
        broker_credentials=faust_credentials(settings),  # CASED_KAFKA_*: SASL/TLS, None for PLAINTEXT
    )
    # acks=False: Faust neither tracks nor commits images.in offsets; `answer` commits the frontier.
    images = app.topic(settings.images_topic, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                       acks=False)
    outputs = {ev.LABELS_OUT: app.topic(settings.labels_topic, key_type=bytes, value_type=bytes,
                                        partitions=settings.partitions),
               ev.DEAD_LETTER: app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes,
                                         partitions=settings.partitions)}
    table = app.Table("stream-history", default=None, partitions=settings.partitions, key_type=bytes,
                      value_type=bytes, use_partitioner=True)  # raw bytes: the app's serializers
    histories = StreamHistories(table)
    health = WorkerHealth()
    frontier = Frontier()
    answering = asyncio.Lock()  # one batch at a time: the agent, read-backs and revocations take turns
    # On SIGTERM: wait for the batch in flight (it delivers its records and commits), then keep the
    # lock, so no other starts; events delivered meanwhile stay uncommitted for the next owner.
    app.drain = answering.acquire

    async def answer(consumed: list[Consumed]) -> None:
        """Process records, each partition's in offset order, deliver their records, commit."""
        if not consumed:
            return
        consumed = sorted(consumed, key=lambda c: (c.partition, c.offset))
        health.batch_started(len(consumed))
        trace = telemetry.batch(consumed)
        records = await (await asyncio.wrap_future(loading)).process([c.value for c in consumed], histories, trace)
        # History first: once the changelog holds a record, a re-delivered event replays it, so a
        # label is never emitted without its replay copy (duplicates stay identical).
        await app.producer.flush()
        deliveries = [await outputs[r.topic].send(key=r.key, value=r.value,
                                                  headers=trace.producing(i, outputs[r.topic].get_topic_name()))
                      for i, r in enumerate(records)]
        await asyncio.gather(*deliveries)
        trace.done(records)
        health.batch_done(sum(r.topic == ev.LABELS_OUT for r in records), [r.reason for r in records if r.reason])
        frontier.advance([(c.partition, c.offset) for c in consumed])
        advanced = {c.partition for c in consumed}
        try:  # Faust's own commit path (producer flush, commit, table bookkeeping) minus its ack tracking
            await app.consumer._commit_offsets({TP(settings.images_topic, p): offset
                                                for p, offset in frontier.offsets().items() if p in advanced})
        except Exception as err:  # e.g. the group rebalanced: the next owner replays these records
            log.warning("could not commit %s offsets (%s); their events will be answered again, "
                        "identically", settings.images_topic, err)

    async def read_back(gaps) -> list[Consumed]:
        found = []
        for gap in gaps:
            records = await read_range(bootstrap(settings.broker), settings.images_topic, gap,
                                       client_options=aiokafka_options(settings))
            log.warning("read back %d of the records at %s partition %d offsets %d..%d that Faust skipped",
                        len(records), settings.images_topic, gap.partition, gap.start, gap.stop - 1)
            health.counters["read_back"] += len(records)
            found += records
        return found

    @app.agent(images, concurrency=1)
    async def classify(stream):
        async for events in stream.take_events(settings.batch_size, within=settings.max_wait_s):
            delivered = [Consumed.from_faust(event) for event in events]
            async with answering:
                plan = frontier.plan([(c.partition, c.offset) for c in delivered])
                batch = await read_back(plan.gaps) + [delivered[i] for i in plan.take]
                await answer(batch)

    stalled: set = set()  # (partition, frontier) with fetched records waiting, seen at the last tick
    probed: set = set()  # gaps the broker had nothing for, not probed again while they stay the same

    @app.timer(1.0)
    async def answer_skipped_tails() -> None:
        # A skipped record with nothing after it never shows up in a batch: only the consumer's fetch
        # position runs ahead of the frontier. A frontier that did not move for two idle ticks while
        # fetched records wait rules out records still on their way through Faust's buffers.
        if answering.locked() or app.rebalancing:
            stalled.clear()
            health.backlog(False)  # a batch runs (or partitions move): judged by the batch's own time
            return
        fetched = await fetch_positions(app.consumer, settings.images_topic)
        async with answering:
            behind = frontier.behind(fetched)
            health.backlog(bool(behind))
            gaps = [gap for gap in behind if gap not in probed]
            confirmed = [gap for gap in gaps if (gap.partition, gap.start) in stalled]
            stalled.clear()
            stalled.update((gap.partition, gap.start) for gap in gaps if gap not in confirmed)
            if confirmed:
                found = await read_back(confirmed)
                await answer(found)
                probed.update(gap for gap in confirmed if not any(c.partition == gap.partition for c in found))

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        # Sent while the flow is stopped: let the batch in flight finish and commit before the
        # partitions move, so that no other worker answers its events too.
        async with answering:
            pass

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.images_topic)
        log.warning("assigned %s partitions: %s", settings.images_topic, mine)
        health.assigned(mine)
        track_seeks(app.consumer, settings.images_topic, frontier)
        # Faust fixes its consumer's long-poll wait at 1.5 s; a broker that holds a fetch that long
        # even when records arrive (the embedded one does) adds it to every event's latency.
        app.consumer._thread._ensure_consumer()._fetcher._fetch_max_wait_ms = settings.fetch_wait_ms
        telemetry.observe_lag(app.consumer, settings.images_topic)

    @app.task
    async def load() -> None:
        try:
            pipeline = await asyncio.wrap_future(loading)
        except Exception as err:  # a model or database that cannot load: nothing to do but stop
            log.error("cannot load the model and database: %s", err)
            await app.crash(err)
            return
        health.loaded(pipeline.classifier.model.identity, pipeline.database_name)

    @app.on_before_shutdown.connect
    async def release(sender, **kwargs) -> None:
        # Sent after the consumer stopped: no batch can start any more.
        if loading.done() and not loading.exception():
            await loading.result().close()
        await asyncio.to_thread(telemetry.shutdown)  # flushes the exporters, off the event loop

    # Probes: readiness once the group was joined (model and database load before the app exists),
    # liveness fails only when a batch is stuck, status for people.
    @app.page("/ready")
    async def ready(web, request):
        return web.json({"ready": health.ready()}, status=200 if health.ready() else 503)

    @app.page("/live")
    async def live(web, request):
        return web.json({"live": health.live()}, status=200 if health.live() else 503)

    @app.page("/status")
    async def status(web, request):
        return web.json(health.status())

    return Worker(app, loading, health)


def track_seeks(consumer, topic: str, frontier: Frontier) -> None:
    """After each of Faust's seeks to committed offsets, start `frontier` from them, and partitions of
    `topic` with no committed offset from their earliest offset (seeking them there).

    Faust seeks back to committed offsets (`perform_seek`) on every assignment, with the flow stopped;
    a partition without one kept its advanced position, so it is sought to its start here, in the
    same step (seeking later, from the event loop, raced records already in flight).
    """
    if getattr(consumer, "_cased_tracks_seeks", False):
        return
    original = consumer.perform_seek

    async def perform_seek() -> None:
        await original()
        mine = [tp for tp in consumer.assignment() if tp.topic == topic]
        start = {tp: consumer._committed_offset.get(tp) for tp in mine}
        todo = [tp for tp, offset in start.items() if offset is None]
        if todo:
            earliest = dict(await consumer.earliest_offsets(*todo))
            # seek_wait runs in the consumer's own thread, as Faust's recovery does.
            await consumer.seek_wait(earliest)
            start.update(earliest)
        frontier.reset({tp.partition: offset for tp, offset in start.items()})

    consumer.perform_seek = perform_seek
    consumer._cased_tracks_seeks = True


async def fetch_positions(consumer, topic: str) -> dict[int, int]:
    """The next offset the Faust consumer's aiokafka client will fetch, per assigned partition of
    `topic` (asked in the consumer's own thread, where aiokafka runs)."""
    client = consumer._thread._ensure_consumer()
    mine = [tp for tp in client.assignment() if tp.topic == topic]

    async def positions() -> list:
        return await asyncio.gather(*(asyncio.wait_for(client.position(tp), 5) for tp in mine),
                                    return_exceptions=True)  # e.g. a partition revoked meanwhile

    return {tp.partition: p for tp, p in zip(mine, await consumer._thread.call_thread(positions))
            if isinstance(p, int)}


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """`cased worker`: blocks until SIGTERM/SIGINT, then stops cleanly."""
    worker = create_worker(settings)
    # Created here, idempotently, rather than by Faust's declare, whose CreateTopics on an existing
    # topic lost records on the embedded broker.
    ensure_topics(settings.broker, [settings.images_topic, settings.labels_topic, settings.dead_letter_topic],
                  settings.partitions, **kafka_python_options(settings))
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
