"""How steady and how right a stream's labels are, frame by frame, against ground truth.

A stream is a sequence of frames in event order, each with its time, its true concept (None for a
frame with nothing to see: a gap, a dead frame) and a label (None when the frame got no label: a dead
letter). The same measures apply to the raw labels (one image at a time) and to the consistent ones
(the stream's history applied):

- switches: frames whose label differs from the last label before them (frames without a label are
  skipped, so a gap is not a switch); per 100 labelled frames;
- true changes: frames whose concept differs from the last concept before them;
- excess switches: switches beyond the true changes, as a fraction of the true changes;
- accuracy: the fraction of frames with a concept whose label names it (`is_right` decides: the
  concept's name or one of its synonyms);
- lag after a change: frames (and seconds) from the change to the first frame labelled right for the
  new concept; a segment that never gets it counts its whole length (censored: the lag is at least
  that). Given the raw labels (the image alone) as a reference, only the changes into a segment that
  they mostly name right count: the lag is then what the history adds, and a scene the model itself
  does not recognise (no history can name it) is counted apart, as unrecognised;
- names per concept: distinct right labels given to frames of one concept, averaged over concepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

IsRight = Callable[[str, str], bool]  # (label, concept) -> the label names the concept


@dataclass(frozen=True)
class Frame:
    t: float  # seconds
    concept: str | None  # the truth; None: nothing to see (a gap)
    label: str | None  # None: no label (the frame was dead-lettered)


@dataclass(frozen=True)
class Change:
    index: int  # the first frame of the new concept
    concept: str
    lag_frames: int
    lag_s: float
    followed: bool  # False: the segment ended before any frame was labelled right (lag censored)


def switches(labels: Sequence[str | None]) -> int:
    """Label changes, frames without a label skipped."""
    last, count = None, 0
    for label in labels:
        if label is None:
            continue
        count += last is not None and label != last
        last = label
    return count


def changes(frames: Sequence[Frame], is_right: IsRight,
            reference: Sequence[str | None] | None = None) -> list[Change]:
    """Every true change (frames without a concept skipped; the first concept is no change), with how
    long the labels took to follow it; with `reference` (the raw label of each frame), only the changes
    into a segment whose labelled frames it mostly names right.

    Examples:
        >>> same = lambda label, concept: label == concept
        >>> [c.lag_frames for c in changes([Frame(0, "a", "a"), Frame(1, "b", "a"), Frame(2, "b", "b")], same)]
        [1]
    """
    starts, last = [], None
    for i, frame in enumerate(frames):
        if frame.concept is None:
            continue
        if last is not None and frame.concept != last:
            starts.append(i)
        last = frame.concept
    out = []
    for start in starts:
        concept = frames[start].concept
        end = next((i for i in range(start + 1, len(frames))
                    if frames[i].concept is not None and frames[i].concept != concept), len(frames))
        if reference is not None:
            named = [is_right(reference[i], concept) for i in range(start, end)
                     if frames[i].concept == concept and reference[i] is not None]
            if 2 * sum(named) <= len(named):
                continue
        right = next((i for i in range(start, end) if frames[i].concept == concept and frames[i].label is not None
                      and is_right(frames[i].label, concept)), None)
        if right is not None:
            out.append(Change(start, concept, right - start, frames[right].t - frames[start].t, True))
        else:  # censored: at least the whole segment
            out.append(Change(start, concept, end - start, frames[end - 1].t - frames[start].t, False))
    return out


def stream_figures(frames: Sequence[Frame], is_right: IsRight, reference: Sequence[str | None] | None = None) -> dict:
    """The measures above for one stream (raw counts, so that streams can be pooled by `pooled`); lags
    after the changes `reference` recognises (see `changes`), every change without it."""
    seen = [f for f in frames if f.concept is not None]
    labelled = [f for f in frames if f.label is not None]
    names: dict[str, set[str]] = {}
    for f in seen:
        if f.label is not None and is_right(f.label, f.concept):
            names.setdefault(f.concept, set()).add(f.label)
    found = changes(frames, is_right, reference)
    return {
        "frames": len(frames), "labelled": len(labelled), "scored": len(seen),
        "right": sum(f.label is not None and is_right(f.label, f.concept) for f in seen),
        "switches": switches([f.label for f in frames]),
        "true_changes": switches([f.concept for f in frames]),
        "lags_frames": [c.lag_frames for c in found], "lags_s": [c.lag_s for c in found],
        "followed": sum(c.followed for c in found),
        "unrecognised": switches([f.concept for f in frames]) - len(found),
        "names_per_concept": [len(v) for v in names.values()],
    }


def pooled(figures: Sequence[dict]) -> dict:
    """Streams' `stream_figures` pooled into the reported measures."""
    total = {key: sum(f[key] for f in figures) for key in
             ("frames", "labelled", "scored", "right", "switches", "true_changes", "followed", "unrecognised")}
    lags = [lag for f in figures for lag in f["lags_frames"]]
    lag_s = [lag for f in figures for lag in f["lags_s"]]
    names = [n for f in figures for n in f["names_per_concept"]]

    def percentile(values: list, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if values else None

    return {
        "streams": len(figures), "frames": total["frames"],
        "switches_per_100": round(100 * total["switches"] / max(total["labelled"], 1), 2),
        "true_changes_per_100": round(100 * total["true_changes"] / max(total["frames"], 1), 2),
        "excess_switches": round((total["switches"] - total["true_changes"]) / total["true_changes"], 3)
        if total["true_changes"] else None,
        "accuracy": round(total["right"] / total["scored"], 4) if total["scored"] else None,
        "lag_frames": {"median": percentile(lags, 50), "p90": percentile(lags, 90)},
        "lag_s": {"median": percentile(lag_s, 50), "p90": percentile(lag_s, 90)},
        "changes_followed": f"{total['followed']}/{len(lags)}",
        "changes_unrecognised": total["unrecognised"],
        "names_per_concept": round(float(np.mean(names)), 3) if names else None,
    }
