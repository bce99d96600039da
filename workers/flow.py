"""Batches of images.in records through the worker, three in flight at most, read top to bottom.

For each batch (`Flow.answer`):

1. take: counted in the health, traced, its partitions' stream histories restored;
2. prepare (workers/prepare.py): events read, bytes fetched, images decoded, while the batch before it
   is still in the model;
3. infer, once the batch before has its histories applied (`in_model`): the model and the histories
   (`Pipeline.finish`) -> its records, in the background;
4. deliver, once the batch before is delivered (`delivering`): its histories, then its records produced
   and acknowledged by the broker; then the frontier advanced and committed (workers/offsets.py).

A batch that fails before it is delivered is not committed: its records are answered again, by this
worker or the next (`Frontier.forget_taken`). A device lost for good ends the worker (`on_device_lost`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Sequence

from faust.types import TP

from topics import events as ev
from workers import compat
from workers.batch import Batch
from workers.failures import DeviceLost
from workers.health import WorkerHealth
from workers.histories import ChangelogStore
from workers.offsets import Consumed, Frontier
from workers.outages import Abandoned
from workers.outcomes import Output
from workers.pipeline import Pipeline
from workers.produce import Record, send_records
from workers.telemetry import Telemetry

log = logging.getLogger("cased.worker")

COMMIT_ATTEMPTS = 3  # tries per batch, with backoff, before the batch's commit counts as failed
COMMIT_BACKOFF_S = 0.2  # before the second try, doubled for each next one
COMMIT_FAILURES_FATAL = 3  # batches in a row whose commit failed: the worker stops taking events


class InFlight:
    """The one batch in a stage, as a task; `wait` awaits it once, raising what it raised."""

    def __init__(self):
        self._task: asyncio.Future | None = None

    def start(self, step: Awaitable) -> None:
        self._task = asyncio.ensure_future(step)

    def take(self) -> asyncio.Future | None:
        """The task, handed on (the next batch's delivery waits for this one's): the stage is free."""
        task, self._task = self._task, None
        return task

    async def wait(self) -> None:
        task = self.take()
        if task is not None:
            await task

    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    def busy(self) -> bool:
        return self._task is not None and not self._task.done()


class Flow:
    """Args:
        app: the Faust app (its producer delivers, its consumer commits).
        pipeline: prepares and finishes batches.
        histories: the stream histories (restored per partition, flushed before each delivery).
        frontier: the next offset to answer per partition.
        health, telemetry: what is counted and traced.
        topics: the configured name of each output (LABELS_OUT, DEAD_LETTER) and of images.in.
        batch_size: records per batch at most.
        on_device_lost: called once the device failed for good.
    """

    def __init__(self, app, pipeline: Pipeline, histories: ChangelogStore, frontier: Frontier, health: WorkerHealth,
                 telemetry: Telemetry, topics: dict[str, str], images_topic: str, batch_size: int,
                 on_device_lost: Callable[[DeviceLost], None]):
        self.app, self.pipeline, self.histories, self.frontier = app, pipeline, histories, frontier
        self.health, self.telemetry, self.topics, self.images_topic = health, telemetry, topics, images_topic
        self.batch_size, self.on_device_lost = batch_size, on_device_lost
        self.in_model = InFlight()  # the last batch taken: in the model, then its histories applied
        self.delivering = InFlight()  # the last batch answered: being delivered and committed

    async def answer(self, consumed: Sequence[Consumed]) -> None:
        """Answer records, each partition's in offset order, in batches of at most `batch_size` (a
        read-back can bring back thousands at once). The last ones may still be on their way on return
        (`settle` waits for them, and raises what one raised)."""
        consumed = sorted(consumed, key=lambda c: (c.partition, c.offset))
        for start in range(0, len(consumed), self.batch_size):
            chunk = consumed[start:start + self.batch_size]
            if self.delivering.finished():
                await self.delivering.wait()  # raises what a delivery raised: the agent fails as it would have
            batch = await self.prepare(chunk)
            self.in_model.start(self.infer(chunk, batch))

    async def prepare(self, chunk: list[Consumed]) -> Batch:
        """Steps 1 and 2; returns once the batch before has its histories applied too."""
        self.health.batch_started(len(chunk))
        trace = self.telemetry.batch(chunk)
        await self.histories.ready({c.partition for c in chunk})
        try:
            return await self.pipeline.prepare([c.value for c in chunk], self.histories, trace,
                                               [c.partition for c in chunk])
        finally:
            await self.in_model.wait()

    async def infer(self, chunk: list[Consumed], batch: Batch) -> None:
        """Step 3; then step 4 starts, after the batch before's."""
        try:
            records = await self.pipeline.finish(batch, self.histories)
        except DeviceLost as lost:
            self.frontier.forget_taken()
            self.on_device_lost(lost)
            raise
        except BaseException:
            self.frontier.forget_taken()  # answered again, by this worker or the next
            raise
        self.delivering.start(self.deliver(chunk, records, batch, self.delivering.take()))

    async def deliver(self, chunk: list[Consumed], records: list[Output], batch: Batch,
                      before: asyncio.Future | None) -> None:
        """Step 4."""
        try:
            if before is not None:
                await before
            # History first: once the changelog holds a record, a re-delivered event replays it, so a
            # label is never emitted without its replay copy (duplicates stay identical).
            await self.histories.flush()
            # Queuing does not wait once the topics' metadata is known, so its CPU time is its own.
            with self.health.costs.measure("produce"):
                deliveries = await send_records(self.app.producer, [
                    Record(self.topics[r.topic], r.key, r.value, headers=batch.trace.producing(i, self.topics[r.topic]))
                    for i, r in enumerate(records)])
            await asyncio.gather(*deliveries)
            batch.trace.done(records)
        except BaseException:
            self.frontier.forget_taken()
            raise
        self.health.batch_done(sum(r.topic == ev.LABELS_OUT for r in records), [r.reason for r in records if r.reason],
                               reused=sum(r.reused for r in records))
        self.frontier.advance([(c.partition, c.offset) for c in chunk])
        await self.commit({c.partition for c in chunk})

    async def commit(self, partitions: set[int]) -> None:
        """Commit the frontier of `partitions`, retried with backoff. A batch whose commit failed is
        answered again, identically, by whoever owns its partition next; batches failing in a row mean
        the group coordinator is gone or the client broke: the worker halts and /live says why."""
        offsets = {TP(self.images_topic, p): o for p, o in self.frontier.offsets().items() if p in partitions}
        delay, error = COMMIT_BACKOFF_S, None
        for _ in range(COMMIT_ATTEMPTS):
            try:
                await compat.commit(self.app.consumer, offsets)
                self.health.committed()
                return
            except Exception as err:  # a rebalance, a coordinator away, a client change
                error = err
                await asyncio.sleep(delay)
                delay *= 2
        reason = f"committing {self.images_topic} offsets failed {COMMIT_ATTEMPTS} times: " \
                 f"{type(error).__name__}: {error}"
        failures = self.health.commit_failed(reason)
        if failures >= COMMIT_FAILURES_FATAL:
            log.error("%s; %d batches in a row: taking no more events (/live fails)", reason, failures)
            self.health.halt(f"{reason} ({failures} batches in a row)")
        else:
            log.warning("%s; their events will be answered again, identically", reason)

    async def settle(self) -> None:
        """Wait until every batch taken so far is answered and committed (raises what one raised)."""
        try:
            await self.in_model.wait()
        finally:
            await self.delivering.wait()

    async def settle_abandoning(self) -> None:
        """`settle`, with a batch paused by an outage abandoned instead of waited for: its events stay
        uncommitted (a revocation, a stop). A batch whose device was lost is not answered either."""
        self.pipeline.outages.abandon()
        with contextlib.suppress(Abandoned, DeviceLost):
            await self.settle()

    def busy(self) -> bool:
        """Whether a batch taken is still on its way (in the model, being delivered or committed)."""
        return self.in_model.busy() or self.delivering.busy()
