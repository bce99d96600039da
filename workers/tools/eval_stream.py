"""`cased eval stream`: how steady and how right the raw and the consistent labels are on simulated
streams with known truth (cased_core.streams), through the worker's own batch pipeline in process.

The streams' events are interleaved into batches as a worker receives them (each stream's in order,
many streams per batch), with their event `ts` and the history policy each stream asks for; an
unreadable frame is dead-lettered and has no label. Every label event carries both labels: the raw one
(the image alone) and the consistent one (the stream's history applied), so both are scored on the
same run. A label is right when it names the frame's concept or one of its synonyms. A third,
`hindsight`, is the raw labels' majority over each true segment: what a history that knew the future
could reach, the ceiling of what consistency can win here.
"""
from __future__ import annotations

import asyncio
import io
import itertools
from typing import Sequence

from cased_core.stream_metrics import Frame, pooled, stream_figures
from cased_core.streams import SCENARIOS, Stream, generate, names_of
from topics import events as ev

HELD_OUT_SEED = 20261123  # streams no setting was tuned on


def _is_right(label: str, concept: str) -> bool:
    return label in names_of(concept)


def _events(stream: Stream) -> list[ev.ImageEvent]:
    out = []
    for i, frame in enumerate(stream.frames):
        data = b"this frame's bytes are not an image"
        if frame.image is not None:
            buffer = io.BytesIO()
            frame.image.save(buffer, "PNG")
            data = buffer.getvalue()
        out.append(ev.ImageEvent(event_id=f"{stream.name}-{i:05d}", stream_id=stream.name, image=data,
                                 ts=frame.t, attrs={"history": stream.policy}))
    return out


def _interleaved(streams: Sequence[Stream]) -> list[ev.ImageEvent]:
    per_stream = [_events(s) for s in streams]
    return [e for group in itertools.zip_longest(*per_stream) for e in group if e is not None]


def hindsight(frames: Sequence[Frame], same_concept) -> list[Frame]:
    """A reference no live history can reach: knowing where each true segment (a run of one concept,
    frames without a concept skipped) begins and ends, label all its frames with its most common raw
    label, synonyms counted together (`same_concept`)."""
    out = list(frames)
    seen = [i for i, f in enumerate(frames) if f.concept is not None]
    while seen:
        segment = [i for i in itertools.takewhile(lambda i: frames[i].concept == frames[seen[0]].concept, seen)]
        seen = seen[len(segment):]
        votes: dict[str, int] = {}
        for label in (frames[i].label for i in segment if frames[i].label is not None):
            name = next((k for k in votes if k == label or same_concept(k, label)), label)
            votes[name] = votes.get(name, 0) + 1
        for i in segment:
            if votes and frames[i].label is not None:
                out[i] = Frame(frames[i].t, frames[i].concept, max(votes, key=votes.get))
    return out


def label_streams(pipeline, streams: Sequence[Stream], batch_size: int = 16) -> dict[str, list[tuple]]:
    """Each stream's (raw label, consistent label) per frame, None for a dead-lettered frame."""
    from workers.histories import MemoryStore

    store = MemoryStore()
    events = _interleaved(streams)
    labels: dict[str, list[tuple]] = {s.name: [] for s in streams}

    async def run() -> None:
        for start in range(0, len(events), batch_size):
            batch = events[start:start + batch_size]
            outputs = await pipeline.process([ev.encode_image_event(e) for e in batch], store)
            for event, output in zip(batch, outputs):
                if output.topic == ev.LABELS_OUT:
                    label = ev.decode_label_event(output.value)
                    labels[event.stream_id].append((label.raw_label, label.label))
                else:
                    labels[event.stream_id].append((None, None))

    asyncio.run(run())
    return labels


def eval_stream(pipeline, streams_per_scenario: int = 6, seed: int = HELD_OUT_SEED,
                scenarios: Sequence[str] = SCENARIOS, batch_size: int = 16) -> dict:
    """Figures per scenario and overall, for the raw and the consistent labels (see
    cased_core.stream_metrics); `pipeline` is a workers.pipeline.Pipeline, closed afterwards.

    Raises:
        ValueError: an unknown scenario, or no streams to run.
    """
    try:
        if streams_per_scenario < 1 or not scenarios:
            raise ValueError("eval stream needs at least 1 stream per scenario (--streams) and 1 scenario")
        streams = [s for scenario in scenarios for s in generate(scenario, streams_per_scenario, seed)]
        labels = label_streams(pipeline, streams, batch_size)
    finally:
        asyncio.run(pipeline.close())
    figures: dict[str, dict[str, list]] = {}
    for stream in streams:
        raw = [Frame(f.t, f.concept, pair[0]) for f, pair in zip(stream.frames, labels[stream.name])]
        consistent = [Frame(f.t, f.concept, pair[1]) for f, pair in zip(stream.frames, labels[stream.name])]
        for kind, frames in (("raw", raw), ("consistent", consistent),
                             ("hindsight", hindsight(raw, pipeline.same_concept))):
            figures.setdefault(stream.scenario, {}).setdefault(kind, []).append(stream_figures(frames, _is_right))
    out = {"seed": seed, "streams_per_scenario": streams_per_scenario, "scenarios": {}}
    for scenario, kinds in figures.items():
        out["scenarios"][scenario] = {kind: pooled(parts) for kind, parts in kinds.items()}
    out["overall"] = {kind: pooled([p for kinds in figures.values() for p in kinds[kind]])
                      for kind in ("raw", "consistent", "hindsight")}
    return out
