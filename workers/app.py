"""The Faust wiring: the app, an agent that reads images.in in batches (the batches' way through the
worker is workers/flow.py), a timer for skipped records, the rebalance hooks, the web pages.

Offsets: the worker commits images.in itself, never Faust's acks. Per partition it keeps a frontier,
the next offset to answer (workers/offsets.py), advanced only after a batch's records were delivered
(the broker acknowledged them); records Faust skipped are read back and answered in order before
anything after them. The agent runs with concurrency 1 and a revocation waits for the batch in flight.

A dependency failing for everyone (workers/failures.py) pauses the batch that met it, and with it the
agent: the events stay unanswered and uncommitted until the dependency is back (workers/outages.py).
A revocation or a stop does not wait for that: the paused batch is abandoned, uncommitted, for whoever
owns its partitions next. A device lost for good ends the worker with EXIT_DEVICE_LOST, nothing
committed past the batches delivered before it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Awaitable, Callable

import faust

from topics import events as ev
from workers import compat, prometheus
from workers.clients import bootstrap, ensure_topics
from workers.failures import DeviceLost
from workers.flow import Flow
from workers.health import WorkerHealth
from workers.histories import ChangelogStore
from workers.offsets import Consumed, Frontier, Gap, read_partition, read_range
from workers.outages import Abandoned
from workers.pipeline import Pipeline
from workers.ports import port_problem
from workers.produce import Record, send_records
from workers.security import aiokafka_options, faust_credentials, kafka_python_options
from workers.settings import Settings
from workers.telemetry import Telemetry

log = logging.getLogger("cased.worker")

EXIT_DEVICE_LOST = 3  # the exit status of a worker whose device failed for good: restart it clean


class WorkerApp(faust.App):
    """Faust's app, whose stop first runs `drain` (before Faust stops the consumer and the tables)."""

    drain: Callable[[], Awaitable[Any]] | None = None

    async def on_stop(self) -> None:
        if self.drain is not None:
            await self.drain()
        await super().on_stop()


