"""A batch of images.in records on its way through the worker (workers/pipeline.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from topics import events as ev
from workers.decode import EncodedJpeg
from workers.outcomes import Outcomes
from workers.telemetry import BatchTrace, NullTrace


@dataclass
class Decoded:
    """An event whose image is decoded, waiting for the model."""
    index: int  # its record's place in the batch
    event: ev.ImageEvent
    # uint8 (3, H, W) for the tensor preprocess, or a JPEG left for the batched decoder; without a tensor
    # preprocess, the model's input (3, S, S)
    pixels: torch.Tensor | EncodedJpeg
    thumb: bytes | None = None  # the change gate's thumbnail (cased_core.method.gate); None: never gated
    extras: list[str] = field(default_factory=list)  # names the stream already used: extra candidates


@dataclass
class Batch:
    """What `Preparer.prepare` makes of a batch's values and `Pipeline.finish` answers."""
    values: Sequence[bytes | None]
    partitions: Sequence[int | None]  # each value's images.in partition (its history's changelog partition)
    trace: BatchTrace | NullTrace
    outcomes: Outcomes  # one record per value, filled by whichever stage decides it
    events: dict[int, ev.ImageEvent] = field(default_factory=dict)  # index -> event, each (stream, id) once
    ready: list[Decoded] = field(default_factory=list)  # decoded, for the model
