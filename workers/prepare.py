"""A batch's first half, everything before the model: read the events, fetch their bytes, decode them.

- each value is read as an event of the contract (else its `invalid_event` dead letter); an event
  published twice in the batch is answered once; one answered before is left to its replay;
- uri events are fetched concurrently (bounded); the storage failing for everyone is waited out here
  (workers/outages.py), so the batch waits with it;
- images are decoded in the decode threads, one call per thread per batch, JPEGs at the smallest DCT
  scale the model needs (or only their headers checked, for the batched decoder), with the change
  gate's thumbnail for the frames it may answer.
Nothing here needs the batch before to be finished: the worker prepares batch N+1 while N is in the model.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from cased_core.method import gate
from cased_core.method import history
from topics import events as ev
from workers.batch import Batch, Decoded
from workers.costs import StageCosts
from workers.decode import ImageLimits, decode_image, inspect_jpeg, jpeg_gray
from workers.failures import RecordFault
from workers.fetch import Fetcher
from workers.histories import BatchHistories, HistoryStore
from workers.inference import ModelInput
from workers.outages import Outages
from workers.outcomes import Outcomes
from workers.telemetry import NULL_TRACE, BatchTrace, NullTrace

FETCH_CONCURRENCY = 32  # uri fetches in flight at once


class Preparer:
    """Args:
        fetcher: gets each uri event's bytes.
        outages: what is down now; a fetch failing for everyone waits there.
        model_input: what the model takes (the decode's target size, tensors or the model's transform).
        image_limits: what is decoded at all.
        decode_threads: threads decoding images (decoding releases the GIL).
        costs: CPU time per stage.
        gate_policy: the change gate's (None: no frame is gated, no thumbnail made).
        default_history: the history policy of streams that do not name one (an upload stream is never gated).
        answers: answered events kept per stream (how far back a replay is recognised).
    """

    def __init__(self, fetcher: Fetcher, outages: Outages, model_input: ModelInput, image_limits: ImageLimits,
                 decode_threads: int, costs: StageCosts, gate_policy: gate.GatePolicy | None,
                 default_history: str, answers: int):
        self.fetcher, self.outages, self.model_input, self.image_limits = fetcher, outages, model_input, image_limits
        self.decode_threads, self.costs, self.gate_policy = decode_threads, costs, gate_policy
        self.default_history, self.answers = default_history, answers
        self._fetch_slots = asyncio.Semaphore(FETCH_CONCURRENCY)
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")

    async def prepare(self, values: Sequence[bytes | None], histories: HistoryStore,
                      trace: BatchTrace | NullTrace = NULL_TRACE,
                      partitions: Sequence[int | None] | None = None) -> Batch:
        """The batch, its events read, fetched and decoded; `histories` is only read, to skip the work for
        events answered already."""
        batch = Batch(values, partitions if partitions is not None else [None] * len(values), trace,
                      Outcomes(values))
        # A view of its own: the batch before may still be in the model, its histories not yet written;
        # this one only skips the work for events answered already, `finish` reads them again.
        todo = self._read(batch, BatchHistories(histories, self.answers))
        data = await self._fetch_all(batch, todo)
        await self._decode_all(batch, data)
        return batch

    def gated(self, event: ev.ImageEvent) -> bool:
        """Whether the change gate may answer this event from an earlier frame of its stream: a gate is
        set, the stream is a live one, and it did not opt out (attrs gate: off)."""
        return self.gate_policy is not None and self.gate_policy.max_frames > 1 and \
            event.attrs.get(ev.HISTORY_ATTR, self.default_history) != history.UPLOAD and \
            event.attrs.get(ev.GATE_ATTR) != ev.GATE_OFF

    async def close(self) -> None:
        await self.fetcher.close()
        self._decode_pool.shutdown(wait=True)

    def _read(self, batch: Batch, known: BatchHistories) -> list[int]:
        """Each value as an event; the indexes of those to fetch and decode (not answered before)."""
        first: dict[tuple[str, str], int] = {}
        todo = []
        with self.costs.measure("consume"):
            for i, value in enumerate(batch.values):
                try:
                    with batch.trace.stage("consume", i):
                        event = ev.decode_image_event(value)
                except ev.InvalidEvent as err:
                    batch.outcomes.invalid(i, err)
                    continue
                key = (event.stream_id, event.event_id)
                if key in first:  # published twice in one batch: answered once
                    batch.outcomes.copy(i, first[key])
                    continue
                first[key] = i
                batch.events[i] = event
                try:
                    answered = known.answered(event.stream_id, event.event_id) is not None
                except Exception:  # an unreadable entry: `finish` reads it again and dead-letters the event
                    answered = True
                batch.trace.identify(i, event, replayed=answered)
                if not answered:
                    todo.append(i)
        return todo

    async def _fetch_all(self, batch: Batch, todo: list[int]) -> dict[int, bytes]:
        """The bytes of each event in `todo`: inline ones as they are, uri ones fetched concurrently."""
        data: dict[int, bytes] = {}
        remote = []
        with self.costs.measure("fetch"):
            for i in todo:
                try:
                    with batch.trace.stage("fetch", i):
                        inline = self.fetcher.inline(batch.events[i])
                except RecordFault as fault:
                    batch.outcomes.fail(i, batch.events[i], fault)
                    continue
                if inline is None:
                    remote.append(i)
                else:
                    data[i] = inline
        if remote:
            fetched = await asyncio.gather(*(self._fetch(batch, i) for i in remote))
            data.update((i, d) for i, d in zip(remote, fetched) if d is not None)
        return data

    async def _fetch(self, batch: Batch, i: int) -> bytes | None:
        """Event i's bytes; None once its failure is its dead letter. The storage failing for everyone
        is waited out here: the batch, and every batch after it, waits with it."""
        event = batch.events[i]
        try:
            # Not in `costs`: thread CPU time across an await would count whatever else the event loop
            # ran meanwhile. A uri fetch's CPU (HTTP, S3 clients) lands in the process's unattributed rest.
            async with self._fetch_slots:
                with batch.trace.stage("fetch", i):
                    return await self.outages.ride_out(lambda: self.fetcher.fetch(event))
        except Exception as err:
            batch.outcomes.fail(i, event, err)
        return None

    async def _decode_all(self, batch: Batch, data: dict[int, bytes]) -> None:
        """Decode in the decode threads, one call per thread for the whole batch (a call per image costs
        the event loop a wake-up per image)."""
        if not data:
            return
        loop = asyncio.get_running_loop()
        work = [(i, d, self.gated(batch.events[i])) for i, d in data.items()]
        chunks = [work[n::self.decode_threads] for n in range(min(self.decode_threads, len(work)))]
        decoded = await asyncio.gather(*(loop.run_in_executor(self._decode_pool, self._decode_chunk, chunk,
                                                               batch.trace) for chunk in chunks))
        for i, result, thumb in sorted((item for chunk in decoded for item in chunk), key=lambda item: item[0]):
            if isinstance(result, Exception):
                batch.outcomes.fail(i, batch.events[i], result)
            else:
                batch.ready.append(Decoded(i, batch.events[i], result, thumb))

    def _decode_chunk(self, chunk: list[tuple[int, bytes, bool]], trace: BatchTrace | NullTrace) -> list[tuple]:
        """In a decode thread: each image decoded to uint8 pixels (3, H, W), or only its header checked
        when a batched decoder takes it, or, without a tensor preprocess, run through the model's own
        transform; with the change gate's thumbnail where it is `gated`. A failure is returned for its
        image alone: (index, pixels or exception, thumbnail or None)."""
        target = self.model_input
        out: list[tuple] = []
        for i, data, gated in chunk:
            thumb = None
            try:
                with self.costs.measure("decode"), trace.stage("decode", i):
                    encoded = inspect_jpeg(data, self.image_limits) if target.batched_jpeg else None
                    image = None if encoded is not None else decode_image(data, self.image_limits, target.size)
                if gated:
                    with self.costs.measure("gate"):
                        thumb = gate.thumbnail(jpeg_gray(data) if image is None else np.asarray(image.convert("L")))
                if encoded is not None:
                    out.append((i, encoded, thumb))
                elif target.tensor_preprocess is not None:
                    with self.costs.measure("decode"):
                        out.append((i, torch.from_numpy(np.array(image)).permute(2, 0, 1), thumb))
                else:
                    with self.costs.measure("preprocess"):
                        out.append((i, target.preprocess(image), thumb))
            except Exception as err:
                out.append((i, err, None))
        return out