class Worker:
    """One worker: the Faust app, its agent and timer, their hooks, and its pages. The batches' way
    through the worker is the Flow's (workers/flow.py).

    `init` builds one from settings; `__init__` takes the parts (a pipeline still loading, telemetry,
    health), so that each step can be driven in process.
    """

    @classmethod
    def init(cls, settings: Settings, pipeline: Pipeline, telemetry: Telemetry | None = None,
             stop: Callable[[], None] | None = None) -> "Worker":
        """A worker for `settings` around a loaded `pipeline` (`Pipeline.init`): the model and
        database are checked before the consumer joins its group, so a worker that cannot load them
        never takes partitions. `stop`: ends the process gracefully (a SIGTERM to itself by default)."""
        app = WorkerApp(
            settings.app_id, broker=settings.broker, value_serializer="raw", key_serializer="raw",
            topic_partitions=settings.partitions, store="memory://",
            # Joins the group in seconds instead of 30 s (measured against the embedded broker).
            broker_rebalance_timeout=5.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
            web_port=settings.web_port, web_bind=settings.web_host, web_in_thread=False,
            producer_acks=-1,
            # images.in events Faust buffers ahead of the agent: the memory bound under overload (it
            # pauses fetching at 80% full). At least ~2 s of work: when every partition is paused
            # Faust sleeps a whole second. The default, 4096, is 4 GiB of records at Kafka's 1 MB limit.
            stream_buffer_maxsize=1024,
            broker_credentials=faust_credentials(settings),  # CASED_KAFKA_*: SASL/TLS, None for PLAINTEXT
        )
        health = WorkerHealth(costs=pipeline.costs, outages=pipeline.outages, batch_limit=pipeline.batch_limit)
        return cls(settings, app, pipeline, telemetry or Telemetry.from_env(), health,
                   stop or (lambda: os.kill(os.getpid(), signal.SIGTERM)))

    def __init__(self, settings: Settings, app: WorkerApp, pipeline: Pipeline, telemetry: Telemetry,
                 health: WorkerHealth, stop: Callable[[], None]):
        self.settings, self.app, self.pipeline, self.telemetry, self.health = settings, app, pipeline, telemetry, health
        self.stop = stop
        self.device_lost: str | None = None  # why the worker ends: its exit status is then EXIT_DEVICE_LOST
        # acks=False: Faust neither tracks nor commits images.in offsets; the flow commits the frontier.
        self.images = app.topic(settings.images_topic, key_type=bytes, value_type=bytes,
                                partitions=settings.partitions, acks=False)
        outputs = {ev.LABELS_OUT: settings.labels_topic, ev.DEAD_LETTER: settings.dead_letter_topic}
        for name in outputs.values():
            app.topic(name, key_type=bytes, value_type=bytes, partitions=settings.partitions)
        changelog = history_topic(settings)
        app.topic(changelog, key_type=bytes, value_type=bytes, partitions=settings.partitions)
        self.histories = ChangelogStore(
            changelog,
            read=lambda p: read_partition(bootstrap(settings.broker), changelog, p,
                                          client_options=aiokafka_options(settings)),
            send=lambda entries: send_records(app.producer, [Record(changelog, key, value, partition)
                                                             for partition, key, value in entries]))
        self.frontier = Frontier()
        self.flow = Flow(app, pipeline, self.histories, self.frontier, health, telemetry, outputs,
                         settings.images_topic, settings.batch_size, self.end)
        self.answering = asyncio.Lock()  # the agent, read-backs and revocations take turns
        self._stalled: set = set()  # (partition, frontier) with fetched records waiting, seen at the last tick
        self._probed: set = set()  # gaps the broker had nothing for, not probed again while they stay the same
        # On SIGTERM: wait for the batch in flight (it delivers its records and commits), then keep the
        # lock, so no other starts; events delivered meanwhile stay uncommitted for the next owner.
        app.drain = self._drain
        app.agent(self.images, concurrency=1, name="cased.classify")(self.take)
        app.timer(1.0, name="cased.skipped-tails")(self.answer_skipped_tails)
        app.task(self.load)
        app.on_partitions_revoked.connect(self.on_revoked)
        app.on_partitions_assigned.connect(self.on_assigned)
        app.on_before_shutdown.connect(self.release)
        # Probes: readiness once loaded and joined, liveness fails when stuck, status for people.
        app.page("/ready")(_view(lambda: ({"ready": health.ready()}, health.ready())))
        app.page("/live")(_view(lambda: ({"live": health.live()}, health.live())))
        app.page("/status")(_view(lambda: (health.status(), True)))
        telemetry.observe_outages(pipeline.outages.status)
        app.page("/metrics")(prometheus.page(health, telemetry))  # for Prometheus: workers/prometheus.py

    # -- the agent -----------------------------------------------------------------------------------

    async def take(self, stream) -> None:
        """The agent: batches of delivered records, with any records Faust skipped before them."""
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.max_wait_s):
            if self.health.halted:  # commits keep failing: leave the events uncommitted for the next
                await asyncio.Event().wait()  # worker; /live fails and the orchestrator restarts this one
            delivered = [Consumed.from_faust(event) for event in events]
            async with self.answering:
                plan = self.frontier.plan([(c.partition, c.offset) for c in delivered])
                batch = await self.read_back(plan.gaps) + [delivered[i] for i in plan.take]
                try:
                    await self.flow.answer(batch)
                except (Abandoned, DeviceLost):  # answered again, by this worker or the next
                    self.frontier.forget_taken()

    def end(self, lost: DeviceLost) -> None:
        """The device cannot recover in this process: not live from now on, and stop (gracefully: the
        batches delivered before it commit, nothing after them does); the exit status says why."""
        if self.device_lost is None:
            self.device_lost = lost.detail
            log.error("the device failed for good (%s): the worker stops; events not answered stay uncommitted",
                      lost.detail)
            self.health.halt(f"device lost: {lost.detail}")
            self.stop()

    async def read_back(self, gaps: list[Gap]) -> list[Consumed]:
        found = []
        for gap in gaps:
            records = await read_range(bootstrap(self.settings.broker), self.settings.images_topic, gap,
                                       client_options=aiokafka_options(self.settings))
            log.warning("read back %d of the records at %s partition %d offsets %d..%d that Faust skipped",
                        len(records), self.settings.images_topic, gap.partition, gap.start, gap.stop - 1)
            self.health.read_back(len(records))
            found += records
        return found

    async def _drain(self) -> None:
        self.pipeline.outages.abandon()  # a stop does not wait for a dependency to come back
        await self.answering.acquire()
        await self.flow.settle_abandoning()

    async def answer_skipped_tails(self) -> None:
        """The timer: a skipped record with nothing after it never shows up in a batch; only the
        consumer's fetch position runs ahead of the frontier. A frontier that did not move for two idle
        ticks while fetched records wait rules out records still on their way through Faust's buffers."""
        if self.answering.locked() or self.flow.busy() or self.app.rebalancing or self.health.halted:
            self._stalled.clear()
            self.health.backlog(False)  # a batch runs (or partitions move): judged by the batch's own time
            return
        fetched = await compat.fetch_positions(self.app.consumer, self.settings.images_topic)
        async with self.answering:
            behind = self.frontier.behind(fetched)
            self.health.backlog(bool(behind))
            gaps = [gap for gap in behind if gap not in self._probed]
            confirmed = [gap for gap in gaps if (gap.partition, gap.start) in self._stalled]
            self._stalled.clear()
            self._stalled.update((gap.partition, gap.start) for gap in gaps if gap not in confirmed)
            if confirmed:
                found = await self.read_back(confirmed)
                await self.flow.answer(found)
                await self.flow.settle()
                self._probed.update(gap for gap in confirmed if not any(c.partition == gap.partition for c in found))

    # -- group membership and lifecycle --------------------------------------------------------------

    async def on_revoked(self, sender, revoked, **kwargs) -> None:
        # Sent while the flow is stopped: let the batch in flight finish and commit before the
        # partitions move, so that no other worker answers its events too; one paused by an outage is
        # abandoned (uncommitted) rather than holding the whole group's rebalance.
        self.pipeline.outages.abandon()
        async with self.answering:
            await self.flow.settle_abandoning()

    async def on_assigned(self, sender, assigned, **kwargs) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.settings.images_topic)
        log.info("assigned %s partitions: %s", self.settings.images_topic, mine)
        if self.device_lost is None:
            self.pipeline.outages.carry_on()  # batches wait outages out again
        self.health.assigned(mine)
        self.histories.assign(mine)  # restores the new partitions' histories; batches wait for them
        compat.require_live(self.app.consumer)  # raising here crashes the app: refused, with why
        compat.track_seeks(self.app.consumer, self.settings.images_topic, self.frontier.reset)
        # Faust fixes its consumer's long-poll wait at 1.5 s; a broker that holds a fetch that long
        # even when records arrive (the embedded one does) adds it to every event's latency.
        compat.set_fetch_wait(self.app.consumer, self.settings.fetch_wait_ms)
        self.telemetry.observe_lag(self.app.consumer, self.settings.images_topic)

    async def load(self) -> None:
        """A task: once the app runs, its health reports what it serves (loaded before it started)."""
        pipeline = self.pipeline
        self.health.loaded(pipeline.classifier.model.identity, pipeline.database_name, pipeline.serving())

    async def release(self, sender, **kwargs) -> None:
        # Sent after the consumer stopped: no batch can start any more.
        await self.pipeline.close()
        await asyncio.to_thread(self.telemetry.shutdown)  # flushes the exporters, off the event loop



