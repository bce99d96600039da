"""One batch of images.in values -> labels.out and images.dlq records, independent of Faust.

Two halves, so that the worker can prepare batch N+1 while batch N is in the model:
- `prepare`: decode the events; fetch the bytes of uri events (concurrent, bounded); decode the images
  in the decode threads, one call per thread per batch, JPEGs at the smallest DCT scale the model needs;
- `finish`: resize, crop and normalise the batch as tensors, encode, search and score (in the one
  inference thread that owns the model), then apply each stream's history in event order -> records.
`process` is the two in a row. Every input value yields exactly one record, whatever fails, and whose
fault a failure is decides what (workers/failures.py):
- the record's: its dead letter (`_dead_letter`, the one place records are made of failures);
- the system's (the storage, the model, memory): no record is charged with it. The step waits the
  outage out (workers/outages.py) and the batch stays unanswered until the dependency is back; a lost
  device raises DeviceLost, which ends the worker.
A model call that fails is put to the model itself on a known-good input (the warm-up frame): if that
fails too the model is down; if not, the batch is tried again in halves until the images that make it
fail are alone, and those are the records' faults. Out of memory halves the batch and keeps the smaller
size (workers/batch_limit.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from cased_core import gate, history
from cased_core.classifier import Classifier, Prediction
from cased_core.lexicon import Lexicon, concept_id
from cased_core.options import JPEG_DECODERS
from cased_core.preprocess import TensorPreprocess, decode_jpegs
from topics import events as ev
from workers.batch_limit import BatchLimit
from workers.costs import StageCosts
from workers.decode import EncodedJpeg, ImageLimits, decode_image, inspect_jpeg, jpeg_gray, undecodable
from workers.failures import MEMORY, MODEL, DeviceLost, RecordFault, SystemFault, describe, fault_of, model_fault
from workers.fetch import Fetcher
from workers.gating import BatchGate
from workers.histories import MAX_ANSWERS, BatchHistories, HistoryStore
from workers.outages import Outages
from workers.telemetry import NULL_TRACE, BatchTrace, NullTrace

log = logging.getLogger("cased.worker")


# Below this much CPU per image on one thread the encoder is cheaper than the worker's own work per image
# (decode, Kafka, history: 1.5-4 ms for camera frames), so it never bounds the rate and more intra-op
# threads only add hand-offs: 1.3-1.7 ms per image with the tiny model on two cores (bench stream).
# Above it the encoder is the bound (ViT-B-32: ~80 ms per image on a CPU) and its threads do work.
ENCODER_PARALLEL_MS = 2.0


def intra_op_threads(device: str, encoder_ms: float, cpus: int) -> int:
    """torch's intra-op threads for an image encoder that costs `encoder_ms` of CPU per image on one
    thread: 1 on a GPU, whose host side only launches kernels; on the CPU, 1 below ENCODER_PARALLEL_MS
    (the encoder is not the bound), every CPU above it.

    Examples:
        >>> intra_op_threads("cpu", 0.4, 8), intra_op_threads("cpu", 80.0, 8), intra_op_threads("cuda", 80.0, 8)
        (1, 8, 1)
    """
    return cpus if device == "cpu" and encoder_ms >= ENCODER_PARALLEL_MS else 1


def usable_cpus() -> int:
    """The CPUs this process may run on: the default count of decode threads (decoding releases the GIL)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class Output:
    topic: str  # LABELS_OUT or DEAD_LETTER (the configured names are mapped by the app)
    key: bytes | None
    value: bytes
    reason: str | None = None  # a dead letter's reason, for the worker's counters
    reused: bool = False  # a label the change gate answered from an earlier frame, for the counters


@dataclass
class _Ready:
    """An event whose image is decoded, waiting for the model."""
    index: int
    event: ev.ImageEvent
    value: bytes
    # uint8 (3, H, W) for the tensor preprocess, or a JPEG left for the batched decoder; without a tensor
    # preprocess, the model's input (3, S, S)
    pixels: torch.Tensor | EncodedJpeg
    thumb: bytes | None = None  # the change gate's thumbnail (cased_core.gate); None: never gated
    extras: list[str] = field(default_factory=list)  # names the stream already used: extra candidates


