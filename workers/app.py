"""The Faust app: an agent that reads images.in in batches and writes labels.out / images.dlq.

Offsets: `take_events` acks a batch only after the loop body finishes, and the body finishes only
after every record of the batch was delivered (the broker acknowledged it). The agent runs with
concurrency 1 so no offset is committed past an event still in flight.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import faust
import msgpack

from cased_core.classifier import Classifier, ClassifierConfig
from cased_core.database import load_database
from cased_core.history import HistoryPolicy
from cased_core.lexicon import load_lexicon
from cased_core.model import load_model
from topics import events as ev
from workers.clients import ensure_topics
from workers.fetch import Fetcher, FetchLimits
from workers.health import WorkerHealth
from workers.pipeline import Pipeline
from workers.security import faust_credentials, kafka_python_options
from workers.settings import Settings
from workers.telemetry import Received, Telemetry

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


@dataclass
class Worker:
    app: faust.App
    pipeline: Pipeline
    health: WorkerHealth


def fetch_limits(settings: Settings) -> FetchLimits:
    return FetchLimits(
        max_bytes=settings.max_bytes, timeout_s=settings.fetch_timeout_s, retries=settings.fetch_retries,
        allow_private=bool(settings.allow_private_hosts),
        allowed_buckets=frozenset(b.strip() for b in settings.s3_buckets.split(",") if b.strip()),
        file_root=Path(settings.file_root) if settings.file_root else None)


def build_pipeline(settings: Settings) -> Pipeline:
    """Load the model and database (the slow part of start-up) and wire the batch pipeline."""
    model = load_model(settings.model, settings.pretrained, settings.device)
    database = load_database(settings.database, model.identity, settings.cache_dir)
    classifier = Classifier(model, database, config=ClassifierConfig(k=settings.k, alpha=settings.alpha,
                                                                    top_n=settings.top_n))
    policy = HistoryPolicy(mode=settings.history_policy, margin=settings.history_margin,
                           patience=settings.history_patience)
    return Pipeline(classifier, Fetcher(fetch_limits(settings)), policy, load_lexicon(), database.name,
                    max_pixels=settings.max_pixels)


def create_worker(settings: Settings, pipeline: Pipeline | None = None, telemetry: Telemetry | None = None) -> Worker:
    pipeline = pipeline or build_pipeline(settings)
    telemetry = telemetry or Telemetry.from_env()  # off unless OTEL_* variables ask for it
    app = faust.App(
        settings.app_id, broker=settings.broker, value_serializer="raw", key_serializer="raw",
        topic_partitions=settings.partitions, store="memory://",
        # Joins the group in seconds instead of 30 s (measured against the embedded broker).
        broker_rebalance_timeout=5.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
        broker_commit_every=settings.batch_size, broker_commit_interval=1.0,
        web_port=settings.web_port, web_bind="0.0.0.0", web_in_thread=False,
        producer_acks=-1,
        broker_credentials=faust_credentials(settings),  # CASED_KAFKA_*: SASL/TLS, None for PLAINTEXT
    )
    images = app.topic(settings.images_topic, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    outputs = {ev.LABELS_OUT: app.topic(settings.labels_topic, key_type=bytes, value_type=bytes,
                                        partitions=settings.partitions),
               ev.DEAD_LETTER: app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes,
                                         partitions=settings.partitions)}
    table = app.Table("stream-history", default=None, partitions=settings.partitions, key_type=bytes,
                      value_type=bytes, use_partitioner=True)  # raw bytes: the app's serializers
    histories = StreamHistories(table)
    health = WorkerHealth(pipeline.classifier.model.identity, pipeline.database_name)

    @app.agent(images, concurrency=1)
    async def classify(stream):
        async for events in stream.take_events(settings.batch_size, within=settings.max_wait_s):
            health.batch_started(len(events))
            trace = telemetry.batch([Received.from_faust(event) for event in events])
            records = await pipeline.process([event.value for event in events], histories, trace)
            # History first: once the changelog holds a record, a re-delivered event replays it, so a
            # label is never emitted without its replay copy (duplicates stay identical).
            await app.producer.flush()
            deliveries = [await outputs[r.topic].send(key=r.key, value=r.value,
                                                      headers=trace.producing(i, outputs[r.topic].get_topic_name()))
                          for i, r in enumerate(records)]
            await asyncio.gather(*deliveries)
            trace.done(records)
            health.batch_done(sum(r.topic == ev.LABELS_OUT for r in records),
                              [r.reason for r in records if r.reason])

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.images_topic)
        log.warning("assigned %s partitions: %s", settings.images_topic, mine)
        health.assigned(mine)
        rewind_uncommitted_on_seek(app.consumer, settings.images_topic)
        telemetry.observe_lag(app.consumer, settings.images_topic)

    @app.on_before_shutdown.connect
    async def release(sender, **kwargs) -> None:
        # Sent after the consumer stopped: no batch can start any more.
        await pipeline.close()
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

    return Worker(app, pipeline, health)


def rewind_uncommitted_on_seek(consumer, topic: str) -> None:
    """Make partitions of `topic` that have no committed offset start from their earliest offset.

    Faust drops records fetched while a rebalance has the flow stopped, then seeks back only to
    committed offsets (`perform_seek`); a partition without one kept the advanced position and lost
    its first records (seen on the embedded broker when a second worker joined). So `perform_seek`
    is extended: after it, while the flow is still stopped, uncommitted partitions seek to their
    start. Doing it later, from the event loop, raced records already in flight.
    """
    if getattr(consumer, "_cased_rewinds", False):
        return
    original = consumer.perform_seek

    async def perform_seek() -> None:
        await original()
        todo = [tp for tp in consumer.assignment()
                if tp.topic == topic and consumer._committed_offset.get(tp) is None]
        if todo:
            # seek_wait runs in the consumer's own thread, as Faust's recovery does.
            await consumer.seek_wait(dict(await consumer.earliest_offsets(*todo)))
            log.info("%d uncommitted %s partitions start from their earliest offset", len(todo), topic)

    consumer.perform_seek = perform_seek
    consumer._cased_rewinds = True


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """`cased worker`: blocks until SIGTERM/SIGINT, then stops cleanly."""
    worker = create_worker(settings)
    # Created here, idempotently, rather than by Faust's declare, whose CreateTopics on an existing
    # topic lost records on the embedded broker.
    ensure_topics(settings.broker, [settings.images_topic, settings.labels_topic, settings.dead_letter_topic],
                  settings.partitions, **kafka_python_options(settings))
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