def _view(answer: Callable[[], tuple[dict, bool]]):
    """A Faust page answering `answer()`'s body, 200 when its flag is true, else 503."""
    async def view(web, request):
        body, ok = answer()
        return web.json(body, status=200 if ok else 503)

    return view


def history_topic(settings: Settings) -> str:
    """The stream histories' changelog: partitioned like images.in, compacted (one entry per key)."""
    return f"{settings.app_id}-stream-history-changelog"


def run_worker(settings: Settings) -> None:
    """`cased worker`: blocks until SIGTERM (then returns, the worker stopped cleanly) or SIGINT.

    Raises:
        ValueError: the web port cannot be listened on (checked before anything loads).
        KeyboardInterrupt: after Ctrl-C (SIGINT), once the worker stopped as cleanly as on SIGTERM.
    """
    compat.require_compatible()  # before anything starts: the guarantees rest on these internals
    # Before the model's seconds of loading: a second worker on one machine is told at once.
    taken = port_problem(settings.web_host, settings.web_port)
    if taken:
        raise ValueError(f"web_port {settings.web_port}: cannot listen on {settings.web_host}:{settings.web_port} "
                         f"({taken}); another worker on this machine? Give this one another port with "
                         "CASED_WEB_PORT or --web-port")
    # Before torch loads OpenMP: idle intra-op threads sleep instead of spinning. Spinning, they burned
    # 1.5 ms of CPU per image (bench stream, tiny model, 640x480), the cores the decode threads need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Created here, idempotently, rather than by Faust's declare, whose CreateTopics on an existing
    # topic lost records on the embedded broker. First: an unreachable broker fails in a second.
    ensure_topics(settings.broker, [settings.images_topic, settings.labels_topic, settings.dead_letter_topic],
                  settings.partitions, **kafka_python_options(settings))
    ensure_topics(settings.broker, [history_topic(settings)], settings.partitions,
                  configs={"cleanup.policy": "compact"}, **kafka_python_options(settings))
    # The consumer joins its group only once the model and database loaded: a worker that cannot load
    # them fails with one line (ModelLoadError, DatabaseError) and never takes partitions.
    worker = Worker.init(settings, Pipeline.init(settings))
    serving = worker.pipeline.serving()
    log.info("loaded model %s and database %s (device %s, search %s)", worker.pipeline.classifier.model.identity,
             worker.pipeline.database_name, serving.get("device"), serving.get("search"))
    log.info("reading %s at %s as group %s; /ready, /live, /status and /metrics on http://%s:%d",
             settings.images_topic, settings.broker, settings.app_id, settings.web_host, settings.web_port)
    # Logging is the command line's (workers/logs.py): Faust's own set-up would add colour codes, a
    # progress spinner and its start-up tables.
    runner = _Runner(worker.app, quiet=True, override_logging=False)
    runner.spinner = None
    try:
        runner.execute_from_commandline()
    except SystemExit as stopped:
        if worker.device_lost is not None:
            raise SystemExit(EXIT_DEVICE_LOST) from None  # stopped itself: the device failed for good
        if runner.interrupted and not stopped.code:
            raise KeyboardInterrupt from None  # stopped cleanly after Ctrl-C: the command exits with 130
        raise


class _Runner(faust.Worker):
    """Faust's worker, noting a SIGINT (it stops on SIGINT as on SIGTERM, and exits 0 either way)."""

    interrupted = False

    def _on_sigint(self) -> None:
        self.interrupted = True
        super()._on_sigint()
