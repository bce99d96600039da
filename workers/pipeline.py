"""One batch of images.in values -> labels.out and images.dlq records, independent of Faust.

decode events -> fetch bytes (concurrent, bounded) -> decode + preprocess (thread pool) -> encode,
search, score (the one inference thread that owns the model) -> apply each stream's history in event
order -> records. Every input value yields exactly one record, whatever fails: a failure that belongs
to one record becomes its `internal_error` dead letter, and a batch step that fails is retried on
halves of the batch until the records that make it fail are alone.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from cased_core import history
from cased_core.classifier import Classifier, Prediction
from cased_core.lexicon import Lexicon
from topics import events as ev
from workers.decode import DecodeError, ImageLimits, decode_image, input_size_of
from workers.fetch import FetchError, Fetcher
from workers.histories import MAX_ANSWERS, BatchHistories, HistoryStore
from workers.telemetry import NULL_TRACE, BatchTrace, NullTrace

log = logging.getLogger("cased.worker")


@dataclass(frozen=True)
class Output:
    topic: str  # LABELS_OUT or DEAD_LETTER (the configured names are mapped by the app)
    key: bytes | None
    value: bytes
    reason: str | None = None  # a dead letter's reason, for the worker's counters


@dataclass
class _Ready:
    """An event whose image is preprocessed, waiting for the model."""
    index: int
    event: ev.ImageEvent
    value: bytes
    pixels: torch.Tensor
    extras: list[str]  # names the stream already used: extra candidates


class Pipeline:
    def __init__(self, classifier: Classifier, fetcher: Fetcher, policy: history.HistoryPolicy,
                 lexicon: Lexicon, database_name: str, image_limits: ImageLimits = ImageLimits(),
                 fetch_concurrency: int = 32, decode_threads: int = 2, same_concept_threshold: float = 0.9,
                 answers: int = MAX_ANSWERS, clock: Callable[[], float] = time.time):
        self.classifier, self.fetcher, self.policy, self.lexicon = classifier, fetcher, policy, lexicon
        self.database_name, self.image_limits, self.clock = database_name, image_limits, clock
        self.same_concept_threshold, self.answers = same_concept_threshold, answers
        self.input_size = input_size_of(classifier.model.preprocess)
        self._fetch_slots = asyncio.Semaphore(fetch_concurrency)
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        # One thread owns the model: torch runs there, never on the event loop.
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def close(self) -> None:
        await self.fetcher.close()
        self._decode_pool.shutdown(wait=True)
        self._inference.shutdown(wait=True)

    async def process(self, values: Sequence[bytes | None], histories: HistoryStore,
                      trace: BatchTrace | NullTrace = NULL_TRACE,
                      partitions: Sequence[int | None] | None = None) -> list[Output]:
        """Records for `values` (in order, one each).

        Args:
            values: images.in record values, each partition's in offset order.
            histories: the stream histories (a ChangelogStore in the worker), read and written in event
                order, once per stream per batch.
            trace: gets the stages (workers.telemetry).
            partitions: the images.in partition of each value; a stream's history entries are
                written to the changelog partition of the same number.
        """
        partitions = partitions if partitions is not None else [None] * len(values)
        batch = BatchHistories(histories, self.answers)
        outputs: list[Output | None] = [None] * len(values)
        events: dict[int, ev.ImageEvent] = {}
        first: dict[tuple[str, str], int] = {}  # an event published twice in one batch is answered once
        copies: dict[int, int] = {}
        for i, value in enumerate(values):
            try:
                with trace.stage("consume", i):
                    event = ev.decode_image_event(value)
            except ev.InvalidEvent as err:  # deterministic: a re-delivery gets the same dead letter
                outputs[i] = self._dead(ev.INVALID_EVENT, err.detail, value, err.event_id, err.stream_id)
                continue
            key = (event.stream_id, event.event_id)
            if key in first:
                copies[i] = first[key]
                continue
            first[key] = i
            try:
                stored = batch.answered(event.stream_id, event.event_id)
            except Exception as err:  # a history entry that cannot be read belongs to this stream only
                outputs[i] = self._internal(err, value, event)
                continue
            trace.identify(i, event, replayed=stored is not None)
            if stored is not None:  # a re-delivered event: the very same record again
                topic, answer = stored
                outputs[i] = Output(topic, event.stream_id.encode(), answer,
                                    ev.decode_dead_letter(answer).reason if topic == ev.DEAD_LETTER else None)
            else:
                events[i] = event
        prepared = await asyncio.gather(*(self._prepare(i, event, values[i], batch, trace)
                                          for i, event in events.items()))
        ready = []
        for i, item in zip(events, prepared):
            if isinstance(item, Output):
                outputs[i] = item
            else:
                ready.append(item)
        for item, prediction in zip(ready, await self._classify_isolating(ready, trace)):
            if isinstance(prediction, Exception):
                outputs[item.index] = self._internal(prediction, item.value, item.event)
                continue
            try:
                with trace.stage("history", item.index):
                    outputs[item.index] = self._label(item.event, prediction, batch)
            except Exception as err:
                outputs[item.index] = self._internal(err, item.value, item.event)
        for i, event in events.items():  # labels and dead letters alike: a re-delivery gets the same
            batch.answer(partitions[i], event.stream_id, event.event_id, outputs[i].topic, outputs[i].value)
        batch.write_back()
        for i, j in copies.items():
            outputs[i] = outputs[j]
        return outputs  # type: ignore[return-value]

    async def _prepare(self, i: int, event: ev.ImageEvent, value: bytes, batch: BatchHistories,
                       trace: BatchTrace | NullTrace) -> _Ready | Output:
        """Fetch, decode and preprocess one event's image; a failure becomes its dead letter."""
        loop = asyncio.get_running_loop()
        try:
            async with self._fetch_slots:
                with trace.stage("fetch", i):
                    data = await self.fetcher.fetch(event)
            with trace.stage("decode", i):
                image = await loop.run_in_executor(self._decode_pool, decode_image, data, self.image_limits,
                                                   self.input_size)
                pixels = await loop.run_in_executor(self._decode_pool, self.classifier.model.preprocess, image)
            state = batch.state(event.stream_id) or history.new_state()
            return _Ready(i, event, value, pixels, list(state["names"]))
        except (FetchError, DecodeError) as err:
            return self._dead(err.reason, err.detail, value, event.event_id, event.stream_id)
        except Exception as err:
            return self._internal(err, value, event)

    async def _classify_isolating(self, ready: list[_Ready], trace: BatchTrace | NullTrace) -> list:
        """Predictions for `ready`, in order; when the batch fails, its halves are tried apart, so an
        image that makes the model fail ends as the exception for that image alone."""
        if not ready:
            return []
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._inference, self._classify, ready, trace)
        except Exception as err:
            if len(ready) == 1:
                return [err]
            log.warning("a batch of %d images failed in the model (%s: %s); retrying its halves apart",
                        len(ready), type(err).__name__, err)
            half = len(ready) // 2
            return await self._classify_isolating(ready[:half], trace) + \
                await self._classify_isolating(ready[half:], trace)

    def _classify(self, ready: list[_Ready], trace: BatchTrace | NullTrace) -> list[Prediction]:
        # classify_embeddings in its two steps, so that search and scoring are timed apart
        members = [item.index for item in ready]
        batch = torch.stack([item.pixels for item in ready])
        with trace.batch_stage("encode", members):
            embeddings = self.classifier.model.encode_pixels(batch)
        with trace.batch_stage("search", members):
            hits = self.classifier.search(embeddings)
        with trace.batch_stage("score", members):
            return self.classifier.score(embeddings, hits, [item.extras for item in ready])

    def same_concept(self, a: str, b: str) -> bool:
        if a in self.lexicon and b in self.lexicon and self.lexicon.same_concept(a, b):
            return True
        va, vb = self.classifier.terms.lookup(a), self.classifier.terms.lookup(b)
        return va is not None and vb is not None and float(np.dot(va, vb)) >= self.same_concept_threshold

    def _label(self, event: ev.ImageEvent, prediction: Prediction, batch: BatchHistories) -> Output:
        mode = event.attrs.get("history", self.policy.mode)
        policy = self.policy if mode == self.policy.mode or mode not in history.POLICIES \
            else history.HistoryPolicy(**{**asdict(self.policy), "mode": mode})
        outcome = history.apply(batch.state(event.stream_id), prediction.candidates or
                                ((prediction.label, prediction.score),), policy, self.same_concept)
        label = ev.LabelEvent(
            event_id=event.event_id, stream_id=event.stream_id, label=outcome.label, raw_label=prediction.label,
            score=round(prediction.score, 6), candidates=[[n, round(p, 6)] for n, p in prediction.candidates],
            history=outcome.history, model=self.classifier.model.identity, database=self.database_name,
            ts_in=event.ts, ts_out=self.clock(), attrs=event.attrs)
        value = ev.encode_label_event(label)
        batch.set_state(event.stream_id, outcome.state)  # only once the record exists
        return Output(ev.LABELS_OUT, event.stream_id.encode(), value)

    def _internal(self, err: Exception, value: bytes, event: ev.ImageEvent) -> Output:
        log.warning("event %r of stream %r failed (%s: %s): dead-lettered as %s", event.event_id[:80],
                    event.stream_id[:80], type(err).__name__, err, ev.INTERNAL_ERROR)
        return self._dead(ev.INTERNAL_ERROR, f"{type(err).__name__}: {err}", value, event.event_id, event.stream_id)

    @staticmethod
    def _dead(reason: str, detail: str, payload: bytes | None, event_id: str | None, stream_id: str | None) -> Output:
        letter = ev.dead_letter(reason, detail, payload, event_id, stream_id)
        return Output(ev.DEAD_LETTER, letter.stream_id.encode() if letter.stream_id else None,
                      ev.encode_dead_letter(letter), reason)
