"""`cased eval stream`: how steady and how right the raw and the consistent labels are on simulated
streams with known truth (cased_core.tinyworld.cameras), through the worker's own batch pipeline in process.

Two sets of scenarios, reported apart: `realistic` (fixed cameras holding scenes for tens to thousands
of frames) and `stress` (12-frame scenes, every disturbance frequent). Each camera stream runs once per
live policy compared (`steady`, `fast`), as a stream of its own that asks for that policy in its
`attrs`; upload streams run once, with the `upload` policy. The streams' events are interleaved into
batches as a worker receives them (each stream's in order, many streams per batch), with their event
`ts`; an unreadable frame is dead-lettered and has no label.

Every label event carries both labels: the raw one (the image alone) and the consistent one (the
stream's history applied). Rows: `raw` and `hindsight` (the raw labels' majority over each true
segment: what a history that knew the future could reach, the ceiling of what consistency can win
here), both from the first policy's run, then the consistent labels of each policy. A label is right
when it names the frame's concept or one of its synonyms. Lags are measured after the changes the raw
labels recognise (cased_core.evaluation.stream_metrics).

The pipeline's change gate (cased_core.method.gate) answers unchanged frames of a live stream from the last
classified one, as a worker does; each policy's row says which fraction of its frames the gate answered
(`gated`). With `compare_gate`, each live stream also runs with the gate off (`attrs.gate: off`), as a
stream of its own: rows `<policy> ungated`.
"""
from __future__ import annotations

import asyncio
import io
import itertools
import time
from typing import Iterator, Sequence, TextIO

from cased_core.method.history import FAST, STEADY, UPLOAD
from cased_core.evaluation.stream_metrics import Frame, pooled, stream_figures
from cased_core.tinyworld.cameras import SCENARIOS, SETS, Stream, generate, names_of
from topics import events as ev

HELD_OUT_SEED = 20261123  # streams no setting was tuned on
LIVE_POLICIES = (STEADY, FAST)
COLD_STARTS = 5  # cold_start streams for each stream of another scenario: each is a few dozen frames
PROGRESS_EVERY_S = 5.0
Run = tuple[Stream, str, bool]  # a stream, the history policy it runs under, whether the gate may answer it
UNGATED = " ungated"  # the suffix of a policy's row with the gate off


def _is_right(label: str, concept: str) -> bool:
    return label in names_of(concept)


def _stream_id(run: Run) -> str:
    stream, policy, gated = run
    return (stream.name if stream.policy is not None else f"{stream.name}/{policy}") + ("" if gated else "/ungated")


def _events(run: Run) -> Iterator[ev.ImageEvent]:
    """A stream's events, made when read (a realistic stream renders each frame on demand)."""
    stream, policy, gated = run
    attrs = {ev.HISTORY_ATTR: policy, **({} if gated else {ev.GATE_ATTR: ev.GATE_OFF})}
    for i, frame in enumerate(stream.frames):
        data = b"this frame's bytes are not an image"
        if frame.image is not None:
            buffer = io.BytesIO()
            frame.image.save(buffer, "PNG")
            data = buffer.getvalue()
        yield ev.ImageEvent(event_id=f"{_stream_id(run)}-{i:05d}", stream_id=_stream_id(run), image=data, ts=frame.t,
                            attrs=attrs)


def _interleaved(runs: Sequence[Run]) -> Iterator[ev.ImageEvent]:
    return (e for group in itertools.zip_longest(*(_events(r) for r in runs)) for e in group if e is not None)


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


def label_streams(pipeline, runs: Sequence[Run], batch_size: int = 16,
                  progress: TextIO | None = None) -> dict[str, list[tuple]]:
    """Each run's (raw label, consistent label, reused) per frame, by stream id: None for a dead-lettered
    frame's labels, `reused` true where the change gate answered the frame; with `progress`, a line
    there every few seconds."""
    from workers.histories import MemoryStore

    store = MemoryStore()
    labels: dict[str, list[tuple]] = {_stream_id(r): [] for r in runs}
    total = sum(len(stream.frames) for stream, *_ in runs)
    events = _interleaved(runs)
    started = said = time.monotonic()

    async def run() -> None:
        nonlocal said
        done = 0
        while batch := list(itertools.islice(events, batch_size)):
            outputs = await pipeline.process([ev.encode_image_event(e) for e in batch], store)
            for event, output in zip(batch, outputs):
                if output.topic == ev.LABELS_OUT:
                    label = ev.decode_label_event(output.value)
                    labels[event.stream_id].append((label.raw_label, label.label, label.reused is not None))
                else:
                    labels[event.stream_id].append((None, None, False))
            done += len(batch)
            if progress is not None and (time.monotonic() - said >= PROGRESS_EVERY_S or done == total):
                said = time.monotonic()
                print(f"eval stream: {done:,} of {total:,} frames labelled ({100 * done / total:.0f}%), "
                      f"{said - started:.0f} s", file=progress, flush=True)

    asyncio.run(run())
    return labels


def streams_of(scenario: str, streams_per_scenario: int, seed: int, scale: float = 1.0) -> list[Stream]:
    """The streams `cased eval stream` runs for a scenario (cold starts: COLD_STARTS times as many)."""
    count = streams_per_scenario * (COLD_STARTS if scenario == "cold_start" else 1)
    return generate(scenario, count, seed, scale=scale)


