"""The model's side of a batch, in the one inference thread that owns the model.

Per model call: the JPEGs left encoded are decoded together on the model's device, the batch resized,
cropped and normalised as tensors, encoded, searched and scored (`Inference._classify`). Whose fault a
failed call is decides what happens next (workers/failures.py):
- the device lost: DeviceLost is raised (the worker ends);
- out of memory with more than one image: the batch limit halves (workers/batch_limit.py) and the
  images go again in calls of the new size;
- anything else, or out of memory for one image: the model on a known-good input (the warm-up frame)
  tells. If that fails too, the model is down: the outage is waited out (workers/outages.py), then the
  same images go again. If it works, the images are at fault: each half is tried apart, until an image
  failing alone gets its RecordFault. Checking at every failure, not only once an image is alone, tells
  an outage after one failing call instead of a whole bisection's.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from cased_core.method.classifier import Classifier, Prediction
from cased_core.options import JPEG_DECODERS
from cased_core.method.preprocess import TensorPreprocess, decode_jpegs
from topics import events as ev
from workers.batch import Decoded
from workers.batch_limit import BatchLimit
from workers.costs import StageCosts
from workers.decode import EncodedJpeg, undecodable
from workers.failures import MEMORY, MODEL, DeviceLost, RecordFault, SystemFault, describe, model_fault
from workers.outages import Outages
from workers.telemetry import BatchTrace, NullTrace

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
class ModelInput:
    """What the model takes, and so what the decode threads make of an image.

    tensor_preprocess: the model's transform as tensor operations (None for layouts it does not cover:
        then each image goes through `preprocess`, the model's own transform, in its decode thread).
    size: the side the decode must cover (JPEGs are decoded at the smallest DCT scale that does).
    batched_jpeg: JPEGs decoded a batch at a time by torchvision on the model's device (nvJPEG on a GPU)
        instead of one by one by PIL in the decode threads (faster on a CPU).
    """
    tensor_preprocess: TensorPreprocess | None
    size: int | None
    batched_jpeg: bool
    preprocess: Callable

    @classmethod
    def of(cls, model, jpeg_decoder: str = "auto") -> "ModelInput":
        """Raises:
            ValueError: an unknown `jpeg_decoder` (one of cased_core.options.JPEG_DECODERS)."""
        if jpeg_decoder not in JPEG_DECODERS:
            raise ValueError(f"unknown JPEG decoder {jpeg_decoder!r}: choose one of {', '.join(JPEG_DECODERS)}")
        tensors = TensorPreprocess.of(model.preprocess)
        batched = tensors is not None and (jpeg_decoder == "torchvision" or
                                           (jpeg_decoder == "auto" and model.device.type == "cuda"))
        return cls(tensors, tensors.size if tensors else None, batched, model.preprocess)


class Inference:
    """Args:
        classifier: the model and database.
        model_input: see ModelInput.
        batch_size: images per model call at most (halved on out of memory: `batch_limit`).
        outages: what is down now; a model down for everyone waits there.
        costs: CPU time per stage.
        torch_threads: torch's intra-op threads (None: chosen by `warm_up`).
    """

    def __init__(self, classifier: Classifier, model_input: ModelInput, batch_size: int, outages: Outages,
                 costs: StageCosts, torch_threads: int | None = None):
        self.classifier, self.model_input, self.outages, self.costs = classifier, model_input, outages, costs
        self.batch_limit = BatchLimit(batch_size)
        self.torch_threads = torch_threads
        self.encoder_ms: float | None = None  # CPU ms per image of the encoder on one thread (`warm_up`)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")  # torch never on the event loop
        self._known_good: torch.Tensor | None = None  # one warm-up frame as the model's input

    def warm_up(self) -> None:
        """Before the first event, in the inference thread: classify a full batch of blank frames (first
        calls allocate and pick kernels; a batch that runs out of memory is halved until one fits, so a
        batch size too large for the device starts smaller instead of failing), and set torch's
        intra-op threads there (OpenMP keeps the count per calling thread): unless given,
        `intra_op_threads` for the encoder's measured cost."""
        self._thread.submit(self._warm_up).result()

    def serving(self) -> dict:
        model = self.classifier.model
        return {"device": str(model.device), "search": self.classifier.database.searcher.name,
                "jpeg_decoder": f"torchvision on {model.device}" if self.model_input.batched_jpeg else "pil",
                "encoder_ms_per_image": None if self.encoder_ms is None else round(self.encoder_ms, 3)}

    async def classify(self, items: Sequence[Decoded], trace: BatchTrace | NullTrace) -> list:
        """Predictions for `items`, in order, in model calls of at most the batch limit; an image that is
        at fault gets its RecordFault in its place.

        Raises:
            DeviceLost: the device failed for good.
            Abandoned: told to stop waiting for a model that is down.
        """
        out: list = []
        while len(out) < len(items):
            out += await self._isolating(items[len(out):len(out) + self.batch_limit.size], trace)
        return out

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    # -- failures --------------------------------------------------------------------------------------

    async def _isolating(self, items: Sequence[Decoded], trace: BatchTrace | NullTrace) -> list:
        """Predictions for `items` from one model call; when it fails, whose fault it is decides (see the
        module's doc)."""
        if not items:
            return []
        try:
            predictions = await self._in_thread(self._classify, items, trace)
        except Exception as err:
            fault = model_fault(err)
            if isinstance(fault, DeviceLost):
                raise fault from err
            if isinstance(fault, SystemFault) and fault.dependency == MEMORY and len(items) > 1:
                size = self.batch_limit.shrink(len(items))
                log.warning("a model call of %d images ran out of memory (%s): %d images per call from now on",
                            len(items), fault.detail, size)
                return await self.classify(items, trace)
            try:
                await self._in_thread(self._check_model)
            except SystemFault as down:
                if isinstance(down, DeviceLost):
                    raise
                await self.outages.ride_out(lambda: self._in_thread(self._check_model), failed=down)
                return await self._isolating(items, trace)
            if len(items) == 1:
                return [fault if isinstance(fault, RecordFault) else RecordFault(ev.INTERNAL_ERROR, fault.detail)]
            log.warning("a batch of %d images failed in the model (%s) while a known-good image passes; "
                        "retrying its halves apart", len(items), describe(err))
            half = len(items) // 2
            return await self._isolating(items[:half], trace) + await self._isolating(items[half:], trace)
        self.batch_limit.fitted(len(items))
        return predictions

    async def _in_thread(self, call: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

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

    # -- in the inference thread -----------------------------------------------------------------------

    def _classify(self, items: Sequence[Decoded], trace: BatchTrace | NullTrace) -> list[Prediction | RecordFault]:
        """Predictions for `items`, in order; a JPEG the batched decoder cannot decode gets its
        DecodeError in its place. Search and scoring are classify_embeddings's two steps, timed apart."""
        model = self.classifier.model
        pixels = self._decode_jpegs(items, trace)
        kept = [k for k, p in enumerate(pixels) if not isinstance(p, RecordFault)]
        members = [items[k].index for k in kept]
        out: list[Prediction | RecordFault] = list(pixels)
        if not kept:
            return out
        with self.costs.measure("preprocess"), trace.batch_stage("preprocess", members):
            tensors = self.model_input.tensor_preprocess
            batch = tensors([pixels[k] for k in kept], model.device, model.dtype) if tensors is not None \
                else torch.stack([pixels[k] for k in kept])
        with self.costs.measure("encode"), trace.batch_stage("encode", members):
            embeddings = model.encode_pixels(batch)
        with self.costs.measure("search"), trace.batch_stage("search", members):
            hits = self.classifier.search(embeddings)
        with self.costs.measure("score"), trace.batch_stage("score", members):
            predictions = self.classifier.score(embeddings, hits, [items[k].extras for k in kept])
        for k, prediction, embedding in zip(kept, predictions, embeddings):
            out[k] = replace(prediction, embedding=embedding)
        return out

    def _decode_jpegs(self, items: Sequence[Decoded], trace: BatchTrace | NullTrace) -> list:
        """Each item's pixels, the JPEGs left encoded decoded together on the model's device."""
        pixels: list = [item.pixels for item in items]
        jpegs = [k for k, p in enumerate(pixels) if isinstance(p, EncodedJpeg)]
        if jpegs:
            with self.costs.measure("decode"), trace.batch_stage("decode", [items[k].index for k in jpegs]):
                decoded = decode_jpegs([pixels[k].data for k in jpegs], [pixels[k].orientation for k in jpegs],
                                       self.classifier.model.device)
            for k, image in zip(jpegs, decoded):
                pixels[k] = image if isinstance(image, torch.Tensor) else undecodable(image)
        return pixels

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
        from PIL import Image

        frame = Image.new("RGB", (320, 240), (128, 128, 128))
        target, model = self.model_input, self.classifier.model
        if target.tensor_preprocess is None:
            return torch.stack([target.preprocess(frame)] * batch_size)
        if target.batched_jpeg:
            encoded = io.BytesIO()
            frame.save(encoded, "JPEG")
            images = decode_jpegs([encoded.getvalue()] * batch_size, [1] * batch_size, model.device)
        else:
            images = [torch.from_numpy(np.array(frame)).permute(2, 0, 1)] * batch_size
        return target.tensor_preprocess(images, model.device, model.dtype)
