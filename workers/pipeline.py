"""One batch of images.in values -> labels.out and images.dlq records, independent of Faust.

decode events -> fetch bytes (concurrent, bounded) -> decode + preprocess (thread pool) -> encode,
search, score (the one inference thread that owns the model) -> apply each stream's history in event
order -> records. Every input value yields exactly one record.
"""
from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, MutableMapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cased_core import history
from cased_core.classifier import Classifier, Prediction
from cased_core.lexicon import Lexicon
from topics import events as ev
from workers.fetch import FetchError, Fetcher
from workers.telemetry import BatchTrace, untraced


@dataclass(frozen=True)
class Output:
    topic: str  # LABELS_OUT or DEAD_LETTER (the configured names are mapped by the app)
    key: bytes | None
    value: bytes
    reason: str | None = None  # a dead letter's reason, for the worker's counters


class DecodeError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> RGB image; the pixel count is checked from the header, before decoding."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise DecodeError(ev.TOO_LARGE, f"{image.width}x{image.height} pixels is over the limit of {max_pixels}")
        image.load()
        return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise DecodeError(ev.TOO_LARGE, str(err)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DecodeError(ev.NOT_AN_IMAGE, f"cannot decode the bytes as an image: {err}") from err


class BatchHistories:
    """One batch's view of the history table: each stream's state is decoded once and written back
    once, at the end of the batch (a Faust table decodes on every read and sends a changelog record
    on every write, and a state holds the records of the stream's last events)."""

    def __init__(self, table: MutableMapping[str, dict]):
        self.table, self.states, self.changed = table, {}, set()

    def get(self, stream_id: str, default: dict | None = None) -> dict | None:
        if stream_id not in self.states:
            self.states[stream_id] = self.table.get(stream_id)
        state = self.states[stream_id]
        return default if state is None else state

    def __setitem__(self, stream_id: str, state: dict) -> None:
        self.states[stream_id] = state
        self.changed.add(stream_id)

    def write_back(self) -> None:
        for stream_id in self.changed:
            self.table[stream_id] = self.states[stream_id]


class Pipeline:
    def __init__(self, classifier: Classifier, fetcher: Fetcher, policy: history.HistoryPolicy,
                 lexicon: Lexicon, database_name: str, max_pixels: int = 40_000_000, fetch_concurrency: int = 32,
                 decode_threads: int = 2, same_concept_threshold: float = 0.9,
                 clock: Callable[[], float] = time.time):
        self.classifier, self.fetcher, self.policy, self.lexicon = classifier, fetcher, policy, lexicon
        self.database_name, self.max_pixels, self.clock = database_name, max_pixels, clock
        self.same_concept_threshold = same_concept_threshold
        self._fetch_slots = asyncio.Semaphore(fetch_concurrency)
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        # One thread owns the model: torch runs there, never on the event loop.
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def close(self) -> None:
        await self.fetcher.close()
        self._decode_pool.shutdown(wait=True)
        self._inference.shutdown(wait=True)

    async def process(self, values: Sequence[bytes | None], histories: MutableMapping[str, dict],
                      trace: BatchTrace | None = None) -> list[Output]:
        """Records for `values` (in order, one each). `histories` maps stream_id -> history state
        (a Faust table in the worker); it is read and written in event order. `trace` gets the stages
        (workers.telemetry)."""
        trace = trace if trace is not None else untraced(len(values))
        histories = BatchHistories(histories)
        loop = asyncio.get_running_loop()
        outputs: list[Output | None] = [None] * len(values)
        todo: list[tuple[int, ev.ImageEvent, bytes]] = []
        for i, value in enumerate(values):
            try:
                with trace.stage("consume", i):
                    event = ev.decode_image_event(value)
            except ev.InvalidEvent as err:
                outputs[i] = self._dead(ev.INVALID_EVENT, err.detail, value, err.event_id, err.stream_id)
                continue
            stored = history.replayed(histories.get(event.stream_id), event.event_id)
            trace.identify(i, event, replayed=stored is not None)
            if stored is not None:  # a re-delivered event: the very same record again
                outputs[i] = Output(ev.LABELS_OUT, event.stream_id.encode(), ev.encode_label_event(ev.LabelEvent(**stored)))
            else:
                todo.append((i, event, value))
        pixels = await asyncio.gather(*(self._fetch_and_decode(loop, event, value, trace, i) for i, event, value in todo))
        ready = []
        for (i, event, _), item in zip(todo, pixels):
            if isinstance(item, Output):
                outputs[i] = item
            else:
                ready.append((i, event, item))
        if ready:
            extras = [list(histories.get(event.stream_id, history.new_state())["names"]) for _, event, _ in ready]
            batch = torch.stack([p for _, _, p in ready])
            predictions = await loop.run_in_executor(self._inference, self._classify, batch, extras, trace,
                                                     [i for i, _, _ in ready])
            for (i, event, _), prediction in zip(ready, predictions):
                with trace.stage("history", i):
                    outputs[i] = self._label(event, prediction, histories)
            histories.write_back()
        return outputs  # type: ignore[return-value]

    def _classify(self, batch: torch.Tensor, extras: list[list[str]], trace: BatchTrace,
                  members: list[int]) -> list[Prediction]:
        # classify_embeddings in its two steps, so that search and scoring are timed apart
        with trace.batch_stage("encode", members):
            embeddings = self.classifier.model.encode_pixels(batch)
        with trace.batch_stage("search", members):
            hits = self.classifier.search(embeddings)
        with trace.batch_stage("score", members):
            return self.classifier.score(embeddings, hits, extras)

    async def _fetch_and_decode(self, loop, event: ev.ImageEvent, value: bytes, trace: BatchTrace, i: int):
        try:
            async with self._fetch_slots:
                with trace.stage("fetch", i):
                    data = await self.fetcher.fetch(event)
            with trace.stage("decode", i):
                image = await loop.run_in_executor(self._decode_pool, decode_image, data, self.max_pixels)
                return await loop.run_in_executor(self._decode_pool, self.classifier.model.preprocess, image)
        except (FetchError, DecodeError) as err:
            return self._dead(err.reason, err.detail, value, event.event_id, event.stream_id)

    def same_concept(self, a: str, b: str) -> bool:
        if a in self.lexicon and b in self.lexicon and self.lexicon.same_concept(a, b):
            return True
        va, vb = self.classifier.terms.lookup(a), self.classifier.terms.lookup(b)
        return va is not None and vb is not None and float(np.dot(va, vb)) >= self.same_concept_threshold

    def _label(self, event: ev.ImageEvent, prediction: Prediction, histories: BatchHistories) -> Output:
        mode = event.attrs.get("history", self.policy.mode)
        policy = self.policy if mode == self.policy.mode or mode not in history.POLICIES \
            else history.HistoryPolicy(**{**asdict(self.policy), "mode": mode})
        outcome = history.apply(histories.get(event.stream_id), prediction.candidates or
                                ((prediction.label, prediction.score),), policy, self.same_concept)
        label = ev.LabelEvent(
            event_id=event.event_id, stream_id=event.stream_id, label=outcome.label, raw_label=prediction.label,
            score=round(prediction.score, 6), candidates=[[n, round(p, 6)] for n, p in prediction.candidates],
            history=outcome.history, model=self.classifier.model.identity, database=self.database_name,
            ts_in=event.ts, ts_out=self.clock(), attrs=event.attrs)
        histories[event.stream_id] = history.remember(outcome.state, event.event_id, asdict(label), policy)
        return Output(ev.LABELS_OUT, event.stream_id.encode(), ev.encode_label_event(label))

    @staticmethod
    def _dead(reason: str, detail: str, payload: bytes | None, event_id: str | None, stream_id: str | None) -> Output:
        letter = ev.DeadLetter(reason=reason, detail=detail, payload=payload or b"", event_id=event_id,
                               stream_id=stream_id)
        return Output(ev.DEAD_LETTER, stream_id.encode() if stream_id else None, ev.encode_dead_letter(letter), reason)