@dataclass
class Prepared:
    """A batch between `prepare` and `finish`."""
    values: Sequence[bytes | None]
    partitions: Sequence[int | None]
    trace: BatchTrace | NullTrace
    outputs: list[Output | None]  # records known already: invalid events, the records' faults so far
    events: dict[int, ev.ImageEvent]  # index -> event, each (stream, event id) once
    copies: dict[int, int]  # index of an event published twice in the batch -> its first index
    ready: list[_Ready]


class Pipeline:
    def __init__(self, classifier: Classifier, fetcher: Fetcher, policy: history.HistoryPolicy,
                 lexicon: Lexicon, database_name: str, image_limits: ImageLimits = ImageLimits(),
                 fetch_concurrency: int = 32, decode_threads: int | None = None,
                 same_concept_threshold: float = 0.9, answers: int = MAX_ANSWERS,
                 clock: Callable[[], float] = time.time, costs: StageCosts | None = None,
                 torch_threads: int | None = None, jpeg_decoder: str = "auto", batch_size: int = 16,
                 outages: Outages | None = None, gate_policy: gate.GatePolicy | None = None):
        self.classifier, self.fetcher, self.policy, self.lexicon = classifier, fetcher, policy, lexicon
        self.outages = outages or Outages()  # what is down now; fetches and model calls wait outages out
        self.gate_policy = gate_policy  # None: every frame classified
        self.batch_limit = BatchLimit(batch_size)  # images per model call that fit in memory now
        self.database_name, self.image_limits, self.clock = database_name, image_limits, clock
        self.same_concept_threshold, self.answers = same_concept_threshold, answers
        self.costs = costs or StageCosts()
        # The model's transform as tensor operations; None for layouts it does not cover (then each
        # image goes through the model's own transform in its decode thread).
        self.tensor_preprocess = TensorPreprocess.of(classifier.model.preprocess)
        self.input_size = self.tensor_preprocess.size if self.tensor_preprocess else None
        if jpeg_decoder not in JPEG_DECODERS:
            raise ValueError(f"unknown JPEG decoder {jpeg_decoder!r}: choose one of {', '.join(JPEG_DECODERS)}")
        # JPEGs decoded a batch at a time by torchvision on the model's device (nvJPEG on a GPU), or
        # one by one by PIL in the decode threads at the DCT scale the model needs (faster on a CPU).
        self.batched_jpeg = self.tensor_preprocess is not None and (
            jpeg_decoder == "torchvision" or (jpeg_decoder == "auto" and classifier.model.device.type == "cuda"))
        self.decode_threads = decode_threads or usable_cpus()
        self._fetch_slots = asyncio.Semaphore(fetch_concurrency)
        self._decode_pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        # One thread owns the model: torch runs there, never on the event loop.
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.torch_threads = torch_threads  # None: chosen by `warm_up`
        self.encoder_ms = None  # CPU ms per image of the image encoder on one thread, measured by `warm_up`
        self._known_good: torch.Tensor | None = None  # one warm-up frame as the model's input: checks the model

    def warm_up(self) -> None:
        """Before the first event, in the inference thread: classify a full batch of blank frames (first
        calls allocate and pick kernels; a batch that runs out of memory is halved until one fits, so a
        batch size too large for the device starts smaller instead of failing), and set torch's
        intra-op threads there (OpenMP keeps the count per calling thread): unless given,
        `intra_op_threads` for the encoder's measured cost."""
        self._inference.submit(self._warm_up).result()

    def _warm_up(self) -> None:
        model = self.classifier.model
        torch.set_num_threads(1)
        while True:
            batch_size = self.batch_limit.size
            pixels = self._blank_batch(batch_size)
            try:
                self.classifier.classify_pixels(pixels)
                break
            except Exception as err:
                fault = model_fault(err)
                if not (isinstance(fault, SystemFault) and fault.dependency == MEMORY and batch_size > 1):
                    raise
                log.warning("warm-up: a batch of %d images ran out of memory (%s); trying %d", batch_size,
                            fault.detail, self.batch_limit.shrink(batch_size))
        started = time.thread_time()
        model.encode_pixels(pixels)
        self.encoder_ms = 1000 * (time.thread_time() - started) / batch_size
        if self.torch_threads is None:
            self.torch_threads = intra_op_threads(model.device.type, self.encoder_ms, usable_cpus())
        torch.set_num_threads(self.torch_threads)
        log.info("image encoder: %.2f ms of CPU per image on one thread; torch intra-op threads: %d",
                 self.encoder_ms, self.torch_threads)

    def _blank_batch(self, batch_size: int) -> torch.Tensor:
        """The model's input for a batch of grey frames, made the way events' frames are (the batched
        JPEG decoder's first call is the slow one)."""
        import io

        from PIL import Image

        frame = Image.new("RGB", (320, 240), (128, 128, 128))
        if self.tensor_preprocess is None:
            return torch.stack([self.classifier.model.preprocess(frame)] * batch_size)
        model = self.classifier.model
        if self.batched_jpeg:
            encoded = io.BytesIO()
            frame.save(encoded, "JPEG")
            images = decode_jpegs([encoded.getvalue()] * batch_size, [1] * batch_size, model.device)
        else:
            images = [torch.from_numpy(np.array(frame)).permute(2, 0, 1)] * batch_size
        return self.tensor_preprocess(images, model.device, model.dtype)

    def serving(self) -> dict:
        """How this pipeline runs, for /status and benchmarks."""
        model = self.classifier.model
        return {"device": str(model.device), "search": self.classifier.database.searcher.name,
                "jpeg_decoder": f"torchvision on {model.device}" if self.batched_jpeg else "pil",
                "threads": {"decode": self.decode_threads, "torch": self.torch_threads},
                "encoder_ms_per_image": None if self.encoder_ms is None else round(self.encoder_ms, 3)}

    async def close(self) -> None:
        await self.fetcher.close()
        self._decode_pool.shutdown(wait=True)
        self._inference.shutdown(wait=True)

    async def process(self, values: Sequence[bytes | None], histories: HistoryStore,
                      trace: BatchTrace | NullTrace = NULL_TRACE,
                      partitions: Sequence[int | None] | None = None) -> list[Output]:
        """Records for `values` (in order, one each): `prepare` then `finish`.

        Args:
            values: images.in record values, each partition's in offset order.
            histories: the stream histories (a ChangelogStore in the worker), read and written in event
                order, once per stream per batch.
            trace: gets the stages (workers.telemetry).
            partitions: the images.in partition of each value; a stream's history entries are
                written to the changelog partition of the same number.
        """
        return await self.finish(await self.prepare(values, histories, trace, partitions), histories)

    async def prepare(self, values: Sequence[bytes | None], histories: HistoryStore,
                      trace: BatchTrace | NullTrace = NULL_TRACE,
                      partitions: Sequence[int | None] | None = None) -> Prepared:
        """Everything before the model that needs no other batch to be finished: `histories` is only
        read, to skip the work for events answered already."""
        batch = Prepared(values, partitions if partitions is not None else [None] * len(values), trace,
                         [None] * len(values), {}, {}, [])
        first: dict[tuple[str, str], int] = {}  # an event published twice in one batch is answered once
        known = BatchHistories(histories, self.answers)
        todo = []  # events to fetch and decode: not answered already
        with self.costs.measure("consume"):
            for i, value in enumerate(values):
                try:
                    with trace.stage("consume", i):
                        event = ev.decode_image_event(value)
                except ev.InvalidEvent as err:  # deterministic: a re-delivery gets the same dead letter
                    batch.outputs[i] = self._dead_letter(RecordFault(ev.INVALID_EVENT, err.detail), value,
                                                         err.event_id, err.stream_id)
                    continue
                key = (event.stream_id, event.event_id)
                if key in first:
                    batch.copies[i] = first[key]
                    continue
                first[key] = i
                batch.events[i] = event
                try:
                    answered = known.answered(event.stream_id, event.event_id) is not None
                except Exception:  # an unreadable entry: `finish` reads it again and dead-letters the event
                    answered = True
                trace.identify(i, event, replayed=answered)
                if not answered:
                    todo.append(i)
        data = await self._fetch_all(batch, todo)
        await self._decode_all(batch, data)
        return batch

    async def finish(self, batch: Prepared, histories: HistoryStore) -> list[Output]:
        """The model, then each stream's history in event order: the batch's records, in order. The
        previous batch must be finished (its histories written) before this one starts."""
        trace, outputs = batch.trace, batch.outputs
        state = BatchHistories(histories, self.answers)
        answered: dict[int, tuple[str, bytes]] = {}
        unreadable = set()
        with self.costs.measure("history"):
            for i, event in batch.events.items():
                try:
                    stored = state.answered(event.stream_id, event.event_id)
                except Exception as err:  # a history entry that cannot be read belongs to this stream only
                    self._fail(batch, i, err)
                    unreadable.add(i)
                    continue
                if stored is not None:  # a re-delivered event: the very same record again
                    answered[i] = stored
            ready = [item for item in batch.ready if item.index not in answered and outputs[item.index] is None]
            for item in ready:
                item.extras = list((state.state(item.event.stream_id) or history.new_state())["names"])
        predictions, reused = await self._predict(ready, state, trace)
        with self.costs.measure("history"):
            for item in ready:
                prediction = predictions[item.index]
                if isinstance(prediction, RecordFault):
                    self._fail(batch, item.index, prediction)
                    continue
                try:
                    with trace.stage("history", item.index):
                        outputs[item.index] = self._label(item.event, prediction, state, reused.get(item.index))
                except Exception as err:
                    self._fail(batch, item.index, err)
            for i, (topic, value) in answered.items():
                outputs[i] = Output(topic, batch.events[i].stream_id.encode(), value,
                                    ev.decode_dead_letter(value).reason if topic == ev.DEAD_LETTER else None)
            for i, event in batch.events.items():  # labels and dead letters alike: a re-delivery gets the same
                if i not in answered and i not in unreadable:
                    state.answer(batch.partitions[i], event.stream_id, event.event_id, outputs[i].topic,
                                 outputs[i].value)
            state.write_back()
            for i, j in batch.copies.items():
                outputs[i] = outputs[j]
        return outputs  # type: ignore[return-value]

    async def _fetch_all(self, batch: Prepared, todo: list[int]) -> dict[int, bytes]:
        """The bytes of each event in `todo`: inline ones as they are, uri ones fetched concurrently. A
        failure becomes the event's dead letter."""
        data: dict[int, bytes] = {}
        remote = []
        with self.costs.measure("fetch"):
            for i in todo:
                event = batch.events[i]
                try:
                    with batch.trace.stage("fetch", i):
                        inline = self.fetcher.inline(event)
                except RecordFault as fault:
                    self._fail(batch, i, fault)
                    continue
                if inline is None:
                    remote.append(i)
                else:
                    data[i] = inline
        if remote:
            fetched = await asyncio.gather(*(self._fetch(batch, i) for i in remote))
            data.update((i, d) for i, d in zip(remote, fetched) if d is not None)
        return data

    async def _fetch(self, batch: Prepared, i: int) -> bytes | None:
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
            self._fail(batch, i, err)
        return None

    async def _decode_all(self, batch: Prepared, data: dict[int, bytes]) -> None:
        """Decode in the decode threads, one call per thread for the whole batch (a call per image costs
        the event loop a wake-up per image)."""
        items = list(data.items())
        if not items:
            return
        loop = asyncio.get_running_loop()
        work = [(i, data, self.gated(batch.events[i])) for i, data in items]
        chunks = [work[n::self.decode_threads] for n in range(min(self.decode_threads, len(work)))]
        decoded = await asyncio.gather(*(loop.run_in_executor(self._decode_pool, self._decode_chunk, chunk,
                                                               batch.trace) for chunk in chunks))
        for i, result, thumb in sorted((item for chunk in decoded for item in chunk), key=lambda item: item[0]):
            if isinstance(result, Exception):
                self._fail(batch, i, result)
            else:
                batch.ready.append(_Ready(i, batch.events[i], batch.values[i], result, thumb))

    def gated(self, event: ev.ImageEvent) -> bool:
        """Whether the change gate may answer this event from an earlier frame of its stream: a gate is
        set, the stream is a live one, and it did not opt out (attrs gate: off)."""
        return self.gate_policy is not None and self.gate_policy.max_frames > 1 and \
            event.attrs.get(ev.HISTORY_ATTR, self.policy.mode) != history.UPLOAD and \
            event.attrs.get(ev.GATE_ATTR) != ev.GATE_OFF

    def _decode_chunk(self, chunk: list[tuple[int, bytes, bool]], trace: BatchTrace | NullTrace) -> list[tuple]:
        """In a decode thread: each image decoded to uint8 pixels (3, H, W), or only its header checked
        when a batched decoder takes it, or, without a tensor preprocess, run through the model's own
        transform; with the change gate's thumbnail where it is `gated`. A failure is returned for its
        image alone: (index, pixels or exception, thumbnail or None)."""
        out: list[tuple] = []
        for i, data, gated in chunk:
            thumb = None
            try:
                with self.costs.measure("decode"), trace.stage("decode", i):
                    encoded = inspect_jpeg(data, self.image_limits) if self.batched_jpeg else None
                    image = None if encoded is not None else decode_image(data, self.image_limits, self.input_size)
                if gated:
                    with self.costs.measure("gate"):
                        thumb = gate.thumbnail(jpeg_gray(data) if image is None else np.asarray(image.convert("L")))
                if encoded is not None:
                    out.append((i, encoded, thumb))
                elif self.tensor_preprocess is not None:
                    with self.costs.measure("decode"):
                        out.append((i, torch.from_numpy(np.array(image)).permute(2, 0, 1), thumb))
                else:
                    with self.costs.measure("preprocess"):
                        out.append((i, self.classifier.model.preprocess(image), thumb))
            except Exception as err:
                out.append((i, err, None))
        return out

    async def _predict(self, ready: list[_Ready], histories: BatchHistories,
                       trace: BatchTrace | NullTrace) -> tuple[dict[int, Prediction | RecordFault], dict[int, str]]:
        """Each item's prediction by index, and for the frames the change gate answered from an earlier
        frame, that frame's event id. Without a gate policy every item goes to the model."""
        if self.gate_policy is None:
            return dict(zip((item.index for item in ready), await self._classify_all(ready, trace))), {}
        with self.costs.measure("gate"):
            gating = BatchGate(self.gate_policy, histories)
            to_model = gating.sort(ready)
        predictions = dict(zip((item.index for item in to_model), await self._classify_all(to_model, trace)))
        with self.costs.measure("gate"):
            unreferenced = []  # gated frames whose reference failed in the model: classified after all
            for item in ready:
                if item.index in gating.reuses:
                    found = gating.resolve(item.index, predictions)
                    if found is None:
                        unreferenced.append(item)
                    else:
                        predictions[item.index] = found
            gating.write(predictions, {item.index: item.event for item in ready})
        if unreferenced:
            predictions.update(zip((item.index for item in unreferenced), await self._classify_all(unreferenced, trace)))
        reused = {index: reuse.event_id for index, reuse in gating.reuses.items()
                  if index not in {item.index for item in unreferenced}}
        return predictions, reused

    async def _classify_all(self, ready: list[_Ready], trace: BatchTrace | NullTrace) -> list:
        """Predictions for `ready`, in order, in model calls of at most the batch limit; an image that is
        at fault gets its RecordFault in its place."""
        out: list = []
        while len(out) < len(ready):
            out += await self._classify_isolating(ready[len(out):len(out) + self.batch_limit.size], trace)
        return out

    async def _classify_isolating(self, ready: list[_Ready], trace: BatchTrace | NullTrace) -> list:
        """Predictions for `ready` from one model call; when it fails, whose fault it is decides:

        - the device lost: DeviceLost is raised (the worker ends);
        - out of memory with more than one image: the batch limit halves and the images go again in
          calls of the new size;
        - anything else, or out of memory for one image: the model on a known-good input tells. If that
          fails too, the model is down: the outage is waited out, then the same images go again. If it
          works, the images are at fault: each half is tried apart, until an image that fails alone
          gets its RecordFault. Checking at every failure, not only once an image is alone, tells an
          outage after one failing call instead of a whole bisection's.
        """
        if not ready:
            return []
        try:
            predictions = await self._in_model(self._classify, ready, trace)
        except Exception as err:
            fault = model_fault(err)
            if isinstance(fault, DeviceLost):
                raise fault from err
            if isinstance(fault, SystemFault) and fault.dependency == MEMORY and len(ready) > 1:
                size = self.batch_limit.shrink(len(ready))
                log.warning("a model call of %d images ran out of memory (%s): %d images per call from now on",
                            len(ready), fault.detail, size)
                return await self._classify_all(ready, trace)
            try:
                await self._in_model(self._check_model)
            except SystemFault as down:
                if isinstance(down, DeviceLost):
                    raise
                await self.outages.ride_out(lambda: self._in_model(self._check_model), failed=down)
                return await self._classify_isolating(ready, trace)
            if len(ready) == 1:
                return [fault if isinstance(fault, RecordFault) else RecordFault(ev.INTERNAL_ERROR, fault.detail)]
            log.warning("a batch of %d images failed in the model (%s) while a known-good image passes; "
                        "retrying its halves apart", len(ready), describe(err))
            half = len(ready) // 2
            return await self._classify_isolating(ready[:half], trace) + \
                await self._classify_isolating(ready[half:], trace)
        self.batch_limit.fitted(len(ready))
        return predictions

    async def _in_model(self, call: Callable, *args):
        """`call(*args)` in the inference thread, the one that owns the model."""
        return await asyncio.get_running_loop().run_in_executor(self._inference, call, *args)

    def _check_model(self) -> None:
        """In the inference thread: the image encoder on the warm-up frame, known to work.

        Raises:
            SystemFault: the model fails for it too (MODEL), runs out of memory for one image (MEMORY),
                or lost its device (DeviceLost).
        """
        if self._known_good is None:
            self._known_good = self._blank_batch(1)
        try:
            self.classifier.model.encode_pixels(self._known_good)
        except Exception as err:
            fault = model_fault(err)
            if isinstance(fault, SystemFault):
                raise fault from err
            raise SystemFault(MODEL, f"fails for a known-good image too: {describe(err)}") from err

    def _classify(self, ready: list[_Ready], trace: BatchTrace | NullTrace) -> list[Prediction | RecordFault]:
        """Predictions for `ready`, in order; a JPEG the batched decoder cannot decode gets its
        DecodeError in its place. Search and scoring are classify_embeddings's two steps, timed apart."""
        model = self.classifier.model
        pixels = self._decode_jpegs(ready, trace)
        kept = [k for k, p in enumerate(pixels) if not isinstance(p, RecordFault)]
        members = [ready[k].index for k in kept]
        out: list[Prediction | RecordFault] = list(pixels)
        if not kept:
            return out
        with self.costs.measure("preprocess"), trace.batch_stage("preprocess", members):
            if self.tensor_preprocess is not None:
                batch = self.tensor_preprocess([pixels[k] for k in kept], model.device, model.dtype)
            else:
                batch = torch.stack([pixels[k] for k in kept])
        with self.costs.measure("encode"), trace.batch_stage("encode", members):
            embeddings = model.encode_pixels(batch)
        with self.costs.measure("search"), trace.batch_stage("search", members):
            hits = self.classifier.search(embeddings)
        with self.costs.measure("score"), trace.batch_stage("score", members):
            predictions = self.classifier.score(embeddings, hits, [ready[k].extras for k in kept])
        for k, prediction, embedding in zip(kept, predictions, embeddings):
            out[k] = replace(prediction, embedding=embedding)
        return out

    def _decode_jpegs(self, ready: list[_Ready], trace: BatchTrace | NullTrace) -> list:
        """Each item's pixels, the JPEGs left encoded decoded together on the model's device."""
        pixels: list = [item.pixels for item in ready]
        jpegs = [k for k, p in enumerate(pixels) if isinstance(p, EncodedJpeg)]
        if jpegs:
            with self.costs.measure("decode"), trace.batch_stage("decode", [ready[k].index for k in jpegs]):
                decoded = decode_jpegs([pixels[k].data for k in jpegs], [pixels[k].orientation for k in jpegs],
                                       self.classifier.model.device)
            for k, image in zip(jpegs, decoded):
                pixels[k] = image if isinstance(image, torch.Tensor) else undecodable(image)
        return pixels

    def same_concept(self, a: str, b: str) -> bool:
        if a in self.lexicon and b in self.lexicon and self.lexicon.same_concept(a, b):
            return True
        va, vb = self.classifier.terms.lookup(a), self.classifier.terms.lookup(b)
        return va is not None and vb is not None and float(np.dot(va, vb)) >= self.same_concept_threshold

    def _label(self, event: ev.ImageEvent, prediction: Prediction, batch: BatchHistories,
               reused: str | None = None) -> Output:
        mode = event.attrs.get(ev.HISTORY_ATTR, self.policy.mode)
        policy = self.policy if mode == self.policy.mode or mode not in history.POLICIES \
            else history.HistoryPolicy(**{**asdict(self.policy), "mode": mode})
        before = batch.state(event.stream_id)
        outcome = history.apply(before, prediction.candidates or ((prediction.label, prediction.score),), policy,
                                self.same_concept, prediction.embedding, event.ts)
        label = ev.LabelEvent(
            event_id=event.event_id, stream_id=event.stream_id, label=outcome.label, raw_label=prediction.label,
            score=round(prediction.score, 6), candidates=[[n, round(p, 6)] for n, p in prediction.candidates],
            history=outcome.history, model=self.classifier.model.identity, database=self.database_name,
            ts_in=event.ts, ts_out=self.clock(), attrs=event.attrs, concept=concept_id(outcome.label, self.lexicon),
            changed=before is None or before.get("current") != outcome.label, reused=reused)
        value = ev.encode_label_event(label)
        batch.set_state(event.stream_id, outcome.state)  # only once the record exists
        return Output(ev.LABELS_OUT, event.stream_id.encode(), value, reused=reused is not None)

    def _fail(self, batch: Prepared, i: int, err: BaseException) -> None:
        """Event i failed with `err` on its own: its dead letter is its record."""
        event = batch.events[i]
        batch.outputs[i] = self._dead_letter(fault_of(err), batch.values[i], event.event_id, event.stream_id)

    @staticmethod
    def _dead_letter(fault: RecordFault | SystemFault, payload: bytes | None, event_id: str | None,
                     stream_id: str | None) -> Output:
        """The one place a failure becomes a record: a dead letter, for a record's fault only."""
        if not isinstance(fault, RecordFault):  # a system fault is waited out, never charged to a record
            raise fault
        if fault.reason == ev.INTERNAL_ERROR:
            log.warning("event %r of stream %r failed (%s): dead-lettered as %s", (event_id or "")[:80],
                        (stream_id or "")[:80], fault.detail, ev.INTERNAL_ERROR,
                        extra={"event_id": event_id, "stream_id": stream_id})
        letter = ev.dead_letter(fault.reason, fault.detail, payload, event_id, stream_id)
        return Output(ev.DEAD_LETTER, letter.stream_id.encode() if letter.stream_id else None,
                      ev.encode_dead_letter(letter), fault.reason)