def eval_stream(pipeline, streams_per_scenario: int = 6, seed: int = HELD_OUT_SEED,
                scenarios: Sequence[str] = SCENARIOS, policies: Sequence[str] = LIVE_POLICIES,
                batch_size: int = 16, scale: float = 1.0, progress: TextIO | None = None,
                compare_gate: bool = False) -> dict:
    """Figures per set and scenario, and overall per set, for the raw, hindsight and each policy's
    consistent labels (see cased_core.evaluation.stream_metrics); `pipeline` is a workers.pipeline.Pipeline,
    closed afterwards. `scale` multiplies the realistic scenes' lengths (tests run short ones);
    `compare_gate` adds each policy's labels with the change gate off.

    Raises:
        ValueError: an unknown scenario or policy, or no streams to run.
    """
    try:
        if streams_per_scenario < 1 or not scenarios:
            raise ValueError("eval stream needs at least 1 stream per scenario (--streams) and 1 scenario")
        if not policies or any(p not in LIVE_POLICIES for p in policies):
            raise ValueError(f"eval stream compares the live policies {' and '.join(LIVE_POLICIES)} (--policies)")
        streams = [s for scenario in scenarios for s in streams_of(scenario, streams_per_scenario, seed, scale)]
        variants = {p: (p, True) for p in policies}
        if compare_gate:
            variants.update({p + UNGATED: (p, False) for p in policies})
        runs = [(s, UPLOAD, True) if s.policy == UPLOAD else (s, *variant) for s in streams for variant in
                ([(UPLOAD, True)] if s.policy == UPLOAD else variants.values())]
        labels = label_streams(pipeline, runs, batch_size, progress)
    finally:
        asyncio.run(pipeline.close())
    rows = ("raw", "hindsight", *variants)
    figures: dict[str, dict[str, dict[str, list]]] = {}
    gated: dict[str, dict[str, dict[str, list[int]]]] = {}  # set -> scenario -> row -> [gated, labelled]
    agree = {name: [0, 0] for name in SETS}  # raw labels equal in every policy's run, of frames labelled
    for stream in streams:
        runs_of = {row: labels[_stream_id((stream, UPLOAD, True) if stream.policy == UPLOAD else (stream, *variant))]
                   for row, variant in variants.items()}
        truth = stream.truth()
        raw = [Frame(t, concept, pair[0]) for (t, concept), pair in zip(truth, runs_of[policies[0]])]
        reference = [f.label for f in raw]
        parts = {"raw": raw, "hindsight": hindsight(raw, pipeline.same_concept)}
        for row, triples in runs_of.items():
            parts[row] = [Frame(t, concept, triple[1]) for (t, concept), triple in zip(truth, triples)]
            share = gated.setdefault(_set_of(stream.scenario), {}).setdefault(stream.scenario, {}).setdefault(row, [0, 0])
            share[0] += sum(t[2] for t in triples)
            share[1] += sum(t[1] is not None for t in triples)
        per_row = figures.setdefault(_set_of(stream.scenario), {}).setdefault(stream.scenario, {})
        for row in rows:
            per_row.setdefault(row, []).append(stream_figures(parts[row], _is_right, reference))
        counts = agree[_set_of(stream.scenario)]
        for triples in zip(*(runs_of[p] for p in policies)):
            if triples[0][0] is not None:
                counts[0] += all(t[0] == triples[0][0] for t in triples)
                counts[1] += 1
    out = {"seed": seed, "streams_per_scenario": streams_per_scenario, "cold_starts": COLD_STARTS,
           "policies": list(policies), "compare_gate": compare_gate, "sets": {}}
    for name, by_scenario in figures.items():
        def share(counts: list[int]) -> float:
            return round(counts[0] / max(counts[1], 1), 4)

        def with_gated(rows_of: dict, shares: dict) -> dict:
            return {row: {**f, **({"gated": share(shares[row])} if row in shares else {})} for row, f in rows_of.items()}

        totals = {row: [sum(gated[name][s][row][i] for s in by_scenario) for i in (0, 1)] for row in variants}
        out["sets"][name] = {
            "scenarios": {scenario: with_gated({row: pooled(parts) for row, parts in by_row.items()},
                                               gated[name][scenario])
                          for scenario, by_row in by_scenario.items()},
            "overall": with_gated({row: pooled([p for by_row in by_scenario.values() for p in by_row[row]])
                                   for row in rows}, totals),
            "raw_same_in_every_run": round(agree[name][0] / max(agree[name][1], 1), 4),
        }
    return out


def _set_of(scenario: str) -> str:
    return next(name for name, members in SETS.items() if scenario in members)


def table(figures: dict) -> str:
    """`eval_stream`'s figures as the text table `cased eval stream` prints."""
    lines = [f"{'set':<10}{'scenario':<12}{'labels':<16}{'accuracy':>9}{'switches/100':>14}{'excess':>8}"
             f"{'lag median/p90':>16}{'lag s p90':>11}{'names/concept':>15}{'gated':>7}"]
    for name, per_set in figures["sets"].items():
        for scenario, rows in [*per_set["scenarios"].items(), ("overall", per_set["overall"])]:
            for row, f in rows.items():
                lag, lag_s = f["lag_frames"], f["lag_s"]["p90"]
                excess = "-" if f["excess_switches"] is None else f"{100 * f['excess_switches']:.0f}%"
                accuracy = "-" if f["accuracy"] is None else f"{100 * f['accuracy']:.1f}%"
                lines.append(f"{name:<10}{scenario:<12}{row:<16}{accuracy:>9}{f['switches_per_100']:>14.1f}"
                             f"{excess:>8}{str(lag['median']) + ' / ' + str(lag['p90']):>16}"
                             f"{'-' if lag_s is None else lag_s:>11}{f['names_per_concept'] or '-':>15}"
                             f"{'-' if 'gated' not in f else format(f['gated'], '.0%'):>7}")
    return "\n".join(lines)
